"""Load test of ``sppnet serve``: requests/s and median/p99 latency at 1, 4 and 16 clients.

Starts the server in a subprocess on 127.0.0.1 (an untrained study-size ``spp`` model, or
``--run RUN``), then for each concurrency level keeps that many clients (threads, each with one
keep-alive connection) posting 240x320 JPEGs for ``--seconds``. The baseline, measured in the same
run, is ``Predictor.predict`` on the same bytes in this process with no HTTP: the ratio shows
what the service adds.

Then the server's memory under mixed traffic: 1,000 requests (JPEGs and PNGs of many sizes, files
that are not images, truncated ones, decompression bombs, uploads over the limit), the server's
RSS read from /proc after the first 100 and after all 1,000, and their ratio (target: at most 1.5).

    python benchmarks/serve.py [--run runs/spp] [--seconds 5] [--clients 1,4,16] [--mixed 1000]
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image


def untrained_run(folder: str) -> None:
    """Writes a run folder with an untrained spp model (speed does not depend on the weights)."""
    import torch

    from sppnet.models import build_model
    from sppnet.runs import RunFolder

    torch.manual_seed(0)
    model = build_model("spp")
    run = RunFolder(folder)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_json("config.json", {"model": model.config, "class_names": ["daisy", "dandelion", "roses", "sunflowers", "tulips"],
                                   "input_size": 180, "train": {}, "data": {}})
    run.save_weights("best", model.state_dict())


def jpeg(width: int = 320, height: int = 240) -> bytes:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(smooth).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(conn: http.client.HTTPConnection, body: bytes) -> float:
    start = time.perf_counter()
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return time.perf_counter() - start


def load(port: int, body: bytes, clients: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        post(conn, body)  # connect and warm up
        mine = []
        while time.perf_counter() < stop:
            mine.append(post(conn, body))
        conn.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS (not Linux?)")


def mixed_bodies() -> list[bytes]:
    """Uploads of every kind a public server meets, good and bad."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    bodies = [jpeg(w, h) for w, h in ((320, 240), (180, 180), (640, 480), (240, 320), (1024, 768), (100, 900))]
    png = io.BytesIO()
    Image.new("RGBA", (300, 200), (10, 20, 30, 128)).save(png, format="PNG")
    bodies += [png.getvalue(), b"not an image", jpeg()[:500], bomb, b"x" * (11 * 1024 * 1024)]
    return bodies


def mixed_memory(port: int, pid: int, total: int) -> tuple[int, int]:
    """Sends ``total`` mixed requests on one connection at a time; the server's RSS after 100 and at the end."""
    bodies = mixed_bodies()
    early = 0
    for k in range(total):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/predict", body=bodies[k % len(bodies)], headers={"Content-Type": "image/jpeg"})
            conn.getresponse().read()
        except OSError:  # the server may close an oversized upload before reading it
            pass
        finally:
            conn.close()
        if k + 1 == 100:
            early = rss(pid)
    return early, rss(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder to serve (default: an untrained study-size spp model)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each level (default 5)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--mixed", type=int, default=1000, help="mixed requests for the memory check (default 1000; 0: skip)")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    import tempfile

    from sppnet.predict import Predictor

    run = args.run
    if run is None:
        run = tempfile.mkdtemp() + "/run"
        untrained_run(run)
    body = jpeg()
    predictor = Predictor.from_run(run)
    for _ in range(5):
        predictor.predict(body)
    direct = []
    for _ in range(50):
        start = time.perf_counter()
        predictor.predict(body)
        direct.append(time.perf_counter() - start)
    baseline = statistics.median(direct)
    del predictor

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sppnet", "serve", run, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        print(f"240x320 JPEG ({len(body):,} bytes); baseline Predictor.predict in process: {1000 * baseline:.1f} ms median")
        print(f"{'clients':>7}  {'req/s':>7}  {'median ms':>9}  {'p99 ms':>7}  {'median / baseline':>17}")
        for clients in levels:
            rate, latencies = load(port, body, clients, args.seconds)
            latencies.sort()
            median = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            print(f"{clients:>7}  {rate:>7.1f}  {1000 * median:>9.1f}  {1000 * p99:>7.1f}  {median / baseline:>17.2f}")
        if args.mixed:
            early, late = mixed_memory(port, server.pid, args.mixed)
            print(f"server RSS after 100 mixed requests: {early / 1e6:.0f} MB; after {args.mixed}: {late / 1e6:.0f} MB; "
                  f"ratio {late / early:.2f} (target <= 1.5)")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()

"""Peak memory of explaining a huge photo, from the command line and through the HTTP service.

Measures, against a 1024 x 1024 photo as the baseline of the same run:
  * the peak resident memory (VmHWM) of ``sppnet explain RUN photo.png`` on an 8000 x 8000 PNG
    (a smooth gradient: a small file that decodes to 192 MB of pixels);
  * the peak resident memory of ``sppnet serve RUN`` while 3 clients post that PNG to
    ``/explain`` at once, and how long the three answers took.

    python benchmarks/explain_memory.py [--side 8000] [--clients 3]

A run folder is trained here (the study's network, 1 epoch on a few generated images); the
model's size does not matter for what is measured: the photo's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_png(path: Path, side: int) -> Path:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.broadcast_to(ramp, (side, side)), np.broadcast_to(ramp[:, None], (side, side)),
                       np.full((side, side), 128, np.float32)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, optimize=False)
    return path


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a command run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return peak / 1024, time.perf_counter() - start


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])  # kB
    except OSError:
        pass
    return 0


def serve_peak(run: Path, photo: Path, clients: int) -> tuple[float, float]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sppnet", "serve", str(run), "--port", str(port),
                             "--max-upload-mb", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        data = photo.read_bytes()
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda _: httpx.post(url + "/explain", content=data, timeout=300,
                                                         headers={"content-type": "image/png"}), range(clients)))
        seconds = time.perf_counter() - start
        assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers]
        return _hwm(proc.pid) / 1024, seconds
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "ds", {"a": 6, "b": 6})
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "sppnet", "train", str(data), "--out", str(run), "--epochs", "1"],
                       check=True, capture_output=True)
        small, big = gradient_png(tmp / "small.png", 1024), gradient_png(tmp / f"big{args.side}.png", args.side)
        print(f"photos: {small.stat().st_size / 1e3:.0f} KB (1024 px), {big.stat().st_size / 1e3:.0f} KB "
              f"({args.side} px); CPU {os.cpu_count()} cores")
        explain = [sys.executable, "-m", "sppnet", "explain", str(run), "--out", str(tmp / "ex")]
        base, base_s = peak_of([*explain, str(small)])
        peak, peak_s = peak_of([*explain, str(big)])
        print(f"sppnet explain: peak RSS {base:.0f} MB at 1024 px, {peak:.0f} MB at {args.side} px "
              f"(ratio {peak / base:.2f}); {base_s:.1f} s and {peak_s:.1f} s")
        served, seconds = serve_peak(run, big, args.clients)
        print(f"sppnet serve: peak RSS {served:.0f} MB with {args.clients} clients posting the {args.side} px "
              f"photo to /explain at once ({seconds:.1f} s for the three answers)")


if __name__ == "__main__":
    main()

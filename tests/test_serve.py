"""The HTTP service through a real client against a server on 127.0.0.1, and its page in Chromium."""

import base64
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from PIL import Image

from sppnet.cli import main
from sppnet.predict import Predictor
from sppnet.runs import RunFolder
from sppnet.serve import create_app

from conftest import make_dataset, small_calibration, write_image

MAX_UPLOAD_MB = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 8, "jade": 8, "sky": 8}, size=(48, 36), vary=True)
    out = tmp_path_factory.mktemp("runs") / "run"
    with small_calibration():  # the mechanics, on a few images
        assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--size", "32", "--batch-size", "8",
                     "--calibrate", "0.25"]) == 0
    return out


def wait_until_serving(port: int, proc: subprocess.Popen) -> str:
    """The server's URL once it answers /health (fails the test if it exits or takes 60 s)."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            if proc.poll() is not None:
                pytest.fail(f"sppnet serve exited: {proc.stdout.read()}")
            time.sleep(0.2)
    proc.kill()
    pytest.fail("sppnet serve did not answer /health within 60 s")


@pytest.fixture(scope="module")
def server(run):
    """``sppnet serve`` in a subprocess, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sppnet", "serve", str(run), "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = wait_until_serving(port, proc)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def jpeg_bytes(size=(64, 40), seed=0) -> bytes:
    """A JPEG of a deterministic pattern."""
    pattern = bytes((i * 7 + seed) % 256 for i in range(size[0] * size[1] * 3))
    buf = io.BytesIO()
    Image.frombytes("RGB", size, pattern).save(buf, format="JPEG")
    return buf.getvalue()


def png_bomb(width=20_000, height=20_000) -> bytes:
    """A small PNG whose header claims width x height pixels (400 M > the 64 M limit)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def check_prediction(answer: dict, width: int, height: int) -> None:
    assert set(answer) >= {"class", "confidence", "probabilities", "width", "height", "sentence"}
    assert list(answer["probabilities"]) == ["amber", "jade", "sky"]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["confidence"] == max(answer["probabilities"].values())
    assert answer["class"] == max(answer["probabilities"], key=answer["probabilities"].get)
    assert (answer["width"], answer["height"]) == (width, height)
    assert answer["sentence"] == (f"This image most likely belongs to {answer['class']} with "
                                  f"{100 * answer['confidence']:.2f} percent confidence.")


def test_health_and_model(server, run):
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    model = httpx.get(server + "/model").json()
    assert model["classes"] == ["amber", "jade", "sky"] and model["input_size"] == 32
    assert model["model"] == "spp" and model["sppnet_version"]
    assert model["max_upload_bytes"] == MAX_UPLOAD_MB * 1024 * 1024
    assert model["temperature"] == RunFolder(run).temperature("best") > 0  # served probabilities are calibrated


def test_predict_multipart_and_raw_bytes_agree(server, run):
    image = jpeg_bytes((64, 40))
    multipart = httpx.post(server + "/predict", files={"image": ("x.jpg", image, "image/jpeg")})
    raw = httpx.post(server + "/predict", content=image, headers={"content-type": "image/jpeg"})
    assert multipart.status_code == raw.status_code == 200
    check_prediction(multipart.json(), 51, 32)  # native aspect: shorter side at the training size 32
    assert raw.json() == multipart.json()
    local = Predictor.from_run(run).predict(image)
    assert multipart.json()["confidence"] == pytest.approx(local.confidence, abs=1e-6)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"just some text, no image", 400, "not an image"),
        (jpeg_bytes()[:300], 400, "cannot decode image"),
        (png_bomb(), 400, "decompression bomb"),
        (b"", 400, "empty upload"),
        (b"\xff" * (MAX_UPLOAD_MB * 1024 * 1024 + 1), 413, "larger than the limit"),
    ],
    ids=["not-an-image", "truncated", "bomb", "empty", "too-large"],
)
def test_bad_uploads_get_a_json_error_and_the_server_keeps_serving(server, body, status, message):
    for send in ({"content": body}, {"files": {"image": ("bad.jpg", body, "image/jpeg")}}):
        response = httpx.post(server + "/predict", **send)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert httpx.get(server + "/health").status_code == 200
    check_prediction(httpx.post(server + "/predict", content=jpeg_bytes((40, 64))).json(), 32, 51)


def test_multipart_without_the_image_field_is_400(server):
    response = httpx.post(server + "/predict", files={"photo": ("x.jpg", jpeg_bytes(), "image/jpeg")})
    assert response.status_code == 400 and "no file field 'image'" in response.json()["error"]


def test_concurrent_requests_all_answer(server):
    images = [jpeg_bytes((48 + 8 * k, 40), seed=k) for k in range(4)]
    with httpx.Client() as client:
        expected = [client.post(server + "/predict", content=im).json() for im in images]

    def post(k: int) -> dict:
        with httpx.Client() as client:
            response = client.post(server + "/predict", content=images[k % 4])
            assert response.status_code == 200
            return response.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(32)))
    for k, answer in enumerate(answers):
        assert answer["probabilities"] == pytest.approx(expected[k % 4]["probabilities"], abs=1e-6)


def test_requests_run_concurrently_on_one_shared_model(run):
    """Two predictions are in flight at once (a barrier both must reach), on one Predictor."""
    predictor = Predictor.from_run(run)
    barrier = threading.Barrier(2, timeout=20)
    calls = []
    original = predictor.predict

    def predict(data, name=None):
        calls.append(id(predictor))
        barrier.wait()  # raises BrokenBarrierError if requests were handled one at a time
        return original(data, name)

    predictor.predict = predict
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda _: httpx.post(f"http://127.0.0.1:{port}/predict", content=jpeg_bytes(),
                                                           timeout=30).status_code, range(2)))
        assert statuses == [200, 200] and len(calls) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_page_is_self_contained(server):
    page = httpx.get(server + "/").text
    assert "<title>sppnet</title>" in page and 'id="file"' in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give a run folder to serve"),
        (["RUN", "--port", "70000"], "--port must be an integer in 0..65535"),
        (["RUN", "--max-upload-mb", "0"], "--max-upload-mb must be a positive number"),
        (["RUN", "--onnx", "x.onnx"], "either a run folder or --onnx"),
        (["missing-run"], "missing-run"),
    ],
)
def test_bad_serve_options_get_one_line(args, message, run, capsys):
    args = [str(run) if a == "RUN" else a for a in args]
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_port_in_use_gets_one_line(run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--port {port}: cannot listen there" in err


def chromium_path() -> str:
    path = os.environ.get("SPPNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("the page test needs Chromium: apt-get install chromium (or set SPPNET_CHROMIUM); "
                    "deselect it with -m 'not browser'")
    return path


@pytest.mark.browser
def test_page_in_headless_chromium_shows_the_prediction(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = write_image(tmp_path / "photo.png", size=(60, 45), color=(40, 200, 60))
    answer = httpx.post(server + "/predict", content=photo.read_bytes()).json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            expect(page.locator("#about")).to_contain_text("3 classes (amber, jade, sky)")
            page.set_input_files("#file", str(photo))
            expect(page.locator("#sentence")).to_have_text(answer["sentence"], timeout=20_000)
            expect(page.locator("#preview")).to_be_visible()
            bars = page.locator("#bars .bar")
            expect(bars).to_have_count(3)
            assert bars.first.get_attribute("data-class") == answer["class"]
            # a bad file shows the server's error and the page stays usable
            bad = tmp_path / "notes.jpg"
            bad.write_bytes(b"not a photo")
            page.set_input_files("#file", str(bad))
            expect(page.locator("#error")).to_contain_text("not an image")
        finally:
            browser.close()


def test_explain_answers_the_map_as_json_or_png(server):
    photo = jpeg_bytes((90, 60))
    answer = httpx.post(server + "/explain", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=30).json()
    assert answer["explained"] == answer["class"] and answer["sentence"].startswith("This image most likely")
    assert set(answer["pyramid"]) == {"1", "2", "4"} and len(answer["pyramid"]["4"]) == 4
    heat = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert heat.mode == "RGBA" and heat.size == (90, 60)
    png = httpx.post(server + "/explain?format=png", content=photo, timeout=30)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    bad = httpx.post(server + "/explain", content=b"not an image", timeout=30)
    assert bad.status_code == 400 and "not an image" in bad.json()["error"]
    big = httpx.post(server + "/explain", content=b"x" * (MAX_UPLOAD_MB * 1024 * 1024 + 1), timeout=30)
    assert big.status_code == 413


@pytest.mark.browser
def test_page_shows_where_it_looked(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = write_image(tmp_path / "photo.png", size=(80, 50), color=(40, 200, 60))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.set_input_files("#file", str(photo))
            expect(page.locator("#sentence")).to_contain_text("percent confidence", timeout=20_000)
            expect(page.locator("#heat")).to_be_hidden()
            page.check("#explain")  # the switch explains the photo already shown
            expect(page.locator("#heat")).to_be_visible(timeout=20_000)
            expect(page.locator("#pyramid .grid")).to_have_count(3)
            expect(page.locator('#pyramid .grid[data-level="4"] span')).to_have_count(16)
            box, heat = page.locator("#preview").bounding_box(), page.locator("#heat").bounding_box()
            assert abs(box["width"] - heat["width"]) < 1 and abs(box["height"] - heat["height"]) < 1
            if os.environ.get("SPPNET_SCREENSHOT"):
                page.screenshot(path=os.environ["SPPNET_SCREENSHOT"], full_page=True)
            page.uncheck("#explain")
            expect(page.locator("#heat")).to_be_hidden()
        finally:
            browser.close()


def test_missing_serve_extra_gets_one_line(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert main(["serve", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'sppnet[serve]'" in err and "fastapi" in err


def test_slow_clients_are_closed_after_the_timeouts_and_do_not_block_others(run):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sppnet", "serve", str(run), "--port", str(port), "--header-timeout", "2",
         "--body-timeout", "2", "--max-connections", "80"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = wait_until_serving(port, proc)
        slow = []
        for k in range(50):  # half-sent headers, and half-sent bodies
            s = socket.create_connection(("127.0.0.1", port))
            if k % 2:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            else:
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        for _ in range(5):  # clients that go away mid-upload
            with socket.create_connection(("127.0.0.1", port)) as gone:
                gone.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"y" * 100)
        started = time.monotonic()
        response = httpx.post(url + "/predict", files={"image": ("a.jpg", jpeg_bytes(), "image/jpeg")}, timeout=5)
        assert response.status_code == 200 and "sentence" in response.json()
        assert time.monotonic() - started < 1.0  # answered while 50 slow clients hold connections
        for s in slow:
            s.settimeout(10)
            try:
                assert s.recv(1) == b""  # closed by the server after its timeout
            except ConnectionResetError:
                pass
            s.close()
        assert httpx.get(url + "/health", timeout=2).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert "Traceback" not in out


def test_busy_port_is_one_line_before_any_banner(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "sppnet", "serve", str(run), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Serving" not in result.stdout
    assert f"--port {port}: cannot listen there" in result.stderr and "Traceback" not in result.stderr

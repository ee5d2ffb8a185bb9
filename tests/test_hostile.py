"""A hostile-input corpus, run through the command line as a careless or hostile user would.

Every case is made at test time (nothing large is committed). Each must end with the right exit
status, one line per problem naming the file or option and what is wrong, no traceback, and the
run folder it was given exactly as it was (hashed before and after).
"""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sppnet.cli import main

from conftest import make_dataset, write_image

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Makers


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (a decompression bomb if large), tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def deep_folder(top: Path, levels: int) -> Path:
    """``levels`` nested folders under ``top`` (made relative to open folders: far beyond PATH_MAX)."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return top


def remove_deep(top: Path) -> None:
    """Removes what :func:`deep_folder` made, iteratively (shutil.rmtree recurses, and fails)."""
    fds = [os.open(top, os.O_RDONLY)]
    try:
        while True:
            try:
                fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
            except FileNotFoundError:
                break
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir("d", dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Evil:
    """Pickled into a state.pt: unpickling it would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny trained run, its ONNX export, a dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    data = make_dataset(base / "data", {"amber": 6, "jade": 6, "sky": 6}, size=(40, 30))
    run = base / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--size", "32", "--batch-size", "8",
                 "--widths", "4,8,8", "--hidden", "8"]) == 0
    onnx = base / "model.onnx"
    assert main(["export", str(run), "--onnx", str(onnx), "--no-check"]) == 0
    return {"base": base, "data": data, "run": run, "onnx": onnx}


def copy_run(world, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(world["run"], tmp_path / "run"))


def run_cli(args, capsys) -> tuple[int, list[str], str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, errors, captured.out


def expect_one_line(code, errors, status, *needles):
    assert code == status, (code, errors)
    lines = [line for line in errors if line.startswith("sppnet: error:")]
    assert len(lines) == 1, errors
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------------------------
# Images given to predict: one line each, the others still classified, exit status 1

IMAGE_CASES = {
    "truncated": (lambda d: put(d / "t.jpg", write_image(d / "good.jpg", (64, 48)).read_bytes()[:300]),
                  "cannot decode image"),
    "empty": (lambda d: put(d / "e.jpg", b""), "not an image"),
    "text named png": (lambda d: put(d / "x.png", "not a picture"), "not an image"),
    "decompression bomb": (lambda d: png_declaring(d / "bomb.png", 40000, 40000), "decompression bomb"),
    "header bigger than the limit": (lambda d: png_declaring(d / "big.png", 9000, 9000), "larger than the limit"),
    "missing": (lambda d: d / "missing.jpg", "no such file"),
    "html named jpg": (lambda d: put(d / "page.jpg", "<html></html>"), "not an image"),
    "random bytes": (lambda d: put(d / "r.webp", os.urandom(500)), "not an image"),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_a_bad_image_among_good_ones(world, tmp_path, capsys, case):
    make, needle = IMAGE_CASES[case]
    bad = make(tmp_path)
    good = write_image(tmp_path / "fine.png", (50, 40))
    before = folder_hash(world["run"])
    code, errors, out = run_cli(["predict", world["run"], bad, good], capsys)
    assert code == 1 and len(errors) == 1 and needle in errors[0] and bad.name in errors[0], errors
    assert "fine.png" in out and "percent confidence" in out
    assert folder_hash(world["run"]) == before


def test_a_file_name_that_is_not_utf8_is_printed_escaped(world, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    write_image(folder / "a.png", (40, 40))
    write_image(Path(os.fsdecode(bytes(folder) + b"/b\xff\xfe.png")), (40, 40))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "sppnet", "predict", str(world["run"]), str(folder)],
                            capture_output=True, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.count("percent confidence") == 2 and "\\udcff" in out and b"Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Datasets and archives given to train or data

DATA_CASES = {
    "one class": (lambda d: make_dataset(d / "one", {"only": 4}), ["train"], 2, "one class folder"),
    "no images": (lambda d: put(d / "none" / "a" / "x.txt", "x").parent.parent, ["train"], 2, "no images"),
    "no class folders": (lambda d: write_image(d / "flat" / "a.png").parent, ["data"], 2, "no class subfolders"),
    "nonexistent": (lambda d: d / "nowhere", ["train"], 2, "no such folder or archive"),
    "a file, not an archive": (lambda d: put(d / "notes.txt", "x"), ["data"], 2, "not a folder or an archive"),
    "corrupt archive": (lambda d: put(d / "broken.tgz", b"\x1f\x8b" + os.urandom(100)), ["data"], 2,
                        "cannot read archive"),
    "absolute member": (lambda d: tar_with(d / "abs.tgz", tarfile.TarInfo("/etc/evil.jpg")), ["data"], 2,
                        "absolute path"),
    "member leaving the folder": (lambda d: tar_with(d / "up.tgz", tarfile.TarInfo("a/../../evil.jpg")), ["data"], 2,
                                  "leaves the target folder"),
    "symlink member": (lambda d: tar_with(d / "link.tgz", _symlink_info()), ["data"], 2, "refusing to extract link"),
    "zip leaving the folder": (lambda d: _zip_with(d / "up.zip", "a/../../evil.jpg"), ["data"], 2,
                               "leaves the target folder"),
    "empty zip": (lambda d: _zip_with(d / "empty.zip", None), ["data"], 2, "the archive holds no class folders"),
}


def _symlink_info() -> tarfile.TarInfo:
    info = tarfile.TarInfo("a/link.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _zip_with(path: Path, name: str | None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if name:
            zf.writestr(name, b"x")
    return path


@pytest.mark.parametrize("case", DATA_CASES)
def test_a_bad_dataset(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("SPPNET_HOME", str(tmp_path / "cache"))
    make, command, status, needle = DATA_CASES[case]
    source = make(tmp_path)
    args = [*command, source] + (["--out", tmp_path / "out", "--epochs", "1", "--size", "32"] if command == ["train"] else [])
    code, errors, _ = run_cli(args, capsys)
    expect_one_line(code, errors, status, needle, Path(source).name)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not Path("/etc/evil.jpg").exists() and not (tmp_path / "evil.jpg").exists()


def test_a_decompression_bomb_in_a_training_folder_is_skipped_and_listed(world, tmp_path, capsys):
    data = make_dataset(tmp_path / "d", {"amber": 5, "jade": 5})
    png_declaring(data / "amber" / "bomb.png", 40000, 40000)
    code, errors, out = run_cli(["train", data, "--out", tmp_path / "r", "--epochs", "1", "--size", "32",
                                 "--widths", "4,8,8"], capsys)
    assert code == 0 and "Skipped 1 unreadable file" in out and "bomb.png" in out


def test_a_deep_tree_is_walked_within_bounds(world, tmp_path, capsys):
    data = make_dataset(tmp_path / "d", {"amber": 4, "jade": 4})
    try:
        deep_folder(data / "amber", 2000)
        code, errors, out = run_cli(["data", data], capsys)
        assert code == 0 and "Found 8 files belonging to 2 classes" in out
        deep_folder(tmp_path / "p", 2000)
        write_image(tmp_path / "p" / "top.png", (40, 40))
        code, errors, out = run_cli(["predict", world["run"], tmp_path / "p"], capsys)
        assert code == 0 and out.count("percent confidence") == 1
    finally:
        for top in (data / "amber", tmp_path / "p"):
            if top.exists():
                remove_deep(top)


# ---------------------------------------------------------------------------------------------
# Run folders that parse but hold the wrong thing


def _config(run: Path, change) -> None:
    path = run / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(change(config)))


def _weights(run: Path, change) -> None:
    tensors = load_file(run / "best.safetensors")
    change(tensors)
    save_file(tensors, str(run / "best.safetensors"))


RUN_CASES = {
    "config is a list": (lambda r: put(r / "config.json", "[]"), "config.json", "expected a JSON object"),
    "config is null": (lambda r: put(r / "config.json", "null"), "config.json", "expected a JSON object"),
    "config not JSON": (lambda r: put(r / "config.json", "{model"), "config.json", "not valid JSON"),
    "config without model": (lambda r: _config(r, lambda c: {k: v for k, v in c.items() if k != "model"}),
                             "config.json", "'model' is missing"),
    "config without class names": (lambda r: _config(r, lambda c: {k: v for k, v in c.items() if k != "class_names"}),
                                   "config.json", "'class_names' is missing"),
    "input size a word": (lambda r: _config(r, lambda c: {**c, "input_size": "big"}), "config.json", "'input_size'"),
    "input size huge": (lambda r: _config(r, lambda c: {**c, "input_size": 10**9}), "config.json", "'input_size'"),
    "seven class names": (lambda r: _config(r, lambda c: {**c, "class_names": list("abcdefg")}), "config.json",
                          "7 class names for a model with 3 outputs"),
    "two class names": (lambda r: _config(r, lambda c: {**c, "class_names": ["a", "b"]}), "config.json",
                        "2 class names for a model with 3 outputs"),
    "widths edited": (lambda r: _config(r, lambda c: {**c, "model": {**c["model"], "widths": [4, 8, 16]}}),
                      "best.safetensors", "has shape"),
    "unknown model name": (lambda r: _config(r, lambda c: {**c, "model": {**c["model"], "name": "resnet"}}),
                           "config.json", "unknown model 'resnet'"),
    "future schema": (lambda r: _config(r, lambda c: {**c, "schema": 7}), "config.json", "newer sppnet"),
    "weights not safetensors": (lambda r: put(r / "best.safetensors", b"\x00" * 20), "best.safetensors",
                                "cannot read weights"),
    "weights with NaN": (lambda r: _weights(r, lambda t: t["classifier.3.bias"].fill_(float("nan"))),
                         "best.safetensors", "NaN"),
    "weights of another shape": (lambda r: _weights(r, lambda t: t.update({"classifier.3.bias": torch.zeros(9)})),
                                 "best.safetensors", "'classifier.3.bias' has shape (9,)"),
    "weights missing a tensor": (lambda r: _weights(r, lambda t: t.pop("classifier.3.bias")), "best.safetensors",
                                 "missing 'classifier.3.bias'"),
    "weights missing": (lambda r: (r / "best.safetensors").unlink(), "best.safetensors", "missing"),
}


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
@pytest.mark.parametrize("case", RUN_CASES)
def test_a_damaged_run_folder(world, tmp_path, capsys, case, command):
    damage, where, needle = RUN_CASES[case]
    run = copy_run(world, tmp_path)
    damage(run)
    before = folder_hash(run)
    image = write_image(tmp_path / "x.png", (40, 40))
    args = {"predict": ["predict", run, image], "evaluate": ["evaluate", run, "--confusion-png", tmp_path / "c.png"],
            "export": ["export", run, "--torchscript", tmp_path / "m.pt"]}[command]
    code, errors, _ = run_cli(args, capsys)
    expect_one_line(code, errors, 2, where, needle)
    assert folder_hash(run) == before


STATE_CASES = {
    "garbage": (lambda r, m: put(r / "state.pt", b"not a checkpoint"), "cannot read training state"),
    "a list": (lambda r, m: torch.save([1, 2, 3], r / "state.pt"), "not a training state written by sppnet"),
    "missing keys": (lambda r, m: torch.save({"epoch": 1}, r / "state.pt"), "missing model, optimizer"),
    "wrong shapes": (lambda r, m: _resave_state(r, lambda s: s["model"].update({"classifier.3.bias": torch.zeros(9)})),
                     "'classifier.3.bias' has shape (9,)"),
    "epoch not a number": (lambda r, m: _resave_state(r, lambda s: s.update(epoch="two")), "'epoch' must be"),
    "a code-running pickle": (lambda r, m: torch.save({"model": Evil(m)}, r / "state.pt"), "cannot read training state"),
}


def _resave_state(run: Path, change) -> None:
    state = torch.load(run / "state.pt", weights_only=True)
    change(state)
    torch.save(state, run / "state.pt")


@pytest.mark.parametrize("case", STATE_CASES)
def test_a_damaged_training_state(world, tmp_path, capsys, case):
    damage, needle = STATE_CASES[case]
    run = copy_run(world, tmp_path)
    marker = tmp_path / "pwned"
    damage(run, marker)
    before = folder_hash(run)
    code, errors, _ = run_cli(["train", world["data"], "--out", run, "--resume", "--epochs", "2"], capsys)
    expect_one_line(code, errors, 2, "state.pt", needle)
    assert "weights_only=False" not in errors[0]
    assert folder_hash(run) == before and not marker.exists()


# ---------------------------------------------------------------------------------------------
# ONNX files


def _onnx_with_metadata(world, tmp_path, change) -> Path:
    import onnx

    model = onnx.load(str(world["onnx"]))
    props = {p.key: p.value for p in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


def _foreign_onnx(tmp_path) -> Path:
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.rand(1, 2),), str(path), dynamo=True)
    return path


ONNX_CASES = {
    "garbage": (lambda w, d: put(d / "g.onnx", os.urandom(64)), "cannot load ONNX model"),
    "missing": (lambda w, d: d / "none.onnx", "no such ONNX file"),
    "not sppnet's": (lambda w, d: _foreign_onnx(d), "not an ONNX model exported by sppnet"),
    "seven class names": (lambda w, d: _onnx_with_metadata(w, d, lambda p: p.update(class_names=json.dumps(list("abcdefg")))),
                          "7 class names in its metadata for a model with 3 outputs"),
    "class names not a list": (lambda w, d: _onnx_with_metadata(w, d, lambda p: p.update(class_names="7")),
                               "class_names is not a list"),
    "input size a word": (lambda w, d: _onnx_with_metadata(w, d, lambda p: p.update(input_size="big")),
                          "metadata missing"),
}


@pytest.mark.parametrize("case", ONNX_CASES)
def test_a_bad_onnx_file(world, tmp_path, capsys, case):
    make, needle = ONNX_CASES[case]
    path = make(world, tmp_path)
    image = write_image(tmp_path / "x.png", (40, 40))
    code, errors, _ = run_cli(["predict", "--onnx", path, image], capsys)
    expect_one_line(code, errors, 2, path.name, needle)


# ---------------------------------------------------------------------------------------------
# Options

OPTION_CASES = {
    "device tpu (predict)": (["predict", "{run}", "{image}", "--device", "tpu"], "--device must be auto, cpu or cuda"),
    "device tpu (train)": (["train", "{data}", "--out", "{tmp}/o", "--device", "tpu"], "--device must be"),
    "levels 100": (["train", "{data}", "--out", "{tmp}/o", "--levels", "1,100"], "--levels must be at most 32"),
    "size too large": (["train", "{data}", "--out", "{tmp}/o", "--size", "100000"], "must be at most 4096"),
    "batch size 0": (["train", "{data}", "--out", "{tmp}/o", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    "batch size huge": (["train", "{data}", "--out", "{tmp}/o", "--batch-size", "1000000"], "--batch-size must be at most"),
    "negative lr": (["train", "{data}", "--out", "{tmp}/o", "--lr", "-1"], "--lr must be a positive number"),
    "huge model": (["train", "{data}", "--out", "{tmp}/o", "--levels", "1,32", "--widths", "16,32,1024"],
                   "parameters"),
    "out under a file": (["train", "{data}", "--out", "{file}/run", "--size", "32"], "is a file, not a folder"),
    "export into a file's child": (["export", "{run}", "--torchscript", "{file}/m.pt"], "cannot write"),
    "store dir is a file": (["train", "{data}", "--out", "{tmp}/o", "--store-dir", "{file}"], "--store-dir"),
    "top-k 0": (["predict", "{run}", "{image}", "--top-k", "0"], "--top-k must be an integer >= 1"),
    "evaluate below the stride": (["evaluate", "{run}", "--size", "4"], "must be an integer >= 8"),
    "val split 1.5": (["train", "{data}", "--out", "{tmp}/o", "--val-split", "1.5"], "val_split must be a number"),
    "unknown model": (["train", "{data}", "--out", "{tmp}/o", "--model", "vgg"], "unknown model 'vgg'"),
    "resume with other options": (["train", "{data}", "--out", "{run}", "--resume", "--lr", "0.5"], "--lr"),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_a_bad_option(world, tmp_path, capsys, case):
    template, needle = OPTION_CASES[case]
    (tmp_path / "f").write_text("a file")
    image = write_image(tmp_path / "x.png", (40, 40))
    values = {"run": world["run"], "data": world["data"], "tmp": tmp_path, "file": tmp_path / "f", "image": image}
    before = folder_hash(world["run"])
    code, errors, _ = run_cli([part.format(**values) for part in template], capsys)
    expect_one_line(code, errors, 2, needle)
    assert folder_hash(world["run"]) == before
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# HTTP requests


@pytest.fixture(scope="module")
def client(world):
    from fastapi.testclient import TestClient

    from sppnet.predict import Predictor
    from sppnet.serve import create_app

    return TestClient(create_app(Predictor.from_run(world["run"]), max_upload=200_000))


def _bomb_bytes(tmp_path) -> bytes:
    return png_declaring(tmp_path / "b.png", 40000, 40000).read_bytes()


HTTP_CASES = {
    "not an image": (lambda c, d: c.post("/predict", content=b"hello"), 400, "not an image"),
    "empty body": (lambda c, d: c.post("/predict", content=b""), 400, "empty upload"),
    "decompression bomb": (lambda c, d: c.post("/predict", content=_bomb_bytes(d)), 400, "decompression bomb"),
    "too large": (lambda c, d: c.post("/predict", content=b"x" * 300_000), 413, "larger than the limit"),
    "form without image": (lambda c, d: c.post("/predict", files={"other": ("a.png", b"x")}), 400, "no file field 'image'"),
    "truncated jpeg": (lambda c, d: c.post("/predict", content=write_image(d / "t.jpg", (60, 40)).read_bytes()[:200]),
                       400, "cannot decode image"),
    "unknown path": (lambda c, d: c.get("/nothing-here"), 404, ""),
    "wrong method": (lambda c, d: c.get("/predict"), 405, ""),
}


@pytest.mark.parametrize("case", HTTP_CASES)
def test_a_hostile_http_request(client, tmp_path, case):
    send, status, needle = HTTP_CASES[case]
    response = send(client, tmp_path)
    assert response.status_code == status
    if needle:
        assert needle in response.json()["error"]
    assert client.get("/health").json() == {"status": "ok"}  # still serving


def test_a_full_disk_is_one_line_and_the_last_epoch_stays(world, tmp_path, capsys, monkeypatch):
    import errno

    from sppnet import files

    run = copy_run(world, tmp_path)
    kept = ("best.safetensors", "last.safetensors", "state.pt", "history.csv", "metrics.json")
    before = {name: (run / name).read_bytes() for name in kept}
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("last.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    code, errors, _ = run_cli(["train", world["data"], "--out", run, "--resume", "--epochs", "2"], capsys)
    expect_one_line(code, errors, 2, "last.safetensors: cannot write (No space left on device)")
    monkeypatch.undo()
    # The run still holds its finished epoch (config.json records the longer run asked for), and no
    # half-written file is left.
    assert {name: (run / name).read_bytes() for name in kept} == before
    assert not list(run.glob(".*.tmp"))


def test_a_class_folder_named_with_undecodable_bytes_evaluates(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", {"amber": 6, "jade": 6})
    os.rename(data / "jade", os.fsdecode(bytes(data) + b"/j\xe9de"))
    run = tmp_path / "run"
    code, errors, _ = run_cli(["train", data, "--out", run, "--epochs", "1", "--size", "32", "--widths", "4,8,8"], capsys)
    assert code == 0
    code, errors, out = run_cli(["evaluate", run, "--confusion-png", tmp_path / "c.png"], capsys)
    assert code == 0 and "accuracy" in out and "j\\udce9de" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", {"amber": 6, "jade": 6})
    (data / "zinc").mkdir()
    code, errors, out = run_cli(["train", data, "--out", tmp_path / "run", "--epochs", "1", "--size", "32",
                                 "--widths", "4,8,8"], capsys)
    assert code == 0 and "class folder(s) with no images: zinc" in out

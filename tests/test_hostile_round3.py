"""The third hostile probe's cases that are fixed: each ends in one clear line or the right result."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from sppnet.cli import main
from sppnet.errors import ConfigError
from sppnet.models import build_model
from sppnet.pooling import spatial_pyramid_pool
from sppnet.runs import RunFolder

from conftest import make_dataset

FAST = ["--epochs", "1", "--size", "32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile3")
    data = make_dataset(root / "ds", {"amber": 6, "jade": 6})
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0
    return data, run


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("with_sizes", [False, True])
def test_an_empty_batch_pools_to_no_rows(mode, with_sizes):
    sizes = torch.zeros(0, 2, dtype=torch.long) if with_sizes else None
    assert spatial_pyramid_pool(torch.zeros(0, 4, 8, 8), (1, 2), mode, sizes).shape == (0, 20)


@pytest.mark.parametrize("name", ["spp", "gap"])
def test_an_empty_batch_through_a_model_gives_no_logits(name):
    model = build_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(0, 3, 32, 32), torch.zeros(0, 2, dtype=torch.long)).shape == (0, 3)


@pytest.mark.parametrize("with_sizes", [False, True])
def test_an_integer_tensor_is_refused_on_both_paths(with_sizes):
    sizes = torch.tensor([[8, 8], [4, 4]]) if with_sizes else None
    with pytest.raises(ConfigError, match="needs a floating-point input, got torch.int64"):
        spatial_pyramid_pool(torch.zeros(2, 4, 8, 8, dtype=torch.long), (1, 2), "max", sizes)


def _sppnet(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sppnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_fifo_named_like_an_image_is_skipped_never_read(world, tmp_path):
    data, run = world
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    done = _sppnet("predict", run, pipe, data / "amber" / "img_000.jpg")  # would hang if opened
    assert done.returncode == 1 and "pipe.jpg: is a named pipe (FIFO), not an image file" in done.stderr
    assert "This image most likely belongs to" in done.stdout
    folder = make_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    os.mkfifo(folder / "a" / "fifo.png")
    done = _sppnet("train", folder, "--out", tmp_path / "r", *FAST)
    assert done.returncode == 0, done.stderr
    assert "Found 8 files" in done.stdout and "not regular files" in done.stdout + done.stderr
    done = _sppnet("explain", run, folder / "a" / "fifo.png", "--out", tmp_path / "ex")
    assert done.returncode != 0 and "named pipe" in done.stderr and "Traceback" not in done.stderr


def test_a_diverging_run_stops_naming_the_epoch_and_keeps_the_last_finite_one(world, tmp_path, capsys, monkeypatch):
    data, _ = world
    train_module = importlib.import_module("sppnet.train")
    real = train_module.train_one_epoch
    calls = []

    def diverge_in_epoch_two(*args, **kwargs):
        calls.append(1)
        loss, acc, n = real(*args, **kwargs)
        if len(calls) == 2:
            with torch.no_grad():
                for p in args[0].parameters():
                    p.fill_(float("nan"))
            return float("nan"), acc, n
        return loss, acc, n

    monkeypatch.setattr(train_module, "train_one_epoch", diverge_in_epoch_two)
    run = tmp_path / "run"
    code = main(["train", str(data), "--out", str(run), "--epochs", "3", "--size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "epoch 2: the loss and val_loss became NaN or infinite: the run diverged" in err
    assert f"{run} keeps epoch 1" in err and len(err.strip().splitlines()) == 1
    folder = RunFolder(run)
    assert [r["epoch"] for r in folder.read_history()] == [1]
    assert all(torch.isfinite(t).all() for t in load_file(run / "last.safetensors").values())
    assert "NaN" not in (run / "metrics.json").read_text()


def test_export_refuses_weights_whose_logits_overflow(world, tmp_path, capsys):
    _, run = world
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    weights = {k: v * 1e18 if v.is_floating_point() else v for k, v in load_file(copy / "best.safetensors").items()}
    save_file(weights, copy / "best.safetensors")
    target = tmp_path / "m.pt"
    assert main(["export", str(copy), "--torchscript", str(target)]) == 2
    assert "give NaN or infinite logits (the run diverged); nothing was exported" in capsys.readouterr().err
    assert not target.exists()


def test_two_inputs_of_one_name_get_two_explanations(world, tmp_path, capsys):
    data, run = world
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.jpg").write_bytes((data / "amber" / "img_000.jpg").read_bytes())
    (b / "x.jpg").write_bytes((data / "jade" / "img_001.jpg").read_bytes())
    out = tmp_path / "ex"
    assert main(["explain", str(run), str(a / "x.jpg"), str(b / "x.jpg"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x-2.explain.png", "x.explain.png"]


def test_the_service_sets_protective_headers_and_keeps_its_paths_to_itself(world):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sppnet.predict import Predictor
    from sppnet.serve import create_app

    _, run = world
    client = TestClient(create_app(Predictor.from_run(run), model_info={"source": run.name}))
    page, health = client.get("/"), client.get("/health")
    for answer in (page, health):
        assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_serve_on_port_0_names_the_port_it_got_and_model_names_no_absolute_path(world):
    pytest.importorskip("uvicorn")
    import httpx

    _, run = world
    proc = subprocess.Popen([sys.executable, "-m", "sppnet", "serve", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for _ in range(200):
            line = proc.stdout.readline()
            if "http://127.0.0.1:" in line:
                url = line[line.index("http://"):].split()[0].rstrip("/.,")
                break
        assert url and not url.endswith(":0"), url
        for _ in range(100):
            try:
                answer = httpx.get(url + "/model", timeout=2)
                break
            except httpx.TransportError:
                import time

                time.sleep(0.2)
        info = answer.json()
        assert str(run.parent) not in json.dumps(info) and info["source"] == run.name
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_explaining_a_huge_photo_draws_at_a_bounded_size(world, tmp_path):
    import numpy as np
    from PIL import Image

    from sppnet.explain import MAX_OVERLAY_SIDE, explain
    from sppnet.predict import Predictor

    _, run = world
    predictor = Predictor.from_run(run)
    photo = tmp_path / "wide.png"
    Image.fromarray(np.full((1500, 3000, 3), 90, dtype=np.uint8)).save(photo)
    for image in (str(photo), np.full((1500, 3000, 3), 90, dtype=np.uint8)):
        explanation = explain(predictor, image)
        assert explanation.heatmap.shape == (MAX_OVERLAY_SIDE // 2, MAX_OVERLAY_SIDE)
        assert explanation.image.shape == (MAX_OVERLAY_SIDE // 2, MAX_OVERLAY_SIDE, 3)
        assert (explanation.prediction.file_width, explanation.prediction.file_height) == (3000, 1500)


def test_no_validation_image_is_refused_before_anything_is_written(world, tmp_path, capsys):
    data, _ = world
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--val-split", "0", *FAST]) == 2
    err = capsys.readouterr().err
    assert "no validation images (--val-split 0.0 of 12 files)" in err and len(err.strip().splitlines()) == 1
    assert not (run / "metrics.json").exists() and not (run / "config.json").exists()


def test_weight_files_get_the_mode_of_the_rest_of_the_run_folder(world):
    _, run = world
    config_mode = (run / "config.json").stat().st_mode & 0o777
    for name in ("best.safetensors", "last.safetensors", "state.pt"):
        assert (run / name).stat().st_mode & 0o777 == config_mode, name


def test_a_second_training_into_a_run_folder_in_use_is_refused(world, tmp_path, capsys):
    from sppnet.runs import RunFolder

    data, _ = world
    run = tmp_path / "run"
    holder = RunFolder(run)
    with holder.lock():  # as a training in another process holds it
        assert main(["train", str(data), "--out", str(run), *FAST]) == 2
        err = capsys.readouterr().err
        assert f"{run}: another training is writing this run folder (pid {os.getpid()})" in err
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0  # released: a killed holder frees it too


def test_a_killed_training_does_not_leave_its_folder_locked(world, tmp_path):
    data, _ = world
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from sppnet.runs import RunFolder\n"
                             f"with RunFolder({str(run)!r}).lock():\n    print('held', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait(timeout=10)
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0


@pytest.mark.parametrize("out,message", [("", "--out must name a folder, got ''"),
                                         ("{data}/runs/x", "lies inside the data folder"),
                                         ("{data}", "lies inside the data folder")])
def test_an_out_folder_inside_the_data_or_empty_is_refused(world, capsys, out, message):
    data, _ = world
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(["train", str(data), "--out", out.format(data=data), *FAST]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_one_class_with_images_beside_empty_ones_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"real": 5})
    (data / "empty").mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "fewer than two classes with images (empty: empty)" in capsys.readouterr().err


def _copy_run(run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    return copy


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(class_names=["amber", "amber"]), "'class_names' names 'amber' twice"),
    (lambda c: c["train"].update(flip_test="no"), "flip_test must be true or false, got 'no'"),
    (lambda c: c["train"].update(seed=-3.5), "seed must be an integer, got -3.5"),
    (lambda c: c["train"].update(levels="1,2"), "levels must be a list of integers"),
])
def test_a_run_config_with_wrong_types_is_refused_not_coerced(world, tmp_path, capsys, edit, message):
    _, run = world
    copy = _copy_run(run, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["predict", str(copy), str(world[0] / "amber" / "img_000.jpg")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["train", "{data}", "--out", "{tmp}/r", "--seed", str(2**32)], "--seed must be at most 4294967295"),
    (["train", "{data}", "--out", "{tmp}/r", "--split-seed", str(2**40)], "--split-seed must be at most 4294967295"),
    (["train", "{data}", "--out", "{tmp}/r", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["data", "{data}", "--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    (["data", "{data}", "--seed", str(2**32)], "--seed must be an integer in 0..4294967295"),
])
def test_seeds_out_of_32_bits_get_one_line(world, tmp_path, capsys, args, message):
    data, _ = world
    assert main([a.format(data=data, tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["model"].update(num_classes=10**12), "has num_classes 1000000000000, not an integer in 1..100000"),
    (lambda c: c["model"].update(hidden=10**9), "has hidden 1000000000"),
    (lambda c: c["model"].update(widths=[16, 10**7]), "has widths [16, 10000000]"),
    (lambda c: c.update(versions=["1.0"]), "'versions' is not a mapping"),
])
def test_absurd_numbers_in_a_run_config_are_refused_before_anything_is_built(world, tmp_path, capsys, edit, message):
    _, run = world
    copy = _copy_run(run, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_deeply_nested_config_is_one_line(world, tmp_path, capsys):
    _, run = world
    copy = _copy_run(run, tmp_path)
    (copy / "config.json").write_text("[" * 200_000)
    assert main(["predict", str(copy), str(world[0] / "amber" / "img_000.jpg")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_thousands_of_unreadable_files_are_counted_not_listed_one_a_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    for k in range(60):
        (data / "a" / f"empty_{k:03d}.jpg").write_bytes(b"")
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "Skipped 60 unreadable file(s):" in out and "... and 40 more (metrics.json lists every one)" in out
    assert out.count("empty_") == 20
    assert len(json.loads((tmp_path / "r" / "metrics.json").read_text())["skipped_files"]) == 60


def test_an_interrupt_before_the_first_epoch_says_there_is_no_checkpoint(world, tmp_path, capsys, monkeypatch):
    data, _ = world
    train_module = importlib.import_module("sppnet.train")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(__import__("sppnet").TrainConfig(data=str(data), out=str(tmp_path / "r"), epochs=1, size=32))
    out = capsys.readouterr().out
    assert "holds no checkpoint (no state.pt)" in out and "finished epoch(s)" not in out


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_an_archive_that_expands_far_beyond_itself_is_refused_and_leaves_nothing(tmp_path, capsys, monkeypatch, kind):
    import tarfile
    import zipfile

    from sppnet.data import sources

    monkeypatch.setattr(sources, "MIN_EXPANSION_BYTES", 1 << 20)  # the test's bomb: 8 MB of zeros
    zeros = tmp_path / "zeros.jpg"
    with open(zeros, "wb") as f:
        f.truncate(8 << 20)
    archive = tmp_path / f"bomb.{kind}"
    if kind == "tgz":
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(zeros, arcname="ds/a/zeros.jpg")
    else:
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(zeros, "ds/a/zeros.jpg")
    assert archive.stat().st_size < 100_000
    monkeypatch.setenv("SPPNET_HOME", str(tmp_path / "cache"))
    assert main(["data", str(archive)]) == 2
    err = capsys.readouterr().err
    assert "refused as a decompression bomb" in err and len(err.strip().splitlines()) == 1
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_a_class_folder_linked_to_the_root_counts_each_photo_once(tmp_path):
    from sppnet.data import scan

    data = make_dataset(tmp_path / "ds", {"a": 3, "b": 4})
    (data / "loop").symlink_to(data, target_is_directory=True)
    dataset = scan(data)
    assert len(dataset) == 7 and dataset.class_counts() == {"a": 3, "b": 4, "loop": 0}


def test_class_names_with_newlines_or_bidi_controls_are_printed_escaped(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"evil\nname": 5, "rtl\u202eabc": 5})
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(next((data / "evil\nname").iterdir()))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "evil\\u000aname" in lines[1] and "rtl\\u202eabc" in lines[1] and "\u202e" not in "".join(lines)
    assert lines[2].startswith("  This image most likely belongs to ") and len(lines) == 3


@pytest.mark.parametrize("variable", ["SPPNET_HOME", "XDG_CACHE_HOME"])
def test_a_cache_folder_that_is_a_file_gets_one_line(tmp_path, capsys, monkeypatch, variable):
    import tarfile

    data = make_dataset(tmp_path / "ds", {"a": 2, "b": 2})
    archive = tmp_path / "ds.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data, arcname="ds")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    monkeypatch.delenv("SPPNET_HOME", raising=False)
    monkeypatch.setenv(variable, str(blocker))
    assert main(["data", str(archive)]) == 2
    err = capsys.readouterr().err
    assert "set SPPNET_HOME to a writable folder" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_while_writing_weights_is_one_line_and_leaves_no_partial_file(world, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from sppnet.runs import folder

    data, _ = world

    def full_disk(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(folder, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not list(run.glob("*.safetensors")) and not list(run.glob(".*safetensors*"))


@pytest.mark.parametrize("args,message", [
    (["--size", "4000"], "fixed 4000: a batch of 32 images up to 4000x4000 needs more than"),
    (["--native-range", "64:4000"], "native range 64:4000: a batch of 32 images up to 4000x8000"),
    (["--progressive", "64:3000"], "a batch of 32 images up to 3000x6000"),
])
def test_sizes_whose_batches_cannot_fit_in_memory_are_refused_with_the_bound(world, tmp_path, capsys, monkeypatch,
                                                                            args, message):
    data, _ = world
    monkeypatch.setattr("sppnet.data.available_memory", lambda: 16 * 10**9)  # any machine: 16 GB free
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "16.0 GB are free" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_predict_size_beyond_memory_is_refused(world, capsys, monkeypatch):
    data, run = world
    monkeypatch.setattr("sppnet.predict.available_memory", lambda: 16 * 10**9)
    assert main(["predict", str(run), str(data / "amber" / "img_000.jpg"), "--size", "90000"]) == 2
    assert "--size 90000: one 90000x90000 image needs more than" in capsys.readouterr().err


def test_thousands_of_empty_files_and_nothing_else_are_one_line(tmp_path, capsys):
    data = tmp_path / "ds"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for k in range(500):
            (data / cls / f"e{k}.jpg").write_bytes(b"")
    assert main(["train", str(data), "--out", str(tmp_path / "r"), *FAST]) == 2
    captured = capsys.readouterr()
    assert "none of the training images could be decoded (1000 unreadable file(s); e.g." in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out.count("e1") == 0


def test_a_full_store_folder_is_one_line_and_leaves_nothing(world, tmp_path, capsys, monkeypatch):
    from sppnet.data import store

    data, _ = world
    real = store.os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.f = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, payload):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "fdopen", Full)
    folder = tmp_path / "store"
    folder.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--store-dir", str(folder), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: cannot hold the decoded images (No space left on device)" in err
    assert list(folder.iterdir()) == []

"""The main job end to end on tiny generated datasets: train, resume, evaluate, predict."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sppnet import data as data_mod
from sppnet.cli import main
from sppnet.errors import ConfigError
from sppnet.models import build_model
from sppnet.evaluate import expected_calibration_error, summarize_predictions
from sppnet.predict import Predictor
from sppnet.runs import RunFolder
from sppnet.config import TrainConfig
from sppnet.train import Reporter, learning_rate, make_optimizer, train

from conftest import history_without_seconds, make_dataset, write_image

FAST = ["--size", "32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 12, "jade": 10, "sky": 8}, size=(48, 36), vary=True)


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(dataset), "--out", str(out), "--epochs", "2", *FAST]) == 0
    return out


def test_resume_refuses_options_and_data_it_cannot_honour(trained_run, dataset, tmp_path, capsys):
    other = make_dataset(tmp_path / "other", {"amber": 3, "jade": 3, "sky": 3})
    for args, message in [
        ([str(dataset), "--lr", "0.5", "--model", "gap"], "with its own options; --lr (0.001 in the run), --model ('spp' "),
        ([str(dataset), "--native", "40"], "--size/--sizes/--size-range/--native/--progressive/--native-range (fixed 32 in the run) "
                                    "cannot change"),
        ([str(dataset), "--preset", "best"], "--preset (study in the run) cannot change"),
        ([str(other)], f"was trained on {dataset}, not {other}"),
    ]:
        before = {p.name: p.read_bytes() for p in trained_run.iterdir()}
        code, err = run_cli(["train", *args, "--out", str(trained_run), "--resume"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert {p.name: p.read_bytes() for p in trained_run.iterdir()} == before


def test_train_never_changes_the_configuration_it_is_given(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset.parent)
    config = TrainConfig(data=dataset.name, out=str(tmp_path / "run"), epochs=None, limit=8, batch_size=8,
                         policy={"kind": "fixed", "size": 32})
    before = TrainConfig.from_dict(config.to_dict())
    train(config)
    assert config == before  # relative data, epochs None: as given
    stored = RunFolder(tmp_path / "run").run_config().train
    assert stored.epochs == 20 and Path(stored.data).is_absolute()


def test_run_folder_is_complete(trained_run, dataset):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "best.safetensors", "last.safetensors", "history.csv", "curves.png", "metrics.json", "state.pt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["class_names"] == ["amber", "jade", "sky"]
    assert config["model"]["name"] == "spp" and config["policy"] == {"kind": "fixed", "size": 32}
    assert config["versions"]["torch"] == torch.__version__
    assert config["train"]["seed"] == 123 and config["data"]["val_split"] == 0.2
    history = RunFolder(trained_run).read_history()
    assert [r["epoch"] for r in history] == [1, 2]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["parameters"] == 196_131
    assert metrics["final"]["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"])
    # Training images/s per epoch: timed without validation, so at least the images over the
    # whole epoch's seconds (30 images, less those held out for validation).
    n_train = 30 - metrics["validation"]["count"]
    seconds = [r["seconds"] for r in history]
    assert metrics["train_images_per_second_last_epoch"] >= n_train / seconds[-1]
    assert metrics["train_images_per_second_median"] >= n_train / max(seconds)
    weights = load_file(trained_run / "last.safetensors")
    assert set(weights) == set(RunFolder(trained_run).load_model("last").state_dict())
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(trained_run / "state.pt", weights_only=True)
    assert state["epoch"] == 2


def test_training_learns_the_tiny_dataset(trained_run):
    history = RunFolder(trained_run).read_history()
    assert history[-1]["loss"] < history[0]["loss"]


def test_same_seed_gives_the_same_history(trained_run, dataset, tmp_path):
    again = tmp_path / "again"
    assert main(["train", str(dataset), "--out", str(again), "--epochs", "2", *FAST]) == 0
    assert history_without_seconds(again) == history_without_seconds(trained_run)


def test_store_dir_trains_the_same_and_leaves_nothing_on_disk(trained_run, dataset, tmp_path):
    store = tmp_path / "decoded" / "here"  # made if missing
    out = tmp_path / "mapped"
    assert main(["train", str(dataset), "--out", str(out), "--epochs", "2", *FAST, "--store-dir", str(store)]) == 0
    assert history_without_seconds(out) == history_without_seconds(trained_run)
    assert store.is_dir() and list(store.iterdir()) == []


def test_images_that_would_not_fit_in_memory_are_decoded_into_the_run_folder(trained_run, dataset, tmp_path,
                                                                              monkeypatch, capsys):
    from sppnet import data

    monkeypatch.setattr(data.store, "available_memory", lambda: 1000)  # bytes: nothing fits
    out = tmp_path / "auto"
    assert main(["train", str(dataset), "--out", str(out), "--epochs", "2", *FAST]) == 0
    assert "more than 75% of the 0.0 GB of memory available: decoding them into memory-mapped files in" in capsys.readouterr().out
    assert history_without_seconds(out) == history_without_seconds(trained_run)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".sppnet-decoded-")]


def test_training_bounds_onednn_primitive_cache_unless_the_user_set_it(dataset, tmp_path, monkeypatch):
    from sppnet.runtime import PRIMITIVE_CACHE_CAPACITY, bound_primitive_cache

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["train", str(dataset), "--out", str(tmp_path / "run"), "--epochs", "1", *FAST, "--limit", "8"]) == 0
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "300")
    assert not bound_primitive_cache() and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "300"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "5")  # oneDNN's older name
    assert not bound_primitive_cache() and "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ


def test_resume_after_kill_matches_an_uninterrupted_run(dataset, tmp_path):
    full = tmp_path / "full"
    args = ["train", str(dataset), "--epochs", "4", "--size", "64", "--batch-size", "4"]
    assert main([*args, "--out", str(full)]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sppnet", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(RunFolder(killed).read_history()) < 1:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(RunFolder(killed).read_history())
    assert 1 <= done < 4, "the kill should land between the first and the last epoch"
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert history_without_seconds(killed) == history_without_seconds(full)
    assert RunFolder(killed).load_weights("last").keys() == RunFolder(full).load_weights("last").keys()
    for k, v in RunFolder(full).load_weights("last").items():
        torch.testing.assert_close(RunFolder(killed).load_weights("last")[k], v)


class InterruptAt(Reporter):
    wants_steps = True

    def __init__(self, epoch):
        self.at = epoch

    def step(self, epoch, epochs, step, steps, loss, accuracy, elapsed):
        if epoch == self.at and step == 2:
            raise KeyboardInterrupt


def test_ctrl_c_leaves_a_consistent_run_that_resumes(dataset, tmp_path):
    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), epochs=3, batch_size=8,
                         policy={"kind": "fixed", "size": 32})
    with pytest.raises(KeyboardInterrupt):
        train(config, reporter=InterruptAt(2))
    assert len(RunFolder(config.out).read_history()) == 1
    assert torch.load(Path(config.out) / "state.pt", weights_only=True)["epoch"] == 1
    train(config, resume=True)
    reference = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "reference")})
    train(reference)
    assert history_without_seconds(config.out) == history_without_seconds(reference.out)


def test_resume_can_extend_a_finished_run(trained_run, dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    assert main(["train", str(dataset), "--out", str(copy), "--resume", "--epochs", "3"]) == 0
    assert [r["epoch"] for r in RunFolder(copy).read_history()] == [1, 2, 3]


def test_progressive_run_keeps_its_growth_when_resumed_for_longer(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--progressive", "24:40", "--batch-size", "8"]
    assert main([*args, "--epochs", "2"]) == 0
    policy = {"kind": "progressive", "low": 24, "high": 40, "epochs": 2, "max_aspect": 2.0}
    stored = json.loads((out / "config.json").read_text())
    assert stored["policy"] == policy and stored["train"]["policy"] == policy
    assert stored["eval_policy"] == {"kind": "native", "size": 40, "max_aspect": 2.0}
    assert main([*args, "--epochs", "3", "--resume"]) == 0  # the same option, more epochs: accepted
    assert json.loads((out / "config.json").read_text())["policy"] == policy  # epoch 3 at 40, as the ramp ended
    assert [r["epoch"] for r in RunFolder(out).read_history()] == [1, 2, 3]
    code, err = run_cli(["train", str(dataset), "--out", str(out), "--progressive", "24:48", "--resume"], capsys)
    assert code == 2 and "(progressive 24:40 over 2 epochs in the run) cannot change" in err
    config = TrainConfig.from_preset("fast", policy={"kind": "progressive", "low": 48, "high": 80}, epochs=10)
    assert config.policy["epochs"] == 10 and config.size_policy().side(0) == 48


@pytest.mark.parametrize(
    "extra",
    [["--native", "32"], ["--progressive", "24:32"], ["--native-range", "24:40"], ["--sizes", "24,32"], ["--size-range", "24:32"], ["--model", "gap"], ["--model", "flatten"],
     ["--no-augment", "--dropout", "0", "--levels", "1,2", "--pool", "avg"], ["--batch-norm", "--norm-after-pool"]],
)
def test_other_models_and_size_policies_train(dataset, tmp_path, extra):
    args = ["train", str(dataset), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8"]
    if not any(a in extra for a in ("--native", "--sizes", "--size-range", "--progressive", "--native-range")):
        args += ["--size", "32"]
    assert main(args + extra) == 0
    history = RunFolder(tmp_path / "run").read_history()
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


# ---------------------------------------------------------------------------------------------
# predict and evaluate


def test_predict_prints_probabilities_and_the_sentence(trained_run, dataset, capsys):
    image = dataset / "amber" / "img_000.jpg"
    assert main(["predict", str(trained_run), str(image)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"This image most likely belongs to (amber|jade|sky) with \d+\.\d\d percent confidence\.", out)
    assert "amber: 0." in out and "jade: 0." in out


@pytest.mark.parametrize("flip", [False, True])
def test_predict_many_equals_one_image_at_a_time(trained_run, dataset, tmp_path, flip):
    from sppnet.data import DataError
    from sppnet.predict import expand_images

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    paths = expand_images([dataset])  # 30 images of many shapes
    paths = [*paths[:7], bad, *paths[7:]]
    predictor = Predictor.from_run(trained_run, flip=flip)
    # Batches of 4 images of similar shape, zero-padded; 9 files decoded at a time.
    many = list(predictor.predict_many(paths, batch_size=4, chunk=9))
    assert len(many) == len(paths)
    shapes = set()
    for path, result in zip(paths, many):
        if path == bad:
            assert isinstance(result, DataError) and "broken.jpg" in str(result)
            continue
        alone = predictor.predict(path)
        assert (result.source, result.width, result.height) == (alone.source, alone.width, alone.height)
        assert result.class_name == alone.class_name
        for name, p in alone.probabilities.items():
            assert result.probabilities[name] == pytest.approx(p, abs=1e-5)
        shapes.add((result.height, result.width))
    assert len(shapes) > 4  # the batches really were padded
    with pytest.raises(Exception, match="batch_size must be an integer >= 1"):
        next(predictor.predict_many(paths, batch_size=0))
    # A chunk with no readable file at all.
    only_bad = list(predictor.predict_many([bad, tmp_path / "missing.png", paths[0]], chunk=2))
    assert [type(r).__name__ for r in only_bad] == ["DataError", "DataError", "Prediction"]
    assert "missing.png: no such file" in str(only_bad[1])


def test_predict_json_and_top_k(trained_run, dataset, capsys):
    assert main(["predict", str(trained_run), str(dataset / "sky"), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    result = json.loads(lines[0])
    assert set(result) == {"image", "class", "confidence", "probabilities", "width", "height", "file_width", "file_height"}
    assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert main(["predict", str(trained_run), str(dataset / "sky" / "img_000.jpg"), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.count(": 0.") == 1


def test_predict_bad_file_gets_one_line_and_the_rest_are_predicted(trained_run, dataset, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    good = dataset / "jade" / "img_001.jpg"
    assert main(["predict", str(trained_run), str(bad), str(good), str(tmp_path / "missing.png")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 2 and "broken.jpg" in captured.err and "missing.png: no such file" in captured.err
    assert "Traceback" not in captured.err
    assert "This image most likely belongs to" in captured.out


def test_predictor_keeps_the_aspect_ratio(trained_run, tmp_path):
    predictor = Predictor.from_run(trained_run)
    image = write_image(tmp_path / "wide.png", (120, 60))
    result = predictor.predict(image)
    assert (result.width, result.height) == (64, 32)  # shorter side = training size 32
    assert result.sentence() == f"This image most likely belongs to {result.class_name} with {100 * result.confidence:.2f} percent confidence."
    warped = Predictor.from_run(trained_run, size=40).predict(image)
    assert (warped.width, warped.height) == (40, 40)
    array = np.zeros((50, 70, 3), np.uint8)
    assert Predictor.from_run(trained_run).predict(array).height == 32


def test_evaluate_views(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "view: fixed 32" in out and "accuracy" in out and "confusion matrix" in out
    assert (trained_run / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    for view in (["--native", "32"], ["--scales", "24,32,40"], ["--size", "40"]):
        assert main(["evaluate", str(trained_run), "--json", *view]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["count"] == 6 and 0 <= result["accuracy"] <= 1
        assert sum(map(sum, result["confusion"])) == 6
    assert main(["evaluate", str(trained_run), "--native", "32", "--json"]) == 0
    native = json.loads(capsys.readouterr().out)
    assert native["view"] == "native 32"


def test_evaluate_decodes_into_the_run_folder_when_memory_is_short(trained_run, monkeypatch, capsys, caplog):
    from sppnet import data

    args = ["evaluate", str(trained_run), "--json", "--native", "32"]
    assert main(args) == 0
    in_memory = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(data.store, "available_memory", lambda: 1000)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == in_memory
    assert f"decoding them into memory-mapped files in {trained_run}" in caplog.text
    assert not [p.name for p in trained_run.iterdir() if p.name.startswith(".sppnet-decoded-")]


def test_metrics_on_a_hand_made_example():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    ev = summarize_predictions(probs, labels, ["a", "b"])
    assert ev.accuracy == 0.75 and ev.confusion == [[1, 0], [1, 2]]
    assert ev.precision == pytest.approx([0.5, 1.0]) and ev.recall == pytest.approx([1.0, 2 / 3])
    assert ev.f1 == pytest.approx([2 / 3, 0.8])
    assert ev.loss == pytest.approx(-np.log([0.9, 0.4, 0.7, 0.8]).mean())
    assert ev.confidence_right == pytest.approx((0.9 + 0.7 + 0.8) / 3) and ev.confidence_wrong == pytest.approx(0.6)
    # Bins of width 1/15: 0.6 alone (wrong), 0.7 alone, 0.8 alone, 0.9 alone (right).
    assert ev.ece == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0


# ---------------------------------------------------------------------------------------------
# bad input: one line, nothing lost


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "{data}", "--out", "{run}"], "already holds a run; pass --resume"),
        (["train", "{data}", "--out", "{tmp}/nothing", "--resume"], "holds no run to resume"),
        (["train", "{data}", "--out", "{tmp}/x", "--model", "flatten", "--native", "32"], "--model flatten needs one fixed input size"),
        (["train", "{data}", "--out", "{tmp}/x", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["train", "{data}", "--out", "{tmp}/x", "--model", "spq"], "unknown model 'spq'"),
        (["train", "{data}", "--out", "{tmp}/x", "--pool", "mean"], "mode must be one of max, avg"),
        (["train", "{data}", "--out", "{tmp}/x", "--size", "4"], "size must be an integer >= 8"),
        (["train", "{data}", "--out", "{tmp}/x", "--progressive", "64"], "--progressive must be LOW:HIGH like 96:128"),
        (["train", "{data}", "--out", "{tmp}/x", "--native-range", "64:32"], "native range 64:32 is empty"),
        (["train", "{data}", "--out", "{tmp}/x", "--progressive", "8:32", "--widths", "8,8,8,8"],
         "progressive 8:32 over 20 epochs: images of 8 px are smaller than the network's stride of 16 px"),
        (["train", "{data}", "--out", "{tmp}/x", "--norm-after-pool"], "--norm-after-pool moves the batch norm after the "
                                                                       "pooling; give --batch-norm too"),
        (["train", "{data}", "--out", "{tmp}/x", "--preset", "magic"], "unknown --preset 'magic'"),
        (["train", "{tmp}/no-such-data", "--out", "{tmp}/x"], "no-such-data: no such folder or archive"),
        (["train", "{data}", "--out", "{tmp}/x", "--store-dir", "{data}/amber/img_000.jpg"], "img_000.jpg: not a folder"),
        (["predict", "{tmp}/no-run", "{data}/amber/img_000.jpg"], "no-run: no such run folder"),
        (["predict", "{run}", "{data}/amber/img_000.jpg", "--top-k", "0"], "--top-k must be an integer >= 1"),
        (["predict", "{run}", "{data}/amber", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["evaluate", "{run}", "--size", "4"], "size must be an integer >= 8"),
        (["evaluate", "{run}", "{tmp}/other"], "other: class folder 'x' is not one of the classes (amber, jade, sky)"),
    ],
)
def test_bad_input_gets_one_clear_line(args, message, trained_run, dataset, tmp_path, capsys):
    make_dataset(tmp_path / "other", {"x": 3, "y": 3}, size=(16, 16))
    fill = {"data": str(dataset), "run": str(trained_run), "tmp": str(tmp_path)}
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    code, err = run_cli([a.format(**fill) for a in args], capsys)
    assert code == 2
    assert err.startswith("sppnet: error: ") and message in err and "\n" not in err
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir() if p.name in before} == before


def test_device_cuda_without_cuda_is_refused(dataset, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(["train", str(dataset), "--out", str(tmp_path / "x"), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA device is available" in err
    assert not (tmp_path / "x").exists()


def test_corrupt_state_and_weights_get_one_line(trained_run, dataset, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / "state.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli(["train", str(dataset), "--out", str(copy), "--resume", "--epochs", "3"], capsys)
    assert code == 2 and "state.pt: cannot read training state" in err
    (copy / "best.safetensors").write_bytes(b"\x00" * 20)
    code, err = run_cli(["predict", str(copy), str(trained_run / "curves.png")], capsys)
    assert code == 2 and "best.safetensors: cannot read weights" in err


def test_resume_before_any_finished_epoch_starts_over(trained_run, dataset, tmp_path):
    # Regression: a kill after history.csv but before state.pt of epoch 1 made --resume fail.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / "state.pt").unlink()
    assert main(["train", str(dataset), "--out", str(copy), "--resume"]) == 0
    assert history_without_seconds(copy) == history_without_seconds(trained_run)


def test_run_made_from_a_relative_path_evaluates_from_elsewhere(dataset, tmp_path, monkeypatch, capsys):
    # Regression: config.json kept the data path as typed, so evaluate from another folder failed.
    monkeypatch.chdir(dataset.parent)
    assert main(["train", dataset.name, "--out", str(tmp_path / "run"), "--epochs", "1", *FAST]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 6


RECIPE_FAST = ["--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def recipe_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 12, "sky": 10}, size=(48, 36), vary=True)


def test_learning_rate_schedules():
    config = TrainConfig(lr=1e-3, epochs=10)
    assert [learning_rate(config, s, 100) for s in (0, 50, 99)] == [1e-3] * 3
    cosine = TrainConfig(lr=1e-3, epochs=10, schedule="cosine", warmup_epochs=2)
    rates = [learning_rate(cosine, s, 100) for s in range(100)]
    assert rates[:20] == pytest.approx([1e-3 * (s + 1) / 20 for s in range(20)])  # linear warm-up
    assert rates[20] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[20:], rates[21:]))  # then decreasing
    assert rates[-1] < 1e-5
    assert rates[60] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))


def test_weight_decay_spares_biases_and_norms():
    model = build_model("spp", batch_norm=True)
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.Adam)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(list(model.parameters()))


def test_preset_run_through_the_cli_with_holdout(recipe_dataset, tmp_path, capsys):
    out = tmp_path / "plus"
    assert main(["train", str(recipe_dataset), "--preset", "best", "--native", "32", "--widths", "8,16,16,16",
                 "--holdout", "0.25", "--split-seed", "7", "--out", str(out), *RECIPE_FAST]) == 0
    printed = capsys.readouterr().out
    assert "held out from the training split" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["preset"] == "best" and config["train"]["batch_norm"] is True
    assert config["train"]["widths"] == [8, 16, 16, 16] and config["train"]["epochs"] == 1
    assert config["data"]["holdout"] == 0.25 and config["data"]["seed"] == 7 and config["train"]["seed"] == 123
    # evaluate validates on the run's own held-out files, with the mirror view the run used
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ds = data_mod.scan(recipe_dataset)
    assert result["count"] == len(data_mod.run_split(ds, 0.2, 7, 0.25)[1])
    assert result["view"].endswith("with mirror images")
    # a run's recipe survives --resume
    assert main(["train", str(recipe_dataset), "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert [r["epoch"] for r in RunFolder(out).read_history()] == [1, 2]
    assert json.loads((out / "config.json").read_text())["train"]["schedule"] == "cosine"


def test_bad_preset_on_the_command_line_gets_one_line(recipe_dataset, tmp_path, capsys):
    assert main(["train", str(recipe_dataset), "--preset", "fastest", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown --preset 'fastest'" in err
    assert not (tmp_path / "r").exists()


def test_bf16_precision_trains_and_records_peak_memory(recipe_dataset, tmp_path):
    out = tmp_path / "bf16"
    assert main(["train", str(recipe_dataset), "--size", "32", "--precision", "bf16", "--out", str(out), *RECIPE_FAST]) == 0
    history = RunFolder(out).read_history()
    assert all(math.isfinite(history[-1][k]) for k in ("loss", "val_loss"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peak_rss_mb"] > 50
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == "bf16"
    weights = RunFolder(out).load_weights("last")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast leaves the weights fp32
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16").validate()

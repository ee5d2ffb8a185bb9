"""Python training people can watch: callbacks with metric dicts, TensorBoard, the console, sizes as keywords."""

import dataclasses
import math

import pytest

from sppnet import TrainConfig, train
from sppnet.train.callbacks import ConsoleReporter, TensorBoard
from sppnet.cli import main
from sppnet.errors import ConfigError
from sppnet.sizing import Native

from conftest import make_dataset

NUMBERS = ("epoch", "epochs", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second",
           "best_epoch", "best_val_accuracy")


def test_callbacks_get_a_dict_of_numbers_each_epoch_and_at_the_end(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"a": 6, "b": 6})
    events = []
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=2, size=32, schedule="cosine", lr=0.01)
    metrics = train(config, callbacks=[events.append])
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and events[-1]["event"] == "end"
    for event in epochs:
        assert all(isinstance(event[k], (int, float)) and math.isfinite(event[k]) for k in NUMBERS)
        assert isinstance(event["val_accuracy"], float) and event["run"] == str(tmp_path / "run")
    assert epochs[0]["lr"] > epochs[1]["lr"]  # the cosine schedule, as the optimiser had it
    assert events[-1]["best"] == metrics["best"] and events[-1]["epochs"] == 2
    # By default train() shows the Keras line of each epoch, without any logging set up.
    assert "Epoch 2/2 - " in capsys.readouterr().out


def test_tensorboard_writes_event_files_under_the_run(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package: pip install 'sppnet[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_dataset(tmp_path / "ds", {"a": 6, "b": 6})
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "2", "--size", "32", "--tensorboard"]) == 0
    logs = run / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in logs.iterdir())
    events = EventAccumulator(str(logs))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/accuracy", "validation/val_accuracy", "validation/val_loss", "train/lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("validation/val_accuracy")] == [1, 2]
    assert "curves" in tags["images"]


def test_tensorboard_missing_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'sppnet\[tensorboard\]'"):
        TensorBoard(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_the_console_reporter_draws_a_bar_only_on_a_terminal(capsys):
    import io

    quiet = io.StringIO()
    reporter = ConsoleReporter(quiet)
    assert not reporter.wants_steps
    reporter.epoch("Epoch 1/1 - 1/1 - 0s")
    assert quiet.getvalue() == "Epoch 1/1 - 1/1 - 0s\n"


@pytest.mark.parametrize("kwargs,policy", [
    (dict(size=64), {"kind": "fixed", "size": 64}),
    (dict(sizes=(180, 224)), {"kind": "multi", "sizes": [180, 224]}),
    (dict(size_range=[180, 224]), {"kind": "range", "low": 180, "high": 224}),
    (dict(native=180), {"kind": "native", "size": 180, "max_aspect": 2.0}),
    (dict(native_range=(96, 192)), {"kind": "native-range", "low": 96, "high": 192, "max_aspect": 2.0}),
    (dict(progressive=(64, 96), epochs=5), {"kind": "progressive", "low": 64, "high": 96, "max_aspect": 2.0,
                                            "epochs": 5}),
    (dict(policy=Native(100)), {"kind": "native", "size": 100, "max_aspect": 2.0}),
])
def test_sizes_are_keywords_of_train_config_as_the_flags_are(kwargs, policy):
    config = TrainConfig(**kwargs)
    assert config.policy == policy
    config.validate()
    assert dataclasses.replace(config, epochs=3).policy == policy  # replace keeps the policy
    assert TrainConfig.from_dict(config.to_dict()).policy == policy


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=Native(100)), "size takes a number or numbers .* a size-policy object goes in policy="),
    (dict(native=True), "native takes a number"),
    (dict(size=64, native=100), "give only one of"),
    (dict(policy=[64]), "policy must be a size policy or its dict"),
    (dict(sizes="a,b"), "--sizes must be comma-separated integers"),
])
def test_wrong_sizes_are_config_errors_not_type_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)

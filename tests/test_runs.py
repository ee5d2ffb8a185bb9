"""runs: the typed, versioned RunConfig, run folders written by sppnet 0.x, checkpoints."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from sppnet.config import TrainConfig
from sppnet.errors import ConfigError, DataError
from sppnet.models import build_model
from sppnet.predict import Predictor
from sppnet.runs import SCHEMA_VERSION, RunConfig, RunFolder

V0 = Path(__file__).resolve().parent / "data" / "run_v0"


@pytest.fixture
def v0_run(tmp_path):
    """A run folder written by sppnet 0.x (a tiny spp model: two conv blocks, native 24)."""
    return Path(shutil.copytree(V0 / "run", tmp_path / "run"))


def test_a_run_folder_written_by_0x_reads_as_schema_0(v0_run):
    config = RunFolder(v0_run).run_config()
    assert config.schema == 0 and "schema" not in json.loads((v0_run / "config.json").read_text())
    assert config.class_names == ("cats", "dogs", "owls")
    assert config.stride == 4 and config.input_size == 24  # two conv blocks: not the study's 8
    assert config.test_view.describe() == "native 24" and config.train.flip_test
    assert config.model.get("widths") == (4, 8) and config.data.val_split == 0.25


@pytest.mark.parametrize("fast_paths", [True, False])
def test_a_run_folder_written_by_0x_predicts_what_0x_predicted(v0_run, fast_paths):
    from sppnet import kernels

    expected = json.loads((V0 / "expected.json").read_text())["probabilities"]
    with kernels.fast_paths(fast_paths):
        predictor = Predictor.from_run(v0_run)
    assert predictor.stride == 4 and predictor.flip
    for name, probs in expected.items():
        got = predictor.predict(V0 / "images" / name).probabilities
        assert got.keys() == probs.keys()
        for cls in probs:
            assert got[cls] == pytest.approx(probs[cls], abs=1e-6), (name, cls)


def test_run_config_round_trips_and_is_written_with_its_schema(tmp_path):
    train = TrainConfig.from_preset("best", data="photos", out=str(tmp_path / "r"))
    model = build_model("spp", num_classes=3, widths=(16, 32, 64, 128), batch_norm=True)
    config = RunConfig.create(train, model.config, ["a", "b", "c"], "/data/photos")
    assert config.stride == 16 and config.input_size == 192 and config.test_view.describe() == "native 192"
    run = RunFolder(tmp_path / "r")
    run.write_run_config(config)
    stored = json.loads(run.file("config.json").read_text())
    assert stored["schema"] == SCHEMA_VERSION and stored["stride"] == 16 and stored["eval_policy"]["kind"] == "native"
    assert run.run_config() == config


@pytest.mark.parametrize("content,match", [
    ([], "expected a JSON object, got list"),
    (None, "expected a JSON object, got NoneType"),
    ({"class_names": ["a"]}, "'model' is missing"),
    ({"model": {"name": "spp"}}, "'class_names' is missing"),
    ({"model": {"name": "spp"}, "class_names": []}, "'class_names' must be a non-empty list"),
    ({"model": {"name": "spp"}, "class_names": ["a"], "input_size": "big"}, "'input_size' must be an integer"),
    ({"model": {"name": "spp"}, "class_names": ["a"], "input_size": 10**9}, "'input_size' must be an integer"),
    ({"model": {"name": "spp"}, "class_names": ["a"], "schema": 99}, "newer sppnet"),
    ({"model": {"name": "spp"}, "class_names": ["a"], "policy": {"kind": "huge"}}, "unknown size policy"),
])
def test_config_json_that_parses_but_is_wrong_names_the_file_and_field(tmp_path, content, match):
    run = RunFolder(tmp_path / "r")
    run.write_json("config.json", content)
    with pytest.raises(DataError, match=match) as err:
        run.run_config()
    assert "config.json" in str(err.value)


def test_check_out_refuses_a_used_folder_and_a_missing_run(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        RunFolder(tmp_path / "file").check_out(resume=False)
    with pytest.raises(ConfigError, match="holds no run to resume"):
        RunFolder(tmp_path / "none").check_out(resume=True)
    RunFolder(tmp_path / "new").check_out(resume=False)


def test_save_epoch_writes_everything_and_state_last(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "r")
    model = build_model("gap", num_classes=2, widths=(4,), hidden=4)
    optimizer = torch.optim.Adam(model.parameters())
    order = []
    for name in ("save_weights", "write_history", "write_json", "save_state"):
        original = getattr(RunFolder, name)
        monkeypatch.setattr(RunFolder, name, lambda self, *a, _o=original, _n=name: order.append(_n) or _o(self, *a))
    best = {"epoch": 0, "val_accuracy": -1.0}
    history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.6, "seconds": 1.0}]
    run.save_epoch(model, optimizer, history, {"ece": 0.1}, best, [10.0], [("x.jpg", "x.jpg: broken")])
    assert order[-1] == "save_state" and best == {"epoch": 1, "val_accuracy": 0.6}
    metrics = run.read_json("metrics.json")
    assert metrics["best"]["epoch"] == 1 and metrics["skipped_files"] == ["x.jpg: broken"]
    assert run.load_state()["epoch"] == 1 and run.file("curves.png").is_file()
    assert set(run.load_weights("best")) == set(model.state_dict())


def test_resume_restores_the_last_finished_epoch_and_ignores_later_rows(tmp_path):
    torch.manual_seed(0)
    run = RunFolder(tmp_path / "r")
    model = build_model("gap", num_classes=2, widths=(4,), hidden=4)
    optimizer = torch.optim.Adam(model.parameters())
    fresh = run.resume(model, optimizer)
    assert fresh.epoch == 0 and fresh.history == [] and fresh.best["epoch"] == 0
    rows = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": v, "seconds": 1.0}
            for e, v in ((1, 0.6), (2, 0.5))]
    best = {"epoch": 0, "val_accuracy": -1.0}
    for e in (1, 2):
        model(torch.rand(2, 3, 8, 8) * 255).sum().backward()
        optimizer.step()
        run.save_epoch(model, optimizer, rows[:e], {}, best, [], [])
    run.write_history(rows + [{**rows[1], "epoch": 3}])  # a row written after the last state.pt
    other = build_model("gap", num_classes=2, widths=(4,), hidden=4)
    other_opt = torch.optim.Adam(other.parameters())
    checkpoint = run.resume(other, other_opt)
    assert checkpoint.epoch == 2 and [r["epoch"] for r in checkpoint.history] == [1, 2]
    assert checkpoint.best == {"epoch": 1, "val_accuracy": 0.6}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == 2

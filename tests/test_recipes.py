"""Training recipes beyond the study: schedules, batch norm, hold-out tuning, mirror views, compare."""

import json
import math

import pytest
import torch

from sppnet import data as data_mod
from sppnet.cli import main
from sppnet.errors import ConfigError
from sppnet.evaluate import mirror, predict_batches
from sppnet.models import build_model
from sppnet.runs import RunFolder
from sppnet.sizing import Native
from sppnet.config import TrainConfig
from sppnet.train import learning_rate, make_optimizer

from conftest import make_dataset

FAST = ["--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
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


def test_batch_norm_model_gives_each_image_of_a_padded_batch_its_own_logits():
    torch.manual_seed(0)
    model = build_model("spp", widths=(8, 16, 16, 32), batch_norm=True).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-1, 1)
    images = [torch.rand(3, 37, 50) * 255, torch.rand(3, 64, 33) * 255]
    padded = torch.zeros(2, 3, 64, 50)
    for k, im in enumerate(images):
        padded[k, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([im.shape[1:] for im in images])
    with torch.no_grad():
        together = model(padded, sizes)
        alone = torch.cat([model(im[None]) for im in images])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_mirror_flips_each_padded_image_within_its_width():
    images = torch.arange(2 * 1 * 2 * 5, dtype=torch.float32).view(2, 1, 2, 5)
    sizes = torch.tensor([[2, 3], [2, 5]])
    images[0, :, :, 3:] = 0
    out = mirror(images, sizes)
    torch.testing.assert_close(out[0, :, :, :3], images[0, :, :, :3].flip(-1))
    assert (out[0, :, :, 3:] == 0).all()
    torch.testing.assert_close(out[1], images[1].flip(-1))
    torch.testing.assert_close(mirror(images), images.flip(-1))


def test_flip_view_averages_the_two_softmaxes(dataset):
    model = build_model("spp", num_classes=3).eval()
    store, _, _ = data_mod.ImageStore.from_dataset(data_mod.scan(dataset).subset(range(6)), Native(32).store_size)
    plain, labels, _ = predict_batches(model, Native(32).batches(store, 4, shuffle=False), torch.device("cpu"))
    both, _, _ = predict_batches(model, Native(32).batches(store, 4, shuffle=False), torch.device("cpu"), flip=True)
    assert both.shape == plain.shape and not torch.allclose(both, plain)
    torch.testing.assert_close(both.sum(1), torch.ones(len(labels)))


def test_holdout_tunes_on_training_files_only(dataset):
    ds = data_mod.scan(dataset)
    train, val = data_mod.run_split(ds, 0.2, 123)
    tune_train, tune_val = data_mod.run_split(ds, 0.2, 123, holdout=0.25)
    assert set(tune_train.paths()) | set(tune_val.paths()) == set(train.paths())
    assert not set(tune_val.paths()) & set(val.paths()) and not set(tune_val.paths()) & set(tune_train.paths())
    assert len(tune_val) == int(0.25 * len(train))


def test_preset_run_through_the_cli_with_holdout(dataset, tmp_path, capsys):
    out = tmp_path / "plus"
    assert main(["train", str(dataset), "--preset", "best", "--native", "32", "--widths", "8,16,16,16",
                 "--holdout", "0.25", "--split-seed", "7", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "held out from the training split" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["preset"] == "best" and config["train"]["batch_norm"] is True
    assert config["train"]["widths"] == [8, 16, 16, 16] and config["train"]["epochs"] == 1
    assert config["data"]["holdout"] == 0.25 and config["data"]["seed"] == 7 and config["train"]["seed"] == 123
    # evaluate validates on the run's own held-out files, with the mirror view the run used
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ds = data_mod.scan(dataset)
    assert result["count"] == len(data_mod.run_split(ds, 0.2, 7, 0.25)[1])
    assert result["view"].endswith("with mirror images")
    # a run's recipe survives --resume
    assert main(["train", str(dataset), "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert [r["epoch"] for r in RunFolder(out).read_history()] == [1, 2]
    assert json.loads((out / "config.json").read_text())["train"]["schedule"] == "cosine"


def test_bad_preset_on_the_command_line_gets_one_line(dataset, tmp_path, capsys):
    assert main(["train", str(dataset), "--preset", "fastest", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown --preset 'fastest'" in err
    assert not (tmp_path / "r").exists()


def test_bf16_precision_trains_and_records_peak_memory(dataset, tmp_path):
    out = tmp_path / "bf16"
    assert main(["train", str(dataset), "--size", "32", "--precision", "bf16", "--out", str(out), *FAST]) == 0
    history = RunFolder(out).read_history()
    assert all(math.isfinite(history[-1][k]) for k in ("loss", "val_loss"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peak_rss_mb"] > 50
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == "bf16"
    weights = RunFolder(out).load_weights("last")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast leaves the weights fp32
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def test_predictor_flip_averages_the_mirror_image():
    from sppnet.predict import Predictor

    torch.manual_seed(0)
    model = build_model("spp", num_classes=3).eval()
    x = torch.rand(1, 3, 40, 56) * 255
    plain = Predictor(model, ["a", "b", "c"], 40).probabilities(x)
    mirrored = Predictor(model, ["a", "b", "c"], 40).probabilities(x.flip(-1))
    both = Predictor(model, ["a", "b", "c"], 40, flip=True).probabilities(x)
    torch.testing.assert_close(both, 0.5 * (plain + mirrored))
    assert not torch.allclose(plain, mirrored)


def test_compare_writes_a_report_with_calibration_and_skips_finished_runs(dataset, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(dataset), "--epochs", "1", "--variants", "spp,spp-noaug", "--limit", "16", "--out", str(out)]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "| ECE (15 bins) |" in report and "when wrong" in report
    rows = [line for line in report.splitlines() if line.startswith("| spp")]
    assert [r.split(" | ")[0] for r in rows] == ["| spp", "| spp-noaug"]
    metrics = json.loads((out / "spp" / "metrics.json").read_text())
    assert f"{metrics['validation']['ece']:.4f}" in rows[0]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    before = (out / "spp" / "state.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished runs are not trained again
    assert (out / "spp" / "state.pt").stat().st_mtime_ns == before
    assert "== spp: 1/1 epochs done" in capsys.readouterr().out

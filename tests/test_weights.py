"""--pretrained FILE: weights from the user's disk, read without running code, matched by key."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sppnet.cli import main
from sppnet.errors import DataError
from sppnet.models import backbone_spp, build_model, load_pretrained, read_state_dict
from sppnet.runs import RunFolder

from conftest import make_dataset


class _RunsCode:
    """Unpickling this would create a file: weights_only must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _features_of(model):
    return {k: v.clone() for k, v in model.features.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module.", "model.backbone.", "features."])
@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested"])
def test_a_state_dict_loads_whatever_prefix_training_code_gave_it(tmp_path, prefix, fmt):
    torch.manual_seed(0)
    source = build_model("spp", widths=(4, 8), hidden=8)
    tensors = {prefix + k: v for k, v in _features_of(source).items()}
    tensors["fc.weight"] = torch.zeros(3, 3)  # the original head: reported unused
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(tensors, path)
    else:
        torch.save({"state_dict": tensors, "epoch": 3} if fmt == "nested" else tensors, path)
    torch.manual_seed(1)
    target = build_model("spp", widths=(4, 8), hidden=8)
    report = load_pretrained(target.features, path)
    assert report.loaded == report.total == len(_features_of(source))
    assert report.unexpected == ["fc.weight"] and report.missing == []
    assert all(torch.equal(target.features.state_dict()[k], v) for k, v in _features_of(source).items())
    assert report.line().startswith(f"Loaded {report.total} of {report.total} backbone tensors from {path}")


def test_a_user_module_gets_its_stride_and_channels_probed():
    backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 10, 3, stride=2, padding=1))
    model = backbone_spp(backbone, num_classes=4, levels=(1, 2)).eval()
    assert build_model(backbone, num_classes=4, levels=(1, 2)).num_features == model.num_features
    assert (model.stride, model.config["channels"], model.num_features) == (4, 10, 50)
    x = torch.rand(2, 3, 37, 51) * 255
    x[1, :, 20:, :] = 0
    with torch.no_grad():
        padded = model(x, torch.tensor([[37, 51], [20, 51]]))
        alone = model(x[1:, :, :20, :])
    torch.testing.assert_close(padded[1:], alone, atol=1e-5, rtol=0)  # exact even where padding would leak
    with pytest.raises(ValueError, match="must map images to a feature map"):
        backbone_spp(nn.Flatten())


def test_freezing_a_backbone_keeps_its_weights_and_batch_norm_statistics():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    model = backbone_spp(backbone, num_classes=2, freeze_backbone=True).train()
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    assert not model.features.training and all(not p.requires_grad for p in model.features.parameters())
    loss = model(torch.rand(4, 3, 16, 16) * 255).sum()
    loss.backward()
    assert all(torch.equal(v, before[k]) for k, v in model.features.state_dict().items())
    assert model.classifier[-1].weight.grad is not None


def _bad_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"x": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-5])
    other = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.bn1.weight": torch.zeros(64)}, other)
    pickled = tmp_path / "evil.pt"
    torch.save({"weights": _RunsCode(tmp_path / "ran")}, pickled)
    folder = tmp_path / "folder"
    folder.mkdir()
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    return {"truncated": (truncated, "not a readable safetensors file"),
            "another architecture": (other, "none of its 2 tensors match the network"),
            "a pickle that runs code": (pickled, "holds more than tensors, refused without running it"),
            "a folder": (folder, "is a folder"),
            "no tensors": (empty, "not a state dict of tensors"),
            "missing": (tmp_path / "nope.safetensors", "no such file")}


@pytest.mark.parametrize("case", ["truncated", "another architecture", "a pickle that runs code", "a folder",
                                  "no tensors", "missing"])
def test_a_bad_pretrained_file_gets_one_line_and_exit_2(tmp_path, capsys, case):
    path, message = _bad_files(tmp_path)[case]
    data = make_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    run = tmp_path / "run"
    code = main(["train", str(data), "--out", str(run), "--epochs", "1", "--size", "32", "--pretrained", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran
    assert not RunFolder(run).file("best.safetensors").exists()


def test_a_tensor_of_another_shape_is_named(tmp_path):
    source = build_model("spp", widths=(4, 8))
    tensors = _features_of(source)
    key = next(iter(tensors))
    tensors[key] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "w.safetensors")
    with pytest.raises(DataError, match=f"tensor '{key}' has shape \\(2, 2\\)"):
        load_pretrained(build_model("spp", widths=(4, 8)).features, tmp_path / "w.safetensors")


def test_read_state_dict_keeps_only_tensors(tmp_path):
    torch.save({"a": torch.ones(2), "step": 7}, tmp_path / "w.pt")
    assert list(read_state_dict(tmp_path / "w.pt")) == ["a"]


def test_pretrained_weights_reach_a_flower_run_and_resume_keeps_the_trained_ones(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", {"a": 6, "b": 6})
    torch.manual_seed(5)
    source = build_model("spp", num_classes=2)
    save_file(_features_of(source), tmp_path / "w.safetensors")
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--size", "32", "--lr", "1e-9", "--pretrained",
            str(tmp_path / "w.safetensors")]
    assert main([*args, "--epochs", "1"]) == 0
    assert "Loaded 6 of 6 backbone tensors" in capsys.readouterr().out
    weights = RunFolder(run).load_weights("last")
    for key, value in _features_of(source).items():  # one step of 1e-9 from the file's weights
        torch.testing.assert_close(weights[f"features.{key}"], value, atol=1e-7, rtol=0)
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert "Loaded" not in capsys.readouterr().out  # the checkpoint holds the weights

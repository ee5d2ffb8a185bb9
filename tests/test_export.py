"""ONNX and TorchScript export with dynamic height and width, checked against PyTorch."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sppnet.cli import main
from sppnet.export import ExportError, OnnxModel, export_onnx, export_torchscript
from sppnet.models import build_model

SIZES = [(8, 8), (37, 53), (180, 180), (240, 320), (333, 500), (1024, 768)]


def model_for(name):
    torch.manual_seed(0)
    kwargs = {"num_classes": 4}
    if name == "flatten":
        kwargs["input_size"] = 64
    return build_model(name, **kwargs).eval()


def sizes_for(model):
    size = model.config.get("input_size")
    return [(size, size)] if size else SIZES


@pytest.fixture(scope="module", params=["spp", "gap", "flatten"])
def exported(request, tmp_path_factory):
    model = model_for(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    export_onnx(model, path, class_names=["a", "b", "c", "d"], input_size=180)
    return model, path


def test_onnx_matches_pytorch_on_any_size(exported):
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for h, w in sizes_for(model):
        for n in (1, 3):
            x = torch.rand(n, 3, h, w, generator=generator) * 255
            logits, probs = session.run(None, {"image": x.numpy()})
            with torch.inference_mode():
                expected = model(x)
            np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{n}x{h}x{w}")
            np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), atol=1e-5)


def test_onnx_graph_keeps_the_declared_layers(exported):
    # Eager CPU inference pools through element-wise maxima; an export must still hold one
    # MaxPool per conv block (and no element-wise Max), the operator runtimes optimise.
    _, path = exported
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("MaxPool") == 3 and "Max" not in ops
    assert ops.count("Conv") == 3


def test_onnx_metadata(exported):
    model, path = exported
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["a", "b", "c", "d"]
    assert int(meta["input_size"]) == (model.config.get("input_size") or 180)
    assert json.loads(meta["model"])["name"] == model.config["name"]


@pytest.mark.parametrize("name", ["spp", "gap", "flatten"])
def test_torchscript_matches_pytorch_on_any_size(name, tmp_path):
    model = model_for(name)
    path = export_torchscript(model, tmp_path / "m.pt", input_size=180)
    loaded = torch.jit.load(str(path))
    for h, w in sizes_for(model):
        for n in (1, 3):
            x = torch.rand(n, 3, h, w) * 255
            with torch.inference_mode():
                torch.testing.assert_close(loaded(x)[0], model(x), atol=1e-4, rtol=1e-4)


def test_cli_export_checks_and_predicts_through_onnx(tmp_path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "ds", {"x": 6, "y": 6}, size=(40, 30))
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--size", "32", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--torchscript", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "largest logit difference" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    image = str(data / "x" / "img_000.jpg")
    assert main(["predict", str(run), image, "--json"]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), image, "--json"]) == 0
    onnx_result = json.loads(capsys.readouterr().out)
    assert onnx_result["class"] == torch_result["class"]
    assert (onnx_result["width"], onnx_result["height"]) == (torch_result["width"], torch_result["height"])
    for k, p in torch_result["probabilities"].items():
        assert onnx_result["probabilities"][k] == pytest.approx(p, abs=1e-5)
    # Many images of several shapes: the ONNX model batches equal shapes only (no padding).
    from sppnet.predict import Predictor

    from conftest import write_image

    paths = [write_image(tmp_path / "many" / f"{k}.png", size=(30 + 10 * (k % 3), 40), seed=k) for k in range(7)]
    onnx_predictor = Predictor.from_onnx(tmp_path / "m.onnx")
    torch_predictor = Predictor.from_run(run)
    for a, b in zip(onnx_predictor.predict_many(paths, batch_size=4), torch_predictor.predict_many(paths)):
        assert (a.width, a.height) == (b.width, b.height)
        for k, p in b.probabilities.items():
            assert a.probabilities[k] == pytest.approx(p, abs=1e-5)


def test_bad_export_input(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["predict", "--onnx", str(tmp_path / "missing.onnx"), "a.jpg"]) == 2
    assert "missing.onnx: no such ONNX file" in capsys.readouterr().err
    not_ours = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),), str(not_ours), dynamo=True)
    with pytest.raises(ExportError, match="not an ONNX model exported by sppnet"):
        OnnxModel(not_ours)
    with pytest.raises(ValueError, match="--opset must be an integer >= 18"):
        export_onnx(model_for("spp"), tmp_path / "x.onnx", opset=11)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx_package_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("no onnx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ExportError, match=r"pip install 'sppnet\[export\]'"):
        export_onnx(model_for("spp"), tmp_path / "m.onnx")


def test_a_calibrated_run_exports_calibrated_probabilities(tmp_path, capsys):
    from conftest import make_dataset, small_calibration
    from sppnet.predict import Predictor
    from sppnet.runs import RunFolder

    data = make_dataset(tmp_path / "ds", {"x": 8, "y": 8}, size=(40, 30))
    run = tmp_path / "run"
    with small_calibration():  # the mechanics, on a few images
        assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--native", "32", "--batch-size", "4",
                     "--calibrate", "0.25"]) == 0
    temperature = RunFolder(run).temperature("best")
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert float(meta["temperature"]) == temperature
    onnx_predictor = Predictor.from_onnx(tmp_path / "m.onnx")
    assert onnx_predictor.model.temperature == temperature
    image = str(data / "x" / "img_000.jpg")
    calibrated = Predictor.from_run(run).predict(image).probabilities
    raw = Predictor(RunFolder(run).load_model(calibrated=False), ["x", "y"], 32).predict(image).probabilities
    assert raw != pytest.approx(calibrated, abs=1e-4)
    assert onnx_predictor.predict(image).probabilities == pytest.approx(calibrated, abs=1e-5)

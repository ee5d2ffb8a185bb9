"""torchvision and timm networks with an SPP head, end to end (the sppnet[backbones] extra).

These run in an environment with torchvision and timm (CI makes one: the README's test command);
elsewhere they skip saying so. Every network here is randomly initialised or loaded from a file
the test writes: nothing is downloaded.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sppnet.cli import main
from sppnet.predict import Predictor
from sppnet.runs import RunFolder

from conftest import make_dataset, write_image

from sppnet.models import BackboneSPP, build_model

pytestmark = pytest.mark.backbones
torchvision = timm = None  # imported by the fixture below: deselected with -m "not backbones", never skipped


@pytest.fixture(scope="module", autouse=True)
def _libraries():
    global torchvision, timm
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision: pip install 'sppnet[backbones]'")
    timm = pytest.importorskip("timm", reason="needs timm: pip install 'sppnet[backbones]'")

SHAPES = [(1, 64, 64), (2, 97, 150), (1, 200, 120), (3, 333, 251)]
TIMM_NET = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 14, "sky": 14},
                        size=(90, 70), vary=True)


def _check_onnx(run, onnx_path):
    ort = pytest.importorskip("onnxruntime")
    model = Predictor.from_run(run).model
    session = ort.InferenceSession(str(onnx_path))
    for n, h, w in SHAPES:
        x = torch.rand(n, 3, h, w) * 255
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3, (n, h, w)


def test_the_issue_check_torchvision_resnet18_from_a_local_file(photos, tmp_path, capsys):
    torch.manual_seed(7)
    source = torchvision.models.resnet18()
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    run = tmp_path / "run"
    assert main(["train", str(photos), "--model", "torchvision:resnet18", "--pretrained", str(weights),
                 "--freeze-backbone", "--epochs", "1", "--limit", "40", "--native", "64", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Loaded 120 of 120 backbone tensors" in out and "2 unused (fc.bias, fc.weight)" in out
    trained = load_file(run / "best.safetensors")
    for key, value in load_file(weights).items():  # weights and batch-norm statistics, untouched
        if not key.startswith("fc.") and value.is_floating_point():
            assert torch.equal(trained[f"features.{key}"], value), key
    config = json.loads((run / "config.json").read_text())
    assert config["stride"] == 32 and config["model"]["channels"] == 512
    assert config["input"]["kind"] == "normalize" and config["input"]["mean"] == [0.485, 0.456, 0.406]

    images = [str(photos / "amber" / "img_000.jpg"), str(photos / "sky" / "img_001.jpg")]
    assert main(["predict", str(run), *images, "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["image"] for a in answers] == images and all(a["class"] in ("amber", "jade", "sky") for a in answers)

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run), "--onnx", str(onnx_path)]) == 0
    _check_onnx(run, onnx_path)


def test_timm_trains_resumes_fine_tunes_and_exports(photos, tmp_path, capsys):
    torch.manual_seed(3)
    source = timm.create_model(TIMM_NET, num_classes=1000)
    weights = tmp_path / "timm.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, weights)
    run = tmp_path / "run"
    common = ["train", str(photos), "--model", f"timm:{TIMM_NET}", "--native", "64", "--out", str(run),
              "--batch-size", "8", "--limit", "24"]
    assert main([*common, "--pretrained", str(weights), "--backbone-lr", "0.1", "--epochs", "1"]) == 0
    assert "Loaded" in capsys.readouterr().out
    first = load_file(run / "last.safetensors")
    # Fine-tuning: the backbone moved, from the file's weights.
    key = next(k for k in first if k.startswith("features.model.conv_stem"))
    original = source.state_dict()[key[len("features.model."):]]
    assert not torch.equal(first[key], original) and torch.allclose(first[key], original, atol=0.05)
    assert main([*common, "--pretrained", str(weights), "--backbone-lr", "0.1", "--epochs", "2", "--resume"]) == 0
    assert len(RunFolder(run).read_history()) == 2
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--torchscript", str(tmp_path / "m.pt")]) == 0
    _check_onnx(run, tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v3_small",
                                  "torchvision:efficientnet_b0", f"timm:{TIMM_NET}"])
def test_a_padded_mixed_size_batch_gives_each_image_its_own_logits(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4).eval()
    sizes = torch.tensor([[97, 150], [150, 120], [150, 150], [97, 150]])
    x = torch.zeros(4, 3, 150, 150)
    for i, (h, w) in enumerate(sizes.tolist()):
        x[i, :, :h, :w] = torch.rand(3, h, w) * 255
    with torch.no_grad():
        padded = model(x, sizes)
        alone = torch.cat([model(x[i:i + 1, :, :h, :w]) for i, (h, w) in enumerate(sizes.tolist())])
        empty = model(x[:0], sizes[:0]), model(x[:0])
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=0)
    assert [tuple(e.shape) for e in empty] == [(0, 4), (0, 4)]


def test_the_probe_finds_each_network_s_stride_and_smallest_side():
    resnet = build_model("torchvision:resnet18")
    assert isinstance(resnet, BackboneSPP) and (resnet.stride, resnet.min_side, resnet.config["channels"]) == (32, 8, 512)
    vgg = build_model("torchvision:vgg11")  # unpadded max pooling: it needs its whole stride
    assert (vgg.stride, vgg.min_side) == (32, 32)
    with pytest.raises(ValueError, match="smaller than the 32 px this network takes"):
        vgg.eval()(torch.rand(1, 3, 20, 40))


def test_unknown_networks_get_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'torchvision:resnet18'"):
        build_model("torchvision:resnet81")
    with pytest.raises(ValueError, match=f"did you mean 'timm:{TIMM_NET}'"):
        build_model(f"timm:{TIMM_NET}x")


def test_pretrained_default_reads_torchvision_s_local_cache_and_never_downloads(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "run"
    args = ["train", str(photos), "--model", "torchvision:resnet18", "--pretrained", "default", "--epochs", "1",
            "--limit", "8", "--native", "40", "--out", str(run), "--freeze-backbone"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not in the local cache" in err and "downloads nothing" in err and len(err.strip().splitlines()) == 1
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(11)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    assert main(args) == 0
    assert f"Loaded 120 of 120 backbone tensors from {cached}" in capsys.readouterr().out


def test_a_state_dict_of_another_network_is_refused_in_one_line(photos, tmp_path, capsys):
    save_file({k: v.contiguous() for k, v in torchvision.models.mobilenet_v3_small().state_dict().items()},
              tmp_path / "mobilenet.safetensors")
    code = main(["train", str(photos), "--model", "torchvision:resnet18", "--pretrained",
                 str(tmp_path / "mobilenet.safetensors"), "--epochs", "1", "--native", "64", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "mobilenet.safetensors" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def backbone_run(photos, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "resnet"
    assert main(["train", str(photos), "--model", "torchvision:resnet18", "--epochs", "1", "--native", "64",
                 "--limit", "16", "--batch-size", "8", "--out", str(run)]) == 0
    return run


def test_explain_and_evaluate_work_on_a_backbone_run(backbone_run, photos, tmp_path, capsys):
    from sppnet.explain import explain

    image = photos / "jade" / "img_002.jpg"
    explanation = explain(Predictor.from_run(backbone_run), str(image))
    width, height = __import__("PIL.Image", fromlist=["Image"]).open(image).size
    assert explanation.heatmap.shape == (height, width) and sorted(explanation.pyramid) == [1, 2, 4]
    assert main(["explain", str(backbone_run), str(image), "--out", str(tmp_path / "ex")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "ex").iterdir())
    capsys.readouterr()
    assert main(["evaluate", str(backbone_run), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


def test_the_service_answers_for_a_backbone_run(backbone_run):
    from fastapi.testclient import TestClient

    from sppnet.serve import create_app

    client = TestClient(create_app(Predictor.from_run(backbone_run)))
    path = write_image(backbone_run.parent / "x.jpg", size=(120, 80))
    answer = client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"}).json()
    assert answer["class"] in ("amber", "jade", "sky") and abs(sum(answer["probabilities"].values()) - 1) < 1e-4
    assert client.post("/explain", content=path.read_bytes(), headers={"content-type": "image/jpeg"}).status_code == 200


def test_two_processes_train_a_backbone_as_one(photos, tmp_path):
    # Frozen, the backbone's batch norms use their running statistics: two ranks compute what one does.
    common = ["--model", "torchvision:resnet18", "--freeze-backbone", "--epochs", "1", "--size", "40", "--batch-size",
              "8", "--limit", "16", "--no-augment", "--dropout", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPPNET_DIST_TIMEOUT": "120"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "sppnet", "train", str(photos), "--out", str(tmp_path / "ddp"), *common],
                         capture_output=True, text=True, timeout=600, env=env)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "sppnet", "train", str(photos), "--out", str(tmp_path / "one"), *common],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = RunFolder(tmp_path / "ddp").load_weights("last"), RunFolder(tmp_path / "one").load_weights("last")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)

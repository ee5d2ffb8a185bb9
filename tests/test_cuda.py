"""The CUDA paths: the same results as on the CPU, and the main job end to end on a GPU.

These run only where PyTorch sees a CUDA device (CI has none; the README's Performance section
says when they last ran on one, and on which).
"""

import json

import pytest
import torch
from conftest import history_without_seconds, make_dataset

from sppnet import spatial_pyramid_pool
from sppnet.augment import Augment
from sppnet.cli import main
from sppnet.predict import Predictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAST = ["--size", "32", "--batch-size", "8", "--device", "cuda"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("data") / "ds",
        {"amber": 12, "jade": 10, "sky": 8},
        size=(48, 36),
        vary=True,
    )


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 8, 23, 31, generator=g)
    sizes = torch.tensor([[23, 31], [5, 9], [17, 4], [1, 1]])
    for i, (h, w) in enumerate(sizes.tolist()):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x, sizes


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_padded_spp_on_cuda_matches_the_cpu_forward_and_backward(mode):
    x, sizes = padded_batch()
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device, copy=True).requires_grad_(True)  # a fresh leaf on each device
        out = spatial_pyramid_pool(xd, (1, 2, 4), mode, sizes.to(device))
        out.backward(torch.arange(out.numel(), dtype=out.dtype, device=device).view_as(out) % 7)
        results.append((out.detach().cpu(), xd.grad.cpu()))
    (out_cpu, grad_cpu), (out_gpu, grad_gpu) = results
    torch.testing.assert_close(out_gpu, out_cpu)
    torch.testing.assert_close(grad_gpu, grad_cpu)


@pytest.mark.parametrize("padded", [True, False])  # explicit reflection / grid_sample's own
def test_augmentation_on_cuda_matches_the_cpu(padded):
    images = torch.rand(6, 3, 40, 56).mul(255)
    sizes = torch.tensor([[40, 56], [40, 30], [21, 56], [40, 56], [10, 12], [33, 47]]) if padded else None
    augment = Augment()
    params = augment.draw(6, torch.Generator().manual_seed(3))
    cpu = augment.apply(images, params, sizes)
    gpu = augment.apply(images.cuda(), params, sizes.cuda() if padded else None).cpu()
    # grid_sample's CUDA kernel rounds differently in the last bits: compare on the 0..255 scale.
    torch.testing.assert_close(gpu, cpu, atol=0.05, rtol=0)


@pytest.mark.parametrize("extra", [[], ["--native", "32"], ["--precision", "bf16"]])
def test_training_on_cuda_writes_a_run_the_cpu_can_use(dataset, tmp_path, extra):
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--epochs", "2", *FAST, *extra]
    if "--native" in extra:  # the size policy is --native instead of --size 32
        args.remove("--size")
        args.remove("32")
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["final"]["loss"] == metrics["final"]["loss"]  # not NaN
    # The weights are stored from the GPU and predict the same on either device.
    image = next(dataset.rglob("*.jpg"))
    on_cpu = Predictor.from_run(out, device="cpu").predict(image)
    on_gpu = Predictor.from_run(out, device="cuda").predict(image)
    assert on_gpu.class_name == on_cpu.class_name
    assert on_gpu.probabilities.keys() == on_cpu.probabilities.keys()
    assert max(abs(on_gpu.probabilities[k] - on_cpu.probabilities[k]) for k in on_cpu.probabilities) < 1e-3
    assert main(["evaluate", str(out), "--device", "cuda"]) == 0


def test_cuda_run_resumes_to_the_same_history_as_an_uninterrupted_one(dataset, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", str(dataset), "--out", str(whole), "--epochs", "2", *FAST]) == 0
    assert main(["train", str(dataset), "--out", str(part), "--epochs", "1", *FAST]) == 0
    assert main(["train", str(dataset), "--out", str(part), "--epochs", "2", "--resume", *FAST]) == 0
    # cuDNN may pick different algorithms in the two runs: equal within 2e-3, not bit for bit.
    assert len(history_without_seconds(part)) == 2
    for a, b in zip(history_without_seconds(part), history_without_seconds(whole)):
        assert a["epoch"] == b["epoch"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=2e-3), key

import math

import pytest
import torch
import torch.nn.functional as F

from sppnet import SpatialPyramidPooling, spatial_pyramid_pool


def brute_force_level(x, n, mode):
    """Level n of the pyramid, one bin at a time, straight from the SPP-net bin rule."""
    height, width = x.shape[-2:]
    level = torch.empty(*x.shape[:2], n, n, dtype=x.dtype)
    for i in range(n):
        r0, r1 = math.floor(i * height / n), math.ceil((i + 1) * height / n)
        for j in range(n):
            c0, c1 = math.floor(j * width / n), math.ceil((j + 1) * width / n)
            region = x[:, :, r0:r1, c0:c1]
            assert region.numel() > 0
            level[:, :, i, j] = region.amax((2, 3)) if mode == "max" else region.mean((2, 3))
    return level.flatten(1)


def pad_batch(images):
    height = max(im.shape[-2] for im in images)
    width = max(im.shape[-1] for im in images)
    batch = torch.zeros(len(images), images[0].shape[0], height, width, dtype=images[0].dtype)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[-2], : im.shape[-1]] = im
    sizes = torch.tensor([list(im.shape[-2:]) for im in images])
    return batch, sizes


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_matches_brute_force_for_every_size(mode):
    gen = torch.Generator().manual_seed(0)
    for height in range(1, 41):
        for width in range(1, 41):
            x = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64)
            full = torch.tensor([[height, width]] * 2)
            by_level = {n: brute_force_level(x, n, mode) for n in (1, 2, 3, 4, 6)}
            for levels in [(1, 2, 4), (6, 3, 2, 1)]:
                expected = torch.cat([by_level[n] for n in levels], 1)
                # Uniform batch (fast path) and the explicit-bin path used for padded batches.
                got = spatial_pyramid_pool(x, levels, mode)
                got_masked = spatial_pyramid_pool(x, levels, mode, sizes=full)
                torch.testing.assert_close(got, expected, msg=f"{levels} {height}x{width}")
                torch.testing.assert_close(got_masked, expected, msg=f"{levels} {height}x{width} sizes")


@pytest.mark.parametrize("mode,pool", [("max", F.adaptive_max_pool2d), ("avg", F.adaptive_avg_pool2d)])
def test_equals_adaptive_pooling_on_uniform_batches(mode, pool):
    x = torch.randn(4, 8, 22, 13)
    expected = torch.cat([pool(x, n).flatten(1) for n in (1, 2, 4)], 1)
    sizes = torch.tensor([[22, 13]] * 4)
    torch.testing.assert_close(spatial_pyramid_pool(x, (1, 2, 4), mode), expected)
    torch.testing.assert_close(spatial_pyramid_pool(x, (1, 2, 4), mode, sizes), expected)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_padded_batch_equals_each_image_alone(mode):
    gen = torch.Generator().manual_seed(1)
    shapes = [(17, 300), (180, 180), (224, 224), (333, 500), (1, 1), (3, 2)]
    # Positive and negative values: zero padding must never win a max or enter a mean.
    images = [torch.randn(5, h, w, generator=gen) - 0.5 for h, w in shapes]
    batch, sizes = pad_batch(images)
    got = spatial_pyramid_pool(batch, (1, 2, 4), mode, sizes)
    for k, im in enumerate(images):
        alone = spatial_pyramid_pool(im[None], (1, 2, 4), mode)
        torch.testing.assert_close(got[k : k + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (22, 22), (64, 33)])
def test_output_length_is_independent_of_input_size(size):
    layer = SpatialPyramidPooling((1, 2, 4))
    out = layer(torch.randn(2, 64, *size))
    assert out.shape == (2, 64 * 21) == (2, layer.output_features(64))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("with_sizes", [False, True])
def test_gradcheck(mode, with_sizes):
    gen = torch.Generator().manual_seed(2)
    # Distinct values so that max has a unique argmax per bin and the gradient is defined.
    x = torch.randperm(2 * 2 * 7 * 5, generator=gen).double().reshape(2, 2, 7, 5) / 10
    x.requires_grad_(True)
    sizes = torch.tensor([[7, 5], [4, 3]]) if with_sizes else None
    assert torch.autograd.gradcheck(lambda t: spatial_pyramid_pool(t, (1, 2, 3), mode, sizes), (x,))


def test_gradient_stays_inside_valid_region():
    x = torch.randn(2, 3, 10, 12, requires_grad=True)
    sizes = torch.tensor([[10, 12], [4, 5]])
    spatial_pyramid_pool(x, (1, 2, 4), "max", sizes).sum().backward()
    assert x.grad[1, :, 4:, :].abs().sum() == 0
    assert x.grad[1, :, :, 5:].abs().sum() == 0
    assert x.grad[1, :, :4, :5].abs().sum() > 0


def test_module_repr_and_features():
    layer = SpatialPyramidPooling([6, 3, 2, 1], mode="avg")
    assert repr(layer) == "SpatialPyramidPooling(levels=(6, 3, 2, 1), mode='avg')"
    assert layer.output_features(256) == 256 * 50


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(levels=()), "levels must not be empty"),
        (dict(levels=(1, 0)), "level must be an integer >= 1, got 0"),
        (dict(levels=(2.5,)), "level must be an integer >= 1, got 2.5"),
        (dict(mode="mean"), "mode must be one of max, avg; got 'mean'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spatial_pyramid_pool(torch.randn(1, 1, 4, 4), **kwargs)
    with pytest.raises(ValueError, match=match):
        SpatialPyramidPooling(**kwargs)


@pytest.mark.parametrize(
    "x,sizes,match",
    [
        (torch.randn(3, 4, 4), None, r"4-D input \(N, C, H, W\), got \(3, 4, 4\)"),
        (torch.randn(1, 1, 0, 4), None, "H, W >= 1"),
        (torch.randn(2, 1, 4, 4), torch.tensor([[4, 4], [0, 3]]), "valid size must be >= 1"),
        (torch.randn(2, 1, 4, 4), torch.tensor([[4, 4], [5, 3]]), "exceed the tensor's height x width 4 x 4"),
        (torch.randn(2, 1, 4, 4), torch.tensor([[4, 4]]), r"shape \(N, 2\) = \(2, 2\)"),
        (torch.randn(1, 1, 4, 4), torch.tensor([[4.0, 4.0]]), "integer tensor"),
    ],
)
def test_bad_input_raises_clear_errors(x, sizes, match):
    with pytest.raises(ValueError, match=match):
        spatial_pyramid_pool(x, (1, 2), "max", sizes)

import math

import pytest
import torch

from sppnet.augment import Augment, AugmentParams


def params(n, flip=False, angle=0.0, zoom=1.0):
    return AugmentParams(torch.full((n,), flip), torch.full((n,), float(angle)), torch.full((n,), float(zoom)))


@pytest.fixture
def batch():
    return torch.randint(0, 256, (2, 3, 12, 12), generator=torch.Generator().manual_seed(0)).float()


def test_identity_flip_and_quarter_turn(batch):
    aug = Augment()
    torch.testing.assert_close(aug.apply(batch, params(2)), batch, atol=0.02, rtol=0)
    torch.testing.assert_close(aug.apply(batch, params(2, flip=True)), batch.flip(-1), atol=0.02, rtol=0)
    # A positive quarter turn turns the picture counter-clockwise, like torch.rot90(k=1).
    torch.testing.assert_close(aug.apply(batch, params(2, angle=math.pi / 2)), batch.rot90(1, (2, 3)), atol=0.02, rtol=0)


def test_zoom_out_fills_by_reflection():
    # One row 0..5: zooming out by 2 about the centre (2.5) samples x_in = 2 * (x - 2.5) + 2.5,
    # i.e. -2.5, -0.5, 1.5, 3.5, 5.5, 7.5, reflected (d c b a | a b c d) into [-0.5, 5.5].
    row = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    out = Augment().apply(row, params(1, zoom=2.0))
    # -2.5 -> 1.5 (halfway 1 and 2), -0.5 -> pixel 0, 1.5, 3.5, 5.5 -> pixel 5, 7.5 -> 3.5
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.5, 0.0, 1.5, 3.5, 5.0, 3.5]))


def test_constant_fill_uses_zeros():
    image = torch.full((1, 1, 6, 6), 100.0)
    out = Augment(fill="constant").apply(image, params(1, zoom=2.0))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 3, 3] == 100


def test_draw_is_reproducible_and_within_range():
    aug = Augment(rotation=0.1, zoom=0.1)
    p = aug.draw(1000, torch.Generator().manual_seed(5))
    q = aug.draw(1000, torch.Generator().manual_seed(5))
    assert torch.equal(p.angle, q.angle) and torch.equal(p.flip, q.flip)
    assert p.angle.abs().max() <= 0.1 * 2 * math.pi and p.angle.abs().max() > 0.9 * 0.2 * math.pi
    assert p.zoom.min() >= 0.9 and p.zoom.max() <= 1.1
    assert 400 < p.flip.sum() < 600
    off = Augment(flip=False, rotation=0, zoom=0).draw(10)
    assert not off.flip.any() and off.angle.eq(0).all() and off.zoom.eq(1).all()


def test_padded_batch_equals_each_image_alone():
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 9, 14, generator=gen) * 255, torch.rand(3, 16, 7, generator=gen) * 255]
    batch = torch.zeros(2, 3, 16, 14)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([[9, 14], [16, 7]])
    for fill in ["reflect", "constant"]:
        aug = Augment(fill=fill)
        p = aug.draw(2, torch.Generator().manual_seed(2))
        p.zoom[:] = torch.tensor([1.1, 0.9])
        out = aug.apply(batch, p, sizes)
        for k, im in enumerate(images):
            one = AugmentParams(p.flip[k : k + 1], p.angle[k : k + 1], p.zoom[k : k + 1])
            alone = aug.apply(im[None], one)[0]
            h, w = im.shape[1:]
            torch.testing.assert_close(out[k, :, :h, :w], alone, atol=1e-3, rtol=1e-4)
            assert out[k, :, h:, :].eq(0).all() and out[k, :, :, w:].eq(0).all()


def test_uint8_input_and_memory_format_are_handled():
    x = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = Augment()(x, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rotation=0.6), r"rotation must be a number of turns in \[0, 0.5\], got 0.6"),
        (dict(zoom=1.0), r"zoom must be a number in \[0, 1\), got 1.0"),
        (dict(fill="mirror"), "fill must be one of reflect, constant; got 'mirror'"),
        (dict(flip="yes"), "flip must be True or False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Augment(**kwargs)

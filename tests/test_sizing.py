import numpy as np
import pytest
import torch

from sppnet.data import ImageStore
from sppnet.sizing import (
    Fixed, Multi, Native, NativeRange, Progressive, Range, padding_overhead, parse_policy, policy_from_config, shrink_each,
)


def store_of(shapes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(1, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    return ImageStore(images, list(range(len(shapes))))


def test_fixed_batches_cover_each_image_once_reshuffled_each_epoch():
    store = store_of([(20, 20)] * 10)
    policy = Fixed(20)
    epochs = [list(policy.batches(store, 4, epoch=e, seed=1)) for e in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [4, 4, 2]
        order = torch.cat([b.indices for b in batches])
        assert sorted(order.tolist()) == list(range(10))
        for b in batches:
            assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 20, 20)
            assert torch.equal(b.labels, b.indices)  # labels follow their images
            assert b.sizes.tolist() == [[20, 20]] * len(b) and not b.padded
    first = torch.cat([b.indices for b in epochs[0]])
    assert not torch.equal(first, torch.cat([b.indices for b in epochs[1]]))
    again = torch.cat([b.indices for b in policy.batches(store, 4, epoch=0, seed=1)])
    assert torch.equal(first, again)
    in_order = torch.cat([b.indices for b in policy.batches(store, 4, shuffle=False)])
    assert in_order.tolist() == list(range(10))


def test_fixed_stores_warped_squares():
    assert Fixed(180).store_size(500, 333) == (180, 180)


def test_multi_cycles_sizes_per_epoch():
    policy = Multi((16, 24))
    assert policy.store_size(50, 30) == (24, 24)
    store = store_of([(24, 24)] * 5)
    shapes = [next(iter(policy.batches(store, 5, epoch=e))).images.shape[-1] for e in range(4)]
    assert shapes == [16, 24, 16, 24]
    batch = next(iter(policy.batches(store, 5, epoch=0)))
    assert batch.images.dtype == torch.uint8 and batch.sizes.tolist() == [[16, 16]] * 5


def test_range_draws_a_reproducible_size_per_epoch():
    policy = Range(10, 20)
    sizes = [policy.epoch_size(e, seed=3) for e in range(30)]
    assert all(10 <= s <= 20 for s in sizes) and len(set(sizes)) > 3
    assert sizes == [policy.epoch_size(e, seed=3) for e in range(30)]
    store = store_of([(20, 20)] * 3)
    batch = next(iter(policy.batches(store, 3, epoch=4, seed=3)))
    assert batch.images.shape[-2:] == (sizes[4], sizes[4])


def test_native_keeps_aspect_ratio_and_caps_the_long_side():
    policy = Native(180)
    assert policy.store_size(500, 333) == (270, 180)
    assert policy.store_size(240, 320) == (180, 240)
    assert policy.store_size(1000, 100) == (360, 36)  # capped at 2 x 180, aspect kept
    assert policy.store_size(20, 10) == (360, 180)


def test_native_batches_pad_with_zeros_and_carry_sizes():
    shapes = [(10, 15), (12, 12), (15, 10), (10, 15), (9, 16), (16, 9), (12, 12)]
    store = store_of(shapes)
    batches = list(Native(12).batches(store, 3, epoch=0, seed=0))
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(7))
    for b in batches:
        assert b.sizes.tolist() == [list(shapes[i]) for i in b.indices.tolist()]
        assert b.images.shape[-2:] == tuple(b.sizes.max(0).values.tolist())
        for k, (h, w) in enumerate(b.sizes.tolist()):
            assert b.images[k, :, h:, :].eq(0).all() and b.images[k, :, :, w:].eq(0).all()
            assert b.images[k, :, :h, :w].ne(0).all()  # the test images have no zero pixel


def test_native_groups_similar_shapes():
    rng = np.random.default_rng(0)
    shapes = [(180, 240), (240, 180), (180, 270), (180, 180)] * 40
    rng.shuffle(shapes)
    store = store_of(shapes)
    train = padding_overhead(Native(180).batches(store, 8, epoch=0, seed=0))
    val = padding_overhead(Native(180).batches(store, 8, shuffle=False))
    assert val == 0.0  # four shapes, 40 of each: whole batches of one shape
    assert train < 0.05


def test_progressive_grows_the_shorter_side_linearly_to_the_last_epoch():
    policy = Progressive(40, 80, epochs=5)
    assert [policy.side(e) for e in range(7)] == [40, 50, 60, 70, 80, 80, 80]  # stays at HIGH after the ramp
    assert Progressive(40, 80, epochs=1).side(0) == 80
    assert policy.store_size(500, 250) == (160, 80)  # stored as native HIGH
    assert policy.test_view() == Native(80) and policy.input_size == 80 and policy.smallest_size == 40
    shapes = [(80, 120), (80, 120), (120, 80), (80, 80), (80, 160)]
    store = store_of(shapes)
    for epoch in range(5):
        side = policy.side(epoch)
        batches = list(policy.batches(store, 5, epoch=epoch, seed=0))
        assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(5))
        for b in batches:
            for k, i in enumerate(b.indices.tolist()):
                h, w = shapes[i]
                expected = [round(h * side / 80), round(w * side / 80)]
                assert b.sizes[k].tolist() == expected and min(expected) == side  # aspect kept
                assert b.images[k, :, : expected[0], : expected[1]].ne(0).all()
                assert b.images[k, :, expected[0]:].eq(0).all() and b.images[k, :, :, expected[1]:].eq(0).all()
            assert b.images.shape[-2:] == tuple(b.sizes.max(0).values.tolist())


def test_native_range_draws_a_reproducible_side_per_batch_and_keeps_aspect():
    policy = NativeRange(40, 80)
    assert policy.store_size(500, 250) == (160, 80)  # stored as native HIGH
    assert policy.test_view() == Native(80) and policy.input_size == 80 and policy.smallest_size == 40
    shapes = [(80, 120), (120, 80), (80, 80), (80, 160)] * 6
    store = store_of(shapes)
    sides = []
    for epoch in range(3):
        batches = list(policy.batches(store, 3, epoch=epoch, seed=5))
        assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(len(shapes)))
        again = list(policy.batches(store, 3, epoch=epoch, seed=5))  # a resumed run draws the same
        for b, b2 in zip(batches, again):
            assert torch.equal(b.images, b2.images) and torch.equal(b.sizes, b2.sizes)
        for b in batches:
            side = int(b.sizes.min())
            assert 40 <= side <= 80
            sides.append(side)
            for k, i in enumerate(b.indices.tolist()):
                h, w = shapes[i]
                expected = [round(h * side / 80), round(w * side / 80)]
                assert b.sizes[k].tolist() == expected  # the batch's one side, each aspect kept
                assert b.images[k, :, expected[0]:].eq(0).all() and b.images[k, :, :, expected[1]:].eq(0).all()
    assert len(set(sides)) > 5  # drawn per batch, not per epoch
    assert NativeRange(40, 40).side(torch.tensor([3]), 0, 0) == 40


def test_native_range_options_and_config():
    policy = parse_policy(native_range="96:192")
    assert policy == NativeRange(96, 192) and policy.describe() == "native range 96:192"
    assert policy_from_config(policy.to_config()) == policy and policy != Native(192)
    for bad, match in [("192:96", "native range 192:96 is empty"), ("96", "--native-range must be LOW:HIGH"),
                       ("4:96", "lower size must be an integer >= 8")]:
        with pytest.raises(ValueError, match=match):
            parse_policy(native_range=bad)


def test_shrink_each_resizes_each_valid_region_alone():
    # Two images of different sizes in one padded batch: each shrunk copy equals the image shrunk on
    # its own, so the zero padding of the smaller one never bleeds into it.
    small = torch.full((1, 3, 20, 30), 200, dtype=torch.uint8)
    large = torch.randint(1, 256, (1, 3, 40, 30), dtype=torch.uint8)
    batch = torch.zeros(2, 3, 40, 30, dtype=torch.uint8)
    batch[0, :, :20, :30], batch[1] = small[0], large[0]
    images, sizes = shrink_each(batch, torch.tensor([[20, 30], [40, 30]]), 0.5)
    assert sizes.tolist() == [[10, 15], [20, 15]] and images.shape == (2, 3, 20, 15)
    assert images[0, :, :10, :15].eq(200).all() and images[0, :, 10:].eq(0).all()
    alone = torch.nn.functional.interpolate(large, size=(20, 15), mode="bilinear", antialias=True)
    assert torch.equal(images[1], alone[0])


def test_progressive_options_and_config():
    policy = parse_policy(progressive="64:96", epochs=14)
    assert policy == Progressive(64, 96, 14) and policy.describe() == "progressive 64:96 over 14 epochs"
    assert policy_from_config(policy.to_config()) == policy
    for bad, match in [("96:64", "progressive sizes 96:64 shrink"), ("64-96", "--progressive must be LOW:HIGH"),
                       ("4:96", "lower size must be an integer >= 8")]:
        with pytest.raises(ValueError, match=match):
            parse_policy(progressive=bad)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        Progressive(64, 96, epochs=0)


@pytest.mark.parametrize("policy", [Fixed(16), Multi((16, 24)), Range(16, 24), Native(16), Progressive(16, 24, 3),
                                    NativeRange(16, 24)])
def test_an_empty_store_makes_no_batches(policy):
    empty = ImageStore([], [])
    for shuffle in (True, False):
        assert policy.index_batches(empty, 4, shuffle=shuffle) == []
        assert list(policy.batches(empty, 4, shuffle=shuffle)) == []
    assert policy.num_batches(empty, 4) == 0


def test_parse_policy_and_config_round_trip():
    assert parse_policy().describe() == "fixed 180"
    for policy in [parse_policy(size=224), parse_policy(sizes="180,224"), parse_policy(size_range="180:224"), parse_policy(native=160)]:
        assert policy_from_config(policy.to_config()).to_config() == policy.to_config()
    assert parse_policy(sizes="180,224").describe() == "multi 180,224"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(size=4), "size must be an integer >= 8"),
        (dict(sizes="180,x"), "--sizes must be comma-separated integers"),
        (dict(size_range="224:180"), "size range 224:180 is empty"),
        (dict(size_range="180-224"), "--size-range must be LOW:HIGH"),
        (dict(size=180, native=180), "give only one of --size, --sizes, --size-range, --native, --progressive, "
                                     "--native-range"),
    ],
)
def test_bad_policy_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        parse_policy(**kwargs)


def test_policies_say_their_stored_size_test_view_and_smallest_side():
    for policy, fixed, view, smallest in [
        (Fixed(96), (96, 96), "fixed 96", 96), (Multi((180, 224)), (224, 224), "fixed 180", 180),
        (Range(150, 200), (200, 200), "fixed 150", 150), (Native(64), None, "native 64", 64),
    ]:
        assert policy.fixed_store_size == fixed and policy.test_view().describe() == view
        assert policy.smallest_size == smallest and policy.input_size == int(view.split()[1])
        if fixed is not None:  # the same size whatever the image's
            assert {policy.store_size(w, h) for w, h in [(1, 1), (4000, 30), (640, 480)]} == {fixed}

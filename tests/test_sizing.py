import numpy as np
import pytest
import torch

from sppnet.data import ImageStore
from sppnet.sizing import Fixed, Multi, Native, Range, padding_overhead, parse_policy, policy_from_config


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


@pytest.mark.parametrize("policy", [Fixed(16), Multi((16, 24)), Range(16, 24), Native(16)])
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
        (dict(size=180, native=180), "give only one of --size, --sizes, --size-range, --native"),
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

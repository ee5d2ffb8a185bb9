"""data.store: the image store in memory or memory-mapped, its placement and size estimate."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sppnet import data
from sppnet.errors import ConfigError
from sppnet.data import store as store_mod
from sppnet.sizing import Fixed
from sppnet.data import ImageStore, load_images, scan

from conftest import write_image

HERE = Path(__file__).resolve().parent




def test_image_store_gathers_padded_channels_last_batches(tmp_path):
    images = [np.full((4, 6, 3), 10, np.uint8), np.full((5, 3, 3), 20, np.uint8)]
    store = ImageStore(images, [0, 1])
    batch, sizes = store.gather(torch.tensor([1, 0]))
    assert batch.shape == (2, 3, 5, 6) and batch.dtype == torch.uint8
    assert sizes.tolist() == [[5, 3], [4, 6]]
    assert batch[0, :, :5, :3].eq(20).all() and batch[0, :, :, 3:].eq(0).all()
    assert batch[1, :, :4, :].eq(10).all() and batch[1, :, 4:, :].eq(0).all()
    uniform = ImageStore([np.zeros((4, 4, 3), np.uint8)] * 3, [0, 1, 2])
    assert uniform.stacked is not None
    out, _ = uniform.gather(torch.tensor([2, 0]))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("vary", [True, False])
def test_store_decoded_into_a_folder_equals_the_in_memory_store(tmp_path, vary):
    rng = np.random.default_rng(1)
    for k in range(7):
        size = (int(rng.integers(20, 50)), int(rng.integers(20, 50))) if vary else (30, 20)
        write_image(tmp_path / "ds" / ("a" if k % 2 else "b") / f"{k}.png", size=size, seed=k)
    (tmp_path / "ds" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = scan(tmp_path / "ds")
    size = (lambda w, h: (w // 2, h // 2)) if vary else None
    memory, kept, failures = ImageStore.from_dataset(dataset, size, workers=1)
    folder = tmp_path / "store"
    folder.mkdir()
    mapped, kept_f, failures_f = ImageStore.from_dataset(dataset, size, workers=2, folder=folder, chunk=3)
    assert kept_f.files == kept.files and len(kept.files) == 7
    assert failures_f == failures and "broken.png" in failures[0][0]
    assert mapped.labels.tolist() == memory.labels.tolist() and mapped.sizes.tolist() == memory.sizes.tolist()
    assert (mapped.stacked is not None) == (not vary) == (memory.stacked is not None)
    order = torch.tensor([6, 0, 3, 1])
    for a, b in zip(mapped.gather(order), memory.gather(order)):
        assert a.equal(b)
    assert mapped.path.parent == folder and mapped.path.name.startswith(".sppnet-decoded-")
    mapped.unlink()  # the name goes, the pages stay mapped
    assert list(folder.iterdir()) == []
    assert mapped.gather(order)[0].equal(memory.gather(order)[0])


def test_images_of_one_stored_size_are_decoded_straight_into_one_array(tmp_path, monkeypatch):
    for k in range(6):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", size=(20 + 3 * k, 30 - k), seed=k)
    for name in ("0_first.png", "3_middle.png"):  # unreadable, among the readable ones
        (tmp_path / "ds" / "a" / name).write_bytes(b"not an image")
    dataset = scan(tmp_path / "ds")

    policy = Fixed(16)

    def no_list(*args, **kwargs):  # the list-then-stack path holds the images twice
        raise AssertionError("decoded into a list instead of straight into one array")

    monkeypatch.setattr(store_mod, "load_images", no_list)
    store, kept, failures = data.build_store(dataset, policy.store_size, policy.fixed_store_size, workers=2)
    monkeypatch.undo()
    size = policy.store_size
    loaded = load_images(dataset.paths(), size, workers=1)
    assert kept.files == [dataset.files[i] for i in loaded.kept] and len(kept) == 6
    assert [f[0] for f in failures] == [f[0] for f in loaded.failures] and len(failures) == 2
    assert store.stacked is not None and store.stacked.shape == (6, 16, 16, 3)
    assert store.stacked.equal(torch.from_numpy(np.stack(loaded.images)))
    assert store.sizes.tolist() == [[16, 16]] * 6 and store.labels.tolist() == kept.labels


def test_decoding_into_a_folder_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    for k in range(4):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", seed=k)
    folder = tmp_path / "store"
    folder.mkdir()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "decode_many", fail)
    with pytest.raises(KeyboardInterrupt):
        ImageStore.from_dataset(scan(tmp_path / "ds"), folder=folder)
    assert list(folder.iterdir()) == []


def test_store_size_estimate_and_available_memory(tmp_path):
    for k in range(10):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", size=(40, 20), seed=k)
    (tmp_path / "ds" / "a" / "z_broken.png").write_bytes(b"not an image")
    dataset = scan(tmp_path / "ds")
    # Fixed target size: the estimate is exact for the readable files, counted over all files.
    assert data.estimate_store_bytes(dataset, lambda w, h: (8, 8)) == 11 * 8 * 8 * 3
    assert data.estimate_store_bytes(dataset) == 11 * 40 * 20 * 3
    assert data.estimate_store_bytes(dataset.subset([])) == 0
    free = data.available_memory()
    assert free is None or free > 0


@pytest.mark.parametrize("cgroup,expected", [
    ({}, 2_048_000),  # no cgroup: the kernel's MemAvailable
    ({"memory.max": "max\n", "memory.current": "5\n"}, 2_048_000),  # v2, no limit
    ({"memory.max": "1500000\n", "memory.current": "500000\n"}, 1_000_000),  # v2: a container's limit
    ({"memory/memory.limit_in_bytes": "900000\n", "memory/memory.usage_in_bytes": "100000\n"}, 800_000),  # v1
    ({"memory.max": "1000\n", "memory.current": "5000\n"}, 0),  # over its limit already
])
def test_available_memory_is_the_smaller_of_the_kernel_and_a_cgroup_limit(monkeypatch, cgroup, expected):
    texts = {"/proc/meminfo": "MemTotal:  9000 kB\nMemAvailable:    2000 kB\n"}
    texts.update({f"/sys/fs/cgroup/{name}": text for name, text in cgroup.items()})

    def read_text(path, *args, **kwargs):
        if str(path) in texts:
            return texts[str(path)]
        raise FileNotFoundError(str(path))

    monkeypatch.setattr(Path, "read_text", read_text)
    assert data.available_memory() == expected


def test_build_store_unlinks_a_mapped_store_unless_asked_to_keep_it(tmp_path):
    for k in range(3):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", size=(20, 10), seed=k)
    dataset = scan(tmp_path / "ds")
    store, kept, _ = data.build_store(dataset, folder=tmp_path / "gone")
    assert list((tmp_path / "gone").iterdir()) == [] and len(store) == 3 == len(kept)
    kept_store, _, _ = data.build_store(dataset, folder=tmp_path / "kept", keep_file=True)
    assert kept_store.path.is_file() and kept_store.gather(torch.tensor([2]))[0].equal(store.gather(torch.tensor([2]))[0])
    kept_store.unlink()


def test_check_store_dir_refuses_a_file_and_creates_a_folder(tmp_path):
    data.check_store_dir(None)
    data.check_store_dir(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--store-dir .*file: not a folder"):
        data.check_store_dir(tmp_path / "file")

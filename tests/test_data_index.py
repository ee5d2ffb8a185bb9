"""data.index: scanning in Keras' order, the Keras-compatible split, the real flower archive."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sppnet import data
from sppnet import data as data_mod
from sppnet.data import DataError, decode_image, load_images, scan, split

from conftest import make_dataset, write_image

HERE = Path(__file__).resolve().parent




# ---------------------------------------------------------------------------------------------
# Scanning and splitting


def test_scan_lists_images_in_keras_order(tmp_path):
    root = tmp_path / "ds"
    for rel in ["b/2.jpg", "b/1.PNG", "b/sub/0.jpeg", "b/a.webp", "a/x.Bmp", "a/y.gif"]:
        write_image(root / rel, fmt={"jpg": "JPEG", "png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}[rel.rsplit(".", 1)[1].lower()])
    (root / "b" / "notes.txt").write_text("not an image")
    write_image(root / "b" / ".hidden.jpg")
    write_image(root / ".cache" / "z.jpg")  # hidden folder: not a class
    write_image(root / "b" / ".thumbs" / "t.jpg")  # hidden subfolder: ignored
    (root / "README.md").write_text("a file at the top is not a class")
    ds = scan(root)
    assert ds.class_names == ["a", "b"]
    assert ds.files == ["a/x.Bmp", "a/y.gif", "b/1.PNG", "b/2.jpg", "b/a.webp", "b/sub/0.jpeg"]
    assert ds.labels == [0, 0, 1, 1, 1, 1]


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        scan(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.jpg")
    with pytest.raises(DataError, match=r"flat: no class subfolders"):
        scan(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no images"):
        scan(tmp_path / "empty")


def test_split_sizes_and_seed(tiny_dataset):
    ds = scan(tiny_dataset)
    train, val = split(ds, 0.2, 123)
    assert (len(train), len(val)) == (12, 3)  # Keras: int(0.2 * 15) = 3 for validation
    assert sorted(train.files + val.files) == sorted(ds.files)
    again_train, _ = split(ds, 0.2, 123)
    assert again_train.files == train.files
    assert split(ds, 0.2, 124)[0].files != train.files
    all_train, no_val = split(ds, 0.0, 123)
    assert len(all_train) == 15 and len(no_val) == 0


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.2", True])
def test_split_rejects_bad_fraction(tiny_dataset, bad):
    with pytest.raises(ValueError, match="val_split must be a number in"):
        split(scan(tiny_dataset), bad)


# ---------------------------------------------------------------------------------------------
# The real flower archive


def test_flowers_class_counts_and_keras_split(flowers_root):
    ds = scan(flowers_root)
    assert ds.class_counts() == {"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}
    train, val = split(ds, 0.2, 123)
    # Reference lists made by Keras' own index_directory + get_training_or_validation_split.
    expected = json.loads((HERE / "data" / "keras_flowers_split_seed123.json").read_text())
    for subset, name in [(train, "training"), (val, "validation")]:
        ref = expected[name]
        assert len(subset) == ref["count"]
        assert subset.files[:3] == ref["first"] and subset.files[-3:] == ref["last"]
        assert hashlib.sha256("\n".join(subset.files).encode()).hexdigest() == ref["sha256"]
        labels = ",".join(map(str, subset.labels))
        assert hashlib.sha256(labels.encode()).hexdigest() == ref["labels_sha256"]


def test_flowers_sample_decodes(flowers_root):
    ds = scan(flowers_root)
    sample = ds.paths()[::367]
    result = load_images(sample, lambda w, h: (180, 180))
    assert not result.failures and len(result.images) == len(sample)
    for image in result.images:
        assert image.shape == (180, 180, 3) and image.dtype == np.uint8 and image.std() > 5
    full = decode_image(sample[0])
    assert full.mode == "RGB" and full.size == data.image_size(sample[0])


RECIPE_FAST = ["--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def recipe_dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", {"amber": 14, "jade": 12, "sky": 10}, size=(48, 36), vary=True)


def test_holdout_tunes_on_training_files_only(recipe_dataset):
    ds = data_mod.scan(recipe_dataset)
    train, val = data_mod.run_split(ds, 0.2, 123)
    tune_train, tune_val = data_mod.run_split(ds, 0.2, 123, holdout=0.25)
    assert set(tune_train.paths()) | set(tune_val.paths()) == set(train.paths())
    assert not set(tune_val.paths()) & set(val.paths()) and not set(tune_val.paths()) & set(tune_train.paths())
    assert len(tune_val) == int(0.25 * len(train))

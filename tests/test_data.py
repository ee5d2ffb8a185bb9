import hashlib
import http.server
import io
import json
import logging
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet import data
from sppnet.data import DataError, ImageStore, decode_image, extract_archive, load_images, locate, scan, split

from conftest import write_image

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


# ---------------------------------------------------------------------------------------------
# Decoding


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left of the stored picture
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = np.asarray(decode_image(path))
    assert image.shape == (40, 20, 3)  # upright: portrait
    assert image[:8].mean() > 200 and image[-8:].mean() < 50  # the band is now on top
    assert data.image_size(path) == (20, 40)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (9, 7), 128),
        lambda: Image.new("1", (9, 7), 1),
        lambda: Image.new("CMYK", (9, 7), (0, 0, 0, 0)),
        lambda: Image.new("RGB", (9, 7), (1, 2, 3)).convert("P"),
        lambda: Image.new("I;16", (9, 7), 65535),
        lambda: Image.new("I", (9, 7), 65535),
    ],
)
def test_any_mode_becomes_rgb_uint8(tmp_path, make):
    image = make()
    path = tmp_path / ("x.tiff" if image.mode in ("CMYK", "I") else "x.png")
    image.save(path)
    out = np.asarray(decode_image(path))
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    out = np.asarray(decode_image(path))
    assert out[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    image = Image.new(mode, (4, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    path = tmp_path / "clear.png"
    image.save(path)
    assert np.asarray(decode_image(path)).min() == 255


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert np.asarray(decode_image(path)).min() == 255


def test_cmyk_jpeg_decodes(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)  # red
    red = np.asarray(decode_image(path)).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def _bad_files(tmp_path):
    good = write_image(tmp_path / "good.jpg", (64, 48))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("this is not a picture")
    return good, {"truncated": truncated, "zero": zero, "text": text}


def test_bad_files_raise_one_clear_error(tmp_path):
    _, bad = _bad_files(tmp_path)
    with pytest.raises(DataError, match=r"truncated.jpg: cannot decode image \(image file is truncated"):
        decode_image(bad["truncated"])
    with pytest.raises(DataError, match="zero.jpg: not an image"):
        decode_image(bad["zero"])
    with pytest.raises(DataError, match="text.png: not an image"):
        decode_image(bad["text"])
    with pytest.raises(DataError, match="missing.jpg: no such file"):
        decode_image(tmp_path / "missing.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(path)  # 72 megapixels in a few kB
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"bomb.png: image of 9000x8000 pixels is larger than the limit of 64,000,000"):
        decode_image(path)
    with pytest.raises(DataError, match="larger than the limit of 100 pixels"):
        decode_image(write_image(tmp_path / "small.png", (20, 20)), max_pixels=100)


def test_load_images_skips_and_lists_bad_files(tmp_path, caplog):
    good, bad = _bad_files(tmp_path)
    paths = [good, bad["truncated"], good, bad["zero"], bad["text"]]
    with caplog.at_level(logging.WARNING, logger="sppnet.data"):
        result = load_images(paths, lambda w, h: (16, 16), workers=2)
    assert result.kept == [0, 2]
    assert [Path(p).name for p, _ in result.failures] == ["truncated.jpg", "zero.jpg", "text.png"]
    assert "skipped 3 unreadable image file(s)" in caplog.text
    assert "truncated.jpg" in caplog.text


def test_draft_decoding_keeps_at_least_the_target_size(tmp_path):
    path = write_image(tmp_path / "big.jpg", (800, 600))
    image = decode_image(path, lambda w, h: (180, 135))
    assert image.size == (180, 135)
    # The draft-decoded, resized image stays close to a full decode resized the same way.
    full = decode_image(path).resize((180, 135), Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(image, np.int16) - np.asarray(full, np.int16)).mean() < 12


def test_image_store_gathers_padded_channels_last_batches(tmp_path):
    images = [np.full((4, 6, 3), 10, np.uint8), np.full((5, 3, 3), 20, np.uint8)]
    store = ImageStore(images, [0, 1])
    batch, sizes = store.gather(data.torch.tensor([1, 0]))
    assert batch.shape == (2, 3, 5, 6) and batch.dtype == data.torch.uint8
    assert sizes.tolist() == [[5, 3], [4, 6]]
    assert batch[0, :, :5, :3].eq(20).all() and batch[0, :, :, 3:].eq(0).all()
    assert batch[1, :, :4, :].eq(10).all() and batch[1, :, 4:, :].eq(0).all()
    uniform = ImageStore([np.zeros((4, 4, 3), np.uint8)] * 3, [0, 1, 2])
    assert uniform.stacked is not None
    out, _ = uniform.gather(data.torch.tensor([2, 0]))
    assert out.is_contiguous(memory_format=data.torch.channels_last)


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
    order = data.torch.tensor([6, 0, 3, 1])
    for a, b in zip(mapped.gather(order), memory.gather(order)):
        assert a.equal(b)
    assert mapped.path.parent == folder and mapped.path.name.startswith(".sppnet-decoded-")
    mapped.unlink()  # the name goes, the pages stay mapped
    assert list(folder.iterdir()) == []
    assert mapped.gather(order)[0].equal(memory.gather(order)[0])


def test_images_of_one_stored_size_are_decoded_straight_into_one_array(tmp_path):
    for k in range(6):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", size=(20 + 3 * k, 30 - k), seed=k)
    for name in ("0_first.png", "3_middle.png"):  # unreadable, among the readable ones
        (tmp_path / "ds" / "a" / name).write_bytes(b"not an image")
    dataset = scan(tmp_path / "ds")

    def size(w, h):  # a fixed policy's target size
        return 16, 12

    store, kept, failures = ImageStore.from_dataset(dataset, size, workers=2)
    loaded = load_images(dataset.paths(), size, workers=1)
    assert kept.files == [dataset.files[i] for i in loaded.kept] and len(kept) == 6
    assert [f[0] for f in failures] == [f[0] for f in loaded.failures] and len(failures) == 2
    assert store.stacked is not None and store.stacked.shape == (6, 12, 16, 3)
    assert store.stacked.equal(data.torch.from_numpy(np.stack(loaded.images)))
    assert store.sizes.tolist() == [[12, 16]] * 6 and store.labels.tolist() == kept.labels


def test_decoding_into_a_folder_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    for k in range(4):
        write_image(tmp_path / "ds" / "a" / f"{k}.png", seed=k)
    folder = tmp_path / "store"
    folder.mkdir()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_decode_many", fail)
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


# ---------------------------------------------------------------------------------------------
# Locating, extracting, downloading


def _tar_of(folder: Path, dest: Path, arcname="photos") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return dest


def test_locate_folder_and_archives(tiny_dataset, tmp_path):
    assert locate(tiny_dataset, cache=tmp_path / "c") == tiny_dataset
    tgz = _tar_of(tiny_dataset, tmp_path / "tiny.tgz")
    root = locate(tgz, cache=tmp_path / "c")
    assert root.name == "photos" and scan(root).files == scan(tiny_dataset).files
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(tiny_dataset.rglob("*.jpg")):
            zf.write(f, f"wrap/{f.relative_to(tiny_dataset).as_posix()}")
    assert scan(locate(zpath, cache=tmp_path / "c")).files == scan(tiny_dataset).files


def test_archive_is_extracted_once(tiny_dataset, tmp_path, monkeypatch):
    tgz = _tar_of(tiny_dataset, tmp_path / "tiny.tgz")
    first = locate(tgz, cache=tmp_path / "c")
    monkeypatch.setattr(data, "_extract_tar", lambda *a: pytest.fail("extracted twice"))
    assert locate(tgz, cache=tmp_path / "c") == first


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPPNET_HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home"
    monkeypatch.delenv("SPPNET_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "sppnet"


def _hostile_tars(tmp_path):
    def tar_with(name, build):
        path = tmp_path / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            build(tar)
        return path

    def add_file(tar, name, payload=b"x"):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    def add_special(tar, name, kind, target=""):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return {
        "absolute path": tar_with("abs", lambda t: add_file(t, "/tmp/evil.jpg")),
        "leaves the target": tar_with("dotdot", lambda t: add_file(t, "a/../../evil.jpg")),
        "link": tar_with("sym", lambda t: add_special(t, "a/link.jpg", tarfile.SYMTYPE, "/etc/passwd")),
        "link 'a/hard.jpg'": tar_with("hard", lambda t: (add_file(t, "a/ok.jpg"), add_special(t, "a/hard.jpg", tarfile.LNKTYPE, "a/ok.jpg"))),
        "special file": tar_with("dev", lambda t: add_special(t, "a/dev", tarfile.CHRTYPE)),
    }


@pytest.mark.parametrize("problem", ["absolute path", "leaves the target", "link", "link 'a/hard.jpg'", "special file"])
def test_hostile_tar_archives_are_refused(tmp_path, problem):
    archive = _hostile_tars(tmp_path)[problem]
    cache = tmp_path / "cache"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=problem):
        extract_archive(archive, cache)
    # Nothing extracted anywhere: no dataset folder, no leftover temporary folder, no escaped file.
    assert list((cache / "datasets").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["cache"])
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_hostile_zip_archives_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("a/ok.jpg", b"x")
        zf.writestr("../escape.jpg", b"x")
    with pytest.raises(DataError, match="leaves the target folder: '../escape.jpg'"):
        extract_archive(evil, tmp_path / "cache")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("a/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="refusing to extract link 'a/link.jpg'"):
        extract_archive(link, tmp_path / "cache")
    assert not (tmp_path / "escape.jpg").exists()
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_corrupt_archive_gives_one_line(tmp_path):
    bad = tmp_path / "broken.tgz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataError, match="broken.tgz: cannot read archive"):
        locate(bad, cache=tmp_path / "c")


class _Server:
    """Serves files from a folder on 127.0.0.1, counting requests."""

    def __init__(self, folder: Path):
        self.hits = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(folder), **k)

            def do_GET(self):
                outer.hits += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_archive(tiny_dataset, tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    archive = _tar_of(tiny_dataset, folder / "flower_photos.tgz", arcname="flower_photos")
    blob = archive.read_bytes()
    (folder / "truncated.tgz").write_bytes(blob[: len(blob) // 2])
    server = _Server(folder)
    yield server, blob
    server.close()


def _remote(url, blob, **changes):
    fields = dict(url=url, size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), filename="flower_photos.tgz")
    fields.update(changes)
    return data.RemoteArchive(**fields)


def test_download_verifies_and_caches(served_archive, tmp_path, monkeypatch):
    server, blob = served_archive
    monkeypatch.setitem(data.KNOWN_DATASETS, "flowers", _remote(f"{server.url}/flower_photos.tgz", blob))
    seen = []
    root = locate("flowers", cache=tmp_path / "cache", progress=lambda done, total: seen.append((done, total)))
    assert scan(root).class_names == ["cats", "dogs", "owls"]
    assert seen[-1] == (len(blob), len(blob))
    assert (tmp_path / "cache" / "downloads" / "flower_photos.tgz").read_bytes() == blob
    assert locate("flowers", cache=tmp_path / "cache") == root
    assert server.hits == 1  # the second call used the cache


def test_truncated_download_is_deleted(served_archive, tmp_path):
    server, blob = served_archive
    dest = tmp_path / "dl" / "flower_photos.tgz"
    with pytest.raises(DataError, match=rf"is {len(blob) // 2:,} bytes, expected {len(blob):,}"):
        data.download(_remote(f"{server.url}/truncated.tgz", blob), dest)
    assert list(dest.parent.iterdir()) == []


def test_wrong_checksum_download_is_deleted(served_archive, tmp_path):
    server, blob = served_archive
    dest = tmp_path / "dl" / "flower_photos.tgz"
    with pytest.raises(DataError, match="has sha256 .* expected 0000"):
        data.download(_remote(f"{server.url}/flower_photos.tgz", blob, sha256="0" * 64), dest)
    assert list(dest.parent.iterdir()) == []


def test_offline_flowers_says_to_pass_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(data.KNOWN_DATASETS, "flowers", data.RemoteArchive("http://127.0.0.1:9/none.tgz", 10, "0" * 64, "f.tgz"))
    with pytest.raises(DataError, match="could not download .*pass a local archive or folder instead"):
        locate("flowers", cache=tmp_path / "cache")
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []

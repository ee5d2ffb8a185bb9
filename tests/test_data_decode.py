"""data.decode: any image file to upright RGB uint8, bad files reported, not raised."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet import data
from sppnet.data import DataError, decode_image, load_images

from conftest import write_image

HERE = Path(__file__).resolve().parent




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
    with caplog.at_level(logging.WARNING, logger="sppnet.data.decode"):
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

"""Decoding: any image file to upright RGB uint8, with limits, many files in parallel.

:func:`decode_image` turns one file (or its bytes) into an RGB PIL image: EXIF orientation
applied, grey, palette, CMYK and 16-bit images converted, transparency composited on white,
decompression bombs refused. :func:`decode_many` decodes many files in threads and reports the
unreadable ones instead of raising.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

log = logging.getLogger(__name__)

__all__ = ["MAX_PIXELS", "decode_image", "LoadResult", "load_images", "decode_many", "upright_size", "image_size"]

#: Largest image, in pixels, that sppnet decodes (about 8,000 x 8,000). Larger files are treated as
#: decompression bombs: skipped in training, an error in prediction.
MAX_PIXELS = 64_000_000

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency composited on white, 16-bit scaled to 8."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits (PIL's own convert would clip at 255).
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    path: str | os.PathLike | bytes,
    target_size: Callable[[int, int], tuple[int, int]] | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decodes an image file (or the bytes of one) to an upright RGB (8 bits a channel) PIL image.

    EXIF orientation is applied; grey, palette, CMYK and 16-bit images become RGB; transparent
    ones are composited on white.

    Args:
        path: the image file, or its content as bytes.
        target_size: maps the upright (width, height) to the (width, height) to return; the image
            is resized bilinearly (with antialiasing) to it. JPEGs are then decoded at a reduced
            scale (draft mode) when that still leaves at least the target size: much faster.
            Default: keep the decoded size.
        max_pixels: larger images are refused as decompression bombs. Default :data:`MAX_PIXELS`.
        name: how messages name the image (default: the path; ``<bytes>`` for bytes).

    Raises:
        DataError: naming the file: missing, unreadable, truncated, not an image, or too large.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        source = io.BytesIO(path)
    else:
        source = Path(path)
        check_regular_file(source, name)
    path = name or (source if isinstance(source, Path) else "<bytes>")  # how messages name it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise DataError(
                        f"{path}: image of {width}x{height} pixels is larger than the limit of "
                        f"{max_pixels:,} pixels (possible decompression bomb)"
                    )
                target = None
                if target_size is not None:
                    upright = upright_size(img)
                    target = target_size(*upright)
                    if img.format == "JPEG":
                        swapped = upright != (width, height)
                        img.draft("RGB", target[::-1] if swapped else target)
                img.load()
                img = _to_rgb(ImageOps.exif_transpose(img))
                if target is not None and img.size != tuple(target):
                    img = img.resize(tuple(target), Image.Resampling.BILINEAR)
                return img
    except DataError:
        raise
    except Exception as err:  # Pillow raises many types (warnings made errors too): all are bad files
        raise _bad_file(path, err, "cannot decode image") from None


def _bad_file(path, err: BaseException, doing: str) -> DataError:
    """The one line an unreadable image file gets, whatever Pillow raised."""
    if isinstance(err, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if isinstance(err, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image")
    if isinstance(err, UnidentifiedImageError):
        return DataError(f"{path}: not an image (or a format sppnet cannot read)")
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(f"{path}: image too large (possible decompression bomb)")
    if isinstance(err, MemoryError):
        return DataError(f"{path}: image too large to decode in the memory available")
    if isinstance(err, (OSError, SyntaxError, ValueError, EOFError, TypeError)):
        return DataError(f"{path}: {doing} ({err})")
    return DataError(f"{path}: {doing} ({type(err).__name__}: {err})")


@dataclass
class LoadResult:
    """Decoded images and the files that could not be decoded.

    Attributes:
        images: one uint8 array (H, W, 3) per readable file, in input order.
        kept: indices (into the input) of the readable files.
        failures: (path, reason) of each unreadable file.
        own_sizes: the upright (width, height) of each readable file before resizing, in the
            order of ``images`` (what the file itself holds).
    """

    images: list[np.ndarray]
    kept: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)
    own_sizes: list[tuple[int, int]] = field(default_factory=list)


def load_images(
    paths: Sequence[str | os.PathLike],
    target_size: Callable[[int, int], tuple[int, int]] | None = None,
    workers: int | None = None,
) -> LoadResult:
    """Decodes many images in parallel, resizing each as it is decoded.

    Args:
        paths: image files.
        target_size: maps an image's (width, height) to the (width, height) to store; None keeps
            the decoded size. Resizing is bilinear with antialiasing.
        workers: decoding threads (PIL releases the GIL while decoding). Default: CPU count.

    Returns:
        A :class:`LoadResult`; unreadable files are listed there, with a warning each, not raised.
    """

    out = decode_many(paths, target_size, workers)
    if out.failures:
        log.warning("skipped %d unreadable image file(s)", len(out.failures))
    return out


def decode_many(paths: Sequence[str | os.PathLike], target_size: Callable[[int, int], tuple[int, int]] | None = None,
                workers: int | None = None, into: np.ndarray | None = None, warn: bool = True) -> LoadResult:
    """:func:`load_images` without the closing count (with ``warn``, a warning per unreadable
    file). With ``into``, an (N, H, W, 3) array of the one size ``target_size`` gives every
    image, each image is decoded straight into its row, and ``images`` holds those rows."""

    own: list[tuple[int, int] | None] = [None] * len(paths)

    def one(i: int) -> np.ndarray | DataError:
        def target(width: int, height: int) -> tuple[int, int]:
            own[i] = (width, height)  # the file's own size, seen once while decoding
            return target_size(width, height)

        try:
            image = decode_image(paths[i], target if target_size is not None else None)
        except DataError as err:
            return err
        if own[i] is None:
            own[i] = image.size
        if into is None:
            return np.array(image)  # writable, for torch.from_numpy
        into[i] = np.asarray(image)
        return into[i]

    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, range(len(paths))))
    else:
        results = [one(i) for i in range(len(paths))]
    out = LoadResult([], [], [])
    for i, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, DataError):
            if warn:
                log.warning("skipping %s", result)
            out.failures.append((str(path), str(result)))
        else:
            out.images.append(result)
            out.kept.append(i)
            out.own_sizes.append(own[i])
    return out


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: decoding will report the file if it matters
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_regular_file(path: str | os.PathLike, name: str | None = None) -> None:
    """Refuses a FIFO, a device or a socket named like an image before anything opens it (reading
    one would wait forever or never end); a missing file is left to the opener to report.

    Raises:
        DataError: naming the file and what it is.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
        raise DataError(f"{name or path}: is {kind}, not an image file; skipped")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file after EXIF orientation, from its header.

    Raises:
        DataError: the file is not a readable image.
    """
    check_regular_file(path)
    try:
        with Image.open(path) as img:
            return upright_size(img)
    except Exception as err:  # Pillow raises many types: all are bad files
        raise _bad_file(path, err, "cannot read image header") from None

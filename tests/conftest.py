"""Shared fixtures: tiny image datasets made in tmp_path, and the real flower archive."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLOWERS_ARCHIVE = ROOT.parent / "shared" / "datasets" / "flower_photos.tgz"


@contextlib.contextmanager
def small_calibration():
    """Lets --calibrate fit a temperature on a few images (the tests' datasets are tiny)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sppnet.calibration.MIN_IMAGES", 1)
        patch.setattr("sppnet.calibration.MIN_PER_CLASS", 0)
        yield


def write_image(path: Path, size=(32, 24), color=None, fmt=None, seed=0) -> Path:
    """Writes an RGB image of the given (width, height) with random pixels (or one colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", size, color)
    image.save(path, format=fmt)
    return path


def history_without_seconds(run) -> list[dict]:
    """A run folder's history without the timing column, for comparing runs."""
    from sppnet.runs import RunFolder

    return [{k: v for k, v in row.items() if k != "seconds"} for row in RunFolder(run).read_history()]


def make_dataset(root: Path, classes: dict[str, int], size=(40, 30), vary=False) -> Path:
    """root/<class>/img_<k>.jpg with a distinct colour per class (learnable) plus noise."""
    palette = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 30), (200, 40, 200)]
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        for k in range(count):
            w, h = size
            if vary:
                w, h = int(rng.integers(size[0] // 2, size[0] * 2)), int(rng.integers(size[1] // 2, size[1] * 2))
            base = np.array(palette[c % len(palette)], dtype=np.int16)
            noise = rng.integers(-30, 30, (h, w, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = root / name / f"img_{k:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny", {"cats": 6, "dogs": 5, "owls": 4})


@pytest.fixture(scope="session")
def flowers_root(tmp_path_factory) -> Path:
    """The real flower photos, extracted once per test session into a temporary cache."""
    if not FLOWERS_ARCHIVE.is_file():
        pytest.skip(f"needs the flower photos: put flower_photos.tgz at {FLOWERS_ARCHIVE} (the project's shared "
                    "datasets folder; DESIGN.md gives the official archive's address and sha256)")
    from sppnet.data import locate

    return locate(FLOWERS_ARCHIVE, cache=tmp_path_factory.mktemp("cache"))

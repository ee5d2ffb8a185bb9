"""The index of a dataset: its image files, their labels, and the Keras-compatible split.

:func:`scan` lists the images of a folder of class subfolders in Keras' order; :func:`split`
makes the same training/validation split as Keras' ``image_dataset_from_directory``;
:func:`run_split` adds the hold-out used for tuning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "Dataset", "is_image_name", "scan", "split", "run_split", "expand_images"]

#: File endings read as images (any case). Keras reads the same, without webp.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

@dataclass
class Dataset:
    """Image files with integer labels.

    Attributes:
        root: the folder holding the class subfolders.
        files: image paths relative to ``root`` (POSIX style), in dataset order.
        labels: class index of each file.
        class_names: sorted class (subfolder) names.
    """

    root: Path
    files: list[str]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    def subset(self, indices: Sequence[int]) -> "Dataset":
        return Dataset(self.root, [self.files[i] for i in indices], [self.labels[i] for i in indices], self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def is_image_name(name: str) -> bool:
    """A file name sppnet reads as an image: not hidden, with an image ending."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan(root: str | os.PathLike) -> Dataset:
    """Lists the images of a folder of class subfolders in Keras' order.

    Class names are the sorted names of the non-hidden subfolders. Within a class, files are
    listed folder by folder (folders sorted by path), names sorted, as Keras' ``index_directory``
    does; hidden files and folders and files that are not images are ignored.

    Raises:
        DataError: no such folder, no class subfolders, or no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise DataError(f"{root}: no class subfolders; expected {root}/<class name>/<image files>")
    files, labels = [], []
    for label, name in enumerate(class_names):
        walked = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            walked.append((dirpath, sorted(f for f in filenames if is_image_name(f))))
        for dirpath, names in sorted(walked, key=lambda item: item[0]):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            files += [f"{rel_dir}/{f}" for f in names]
            labels += [label] * len(names)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders")
    return Dataset(root, files, labels, class_names)


def split(dataset: Dataset, val_split: float = 0.2, seed: int = 123) -> tuple[Dataset, Dataset]:
    """Splits like Keras' ``image_dataset_from_directory(validation_split, subset, seed)``.

    Keras shuffles the whole file list with ``np.random.RandomState(seed)`` and takes the last
    ``int(val_split * n)`` files for validation; so does this.

    Args:
        val_split: fraction for validation, in [0, 1). Default 0.2.
        seed: shuffle seed. Default 123, the study's.

    Returns:
        (training, validation) datasets, each in Keras' order.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0 <= val_split < 1:
        raise ConfigError(f"val_split must be a number in [0, 1), got {val_split!r}")
    order = list(range(len(dataset)))
    np.random.RandomState(seed).shuffle(order)
    n_val = int(val_split * len(order))
    if n_val == 0:
        return dataset.subset(order), dataset.subset([])
    return dataset.subset(order[:-n_val]), dataset.subset(order[-n_val:])


def run_split(dataset: Dataset, val_split: float = 0.2, seed: int = 123, holdout: float = 0.0) -> tuple[Dataset, Dataset]:
    """The (training, validation) sets of a run: :func:`split`, then with ``holdout`` > 0 the
    training set split again (seed + 1) so that tuning validates on a part of the training files
    and never sees the validation split."""
    train, val = split(dataset, val_split, seed)
    if holdout:
        train, val = split(train, holdout, seed + 1)
    return train, val




def expand_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
        else:
            out.append(p)
    return out

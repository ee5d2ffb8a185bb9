"""The index of a dataset: its image files, their labels, and the Keras-compatible split.

:func:`scan` lists the images of a folder of class subfolders in Keras' order; :func:`split`
makes the same training/validation split as Keras' ``image_dataset_from_directory``;
:func:`run_split` adds the hold-out used for tuning.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_DEPTH", "Dataset", "is_image_name", "walk_images", "scan", "split", "run_split", "calibration_split",
    "expand_images", "split_layout", "run_sets", "RunSets", "SPLIT_FOLDERS", "shown",
]

#: The largest seed a split takes (NumPy's RandomState, as Keras, takes 32-bit seeds).
MAX_SEED = 2**32 - 1

#: File endings read as images (any case). Keras reads the same, without webp.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

#: Folders more than this many levels below a class folder (or a folder given to predict) are not
#: searched: a bound on the walk, so that a pathological tree cannot exhaust the stack or the time.
MAX_DEPTH = 32

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


def shown(name: str) -> str:
    """A class name as printed: control and format characters (newlines, bidi overrides) escaped
    as ``\\uXXXX``, so that a folder name cannot rewrite the line it is printed on."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in name)


def is_image_name(name: str) -> bool:
    """A file name sppnet reads as an image: not hidden, with an image ending."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_images(folder: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[tuple[str, list[str]]]:
    """The image files under ``folder``, folder by folder: ``(folder path, sorted image names)``
    for ``folder`` and each non-hidden subfolder down to ``max_depth`` levels, sorted by path.

    Iterative (no recursion, whatever the depth); symbolic links to folders are listed but not
    followed, as ``os.walk`` does. Deeper folders and unreadable ones are skipped with a warning.
    """
    found: list[tuple[str, list[str]]] = []
    too_deep: list[str] = []
    skipped: list[str] = []
    stack = [(os.fspath(folder), 0)]
    while stack:
        path, depth = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as err:
            log.warning("%s: cannot list this folder (%s); skipped", path, err.strerror or err)
            continue
        names = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                if is_image_name(entry.name):
                    try:
                        regular = entry.is_file()  # not a FIFO, device or socket named like an image
                    except OSError:
                        regular = False
                    if regular:
                        names.append(entry.name)
                    else:
                        skipped.append(os.path.join(path, entry.name))
            elif not entry.name.startswith(".") and not entry.is_symlink():
                if depth < max_depth:
                    stack.append((os.path.join(path, entry.name), depth + 1))
                else:
                    too_deep.append(os.path.join(path, entry.name))
        found.append((path, sorted(names)))
    if skipped:
        log.warning("%s: %d file(s) named like images are not regular files (FIFOs, devices, sockets) and were "
                    "skipped (e.g. %s)", folder, len(skipped), skipped[0][:200])
    if too_deep:
        log.warning("%s: %d folder(s) more than %d levels deep were not searched (e.g. %s)",
                    folder, len(too_deep), max_depth, too_deep[0][:200])
    return sorted(found, key=lambda item: item[0])


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | os.PathLike, class_names: Sequence[str] | None = None) -> Dataset:
    """Lists the images of a folder of class subfolders in Keras' order.

    Class names are the sorted names of the non-hidden subfolders. Within a class, files are
    listed folder by folder (folders sorted by path), names sorted, as Keras' ``index_directory``
    does; hidden files and folders and files that are not images are ignored.

    Args:
        class_names: the classes of a run or of a training folder: the subfolders are mapped to
            them by name (a class may be missing; a subfolder that is none of them is an error).

    Raises:
        DataError: no such folder, no class subfolders, a subfolder that is not one of
            ``class_names``, or no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found = _subfolders(root)
    if not found:
        raise DataError(f"{root}: no class subfolders; expected {root}/<class name>/<image files>")
    if class_names is None:
        class_names = found
    else:
        class_names = list(class_names)
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise DataError(f"{root}: class folder {unknown[0]!r} is not one of the classes "
                            f"({', '.join(class_names)})")
    files, labels = [], []
    seen: set[str] = set()  # real paths: a class folder linked to the root (or any loop) counts each photo once
    for name in found:
        label = class_names.index(name)
        for dirpath, names in walk_images(root / name):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for f in names:
                real = os.path.realpath(os.path.join(dirpath, f))
                if real not in seen:
                    seen.add(real)
                    files.append(f"{rel_dir}/{f}")
                    labels.append(label)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders")
    return Dataset(root, files, labels, list(class_names))


#: The subfolders of a data folder that is already split: ``train/`` and one or more of these.
SPLIT_FOLDERS = ("train", "val", "validation", "test")


def split_layout(root: str | os.PathLike) -> dict[str, Path] | None:
    """The subsets of a folder laid out as ``train/``, ``val/`` (or ``validation/``) and ``test/``,
    each a folder of class subfolders: ``{"train": ..., "val": ..., "test": ...}`` (those
    present), or None for a plain folder of class subfolders."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = _subfolders(root)
    if "train" not in found or not set(found) <= set(SPLIT_FOLDERS) or len(found) < 2:
        return None
    if not _subfolders(root / "train"):
        return None  # train/ holds images: it is a class named "train"
    layout = {name: root / name for name in found}
    if "validation" in layout and "val" not in layout:
        layout["val"] = layout.pop("validation")
    return layout


@dataclass
class RunSets:
    """The images of a training run: what it trains on and what it validates on.

    Attributes:
        train, val: the datasets.
        source: every image of the training data (what ``train`` was split from).
        found: the summary line of where they come from ("Found ... files ...").
        missing: classes of the training set with no validation image.
    """

    train: Dataset
    val: Dataset
    source: Dataset
    found: str
    missing: list[str]


def run_sets(root: str | os.PathLike, val_root: str | os.PathLike | None = None, val_split: float = 0.2,
             seed: int = 123, holdout: float = 0.0) -> RunSets:
    """The training and validation sets of a run on ``root``.

    * ``val_root`` given: all of ``root`` trains, ``val_root`` validates (class folders matched by
      name; a class missing there is fine, an unknown one is an error);
    * ``root`` holding ``train/`` and ``val/`` (and maybe ``test/``, never read here): the same
      with those folders;
    * otherwise :func:`run_split`: the Keras-compatible split of ``root``.

    With ``holdout``, validation is that share of the training set instead (for tuning: the
    validation images are never seen).
    """
    root = Path(root)
    layout = split_layout(root)
    train_root = layout["train"] if layout else root
    if val_root is None and layout is not None:
        val_root = layout.get("val")
    dataset = scan(train_root)
    names = f"{len(dataset)} files belonging to {len(dataset.class_names)} classes"
    if val_root is None:
        if layout is not None:
            raise DataError(f"{root}: a train/ folder without val/; add val/ or give --val VALDIR")
        train, val = run_split(dataset, val_split, seed, holdout)
        return RunSets(train, val, dataset, f"Found {names}", [])
    val = scan(val_root, dataset.class_names)
    counts = val.class_counts()
    missing = [name for name in dataset.class_names if counts[name] == 0]
    where = f"in {train_root}" + (" (a train/val layout)" if layout else "")
    found = f"Found {names} {where}, and {len(val)} validation files in {val_root}"
    train = dataset
    if holdout:
        train, val = split(dataset, holdout, seed + 1)
    return RunSets(train, val, dataset, found, missing)


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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
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




def calibration_split(train: Dataset, share: float, seed: int = 123) -> tuple[Dataset, Dataset]:
    """(fitting, calibration): ``share`` of a run's training set held out (seed + 2, so it never
    meets the tuning hold-out's draw) to fit the temperature; the model never trains on it."""
    return split(train, share, seed + 2)


def expand_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files inside folders (and their non-hidden subfolders, down
    to :data:`MAX_DEPTH` levels), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(Path(folder, name) for folder, names in walk_images(p) for name in names)
        else:
            out.append(p)
    return out

"""The image store: decoded images in memory or memory-mapped, and where they are placed.

:func:`build_store` decodes a dataset once, at the size a size policy asks, into an
:class:`ImageStore`: in memory, or, for datasets larger than memory, into a memory-mapped file
that the system pages in as batches need it (:func:`store_folder` decides which). Training,
evaluation and distributed runs all build their stores through it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError, WriteError
from ..files import check_writable
from .decode import decode_many, image_size, load_images
from .index import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "ImageStore", "build_store", "store_folder", "check_store_dir", "estimate_store_bytes", "available_memory",
    "MEMORY_SHARE",
]

TargetSize = Callable[[int, int], tuple[int, int]]

class ImageStore:
    """Decoded images in memory as uint8, with their labels.

    Images that all share one shape are kept as a single (N, H, W, 3) tensor, so a batch is one
    indexing operation; otherwise as a list of (H, W, 3) tensors. Channels last is PIL's layout
    and the fast layout for convolutions on CPU; batches are returned as N x 3 x H x W views.

    Args:
        images: uint8 arrays (H, W, 3), or one (N, H, W, 3) array of them (used as it is).
        labels: class index of each image.
    """

    def __init__(self, images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[int]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.path: Path | None = None  # the file the images are mapped from (see attach)
        self.stacked: torch.Tensor | None = None
        self.images: list[torch.Tensor] = []
        if isinstance(images, np.ndarray) and images.ndim == 4:  # already stacked: kept, not copied
            self.stacked = torch.from_numpy(images)
        elif len({a.shape for a in images}) == 1:
            self.stacked = torch.from_numpy(np.stack(images))  # (N, H, W, 3)
        if self.stacked is not None:
            n, h, w, _ = self.stacked.shape
            self.sizes = torch.tensor([[h, w]], dtype=torch.long).expand(n, 2).contiguous()
        else:
            self.images = [torch.from_numpy(np.ascontiguousarray(a)) for a in images]
            self.sizes = torch.tensor([list(a.shape[:2]) for a in images], dtype=torch.long).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.labels)

    def share(self, path: Path) -> None:
        """Writes the images to one flat file (for :meth:`attach` by other processes)."""
        path = Path(path)
        meta = {"labels": self.labels.tolist(), "sizes": self.sizes.tolist(), "stacked": self.stacked is not None}
        with open(path, "wb") as f:
            if self.stacked is not None:
                f.write(self.stacked.numpy().tobytes())
            else:
                for image in self.images:
                    f.write(image.numpy().tobytes())
        Path(f"{path}.json").write_text(json.dumps(meta))

    @classmethod
    def attach(cls, path: Path) -> "ImageStore":
        """Maps a file written by :meth:`share`: the processes of one machine share its pages."""
        path = Path(path)
        meta = json.loads(Path(f"{path}.json").read_text())
        sizes = torch.tensor(meta["sizes"], dtype=torch.long).reshape(-1, 2)
        total = int((sizes[:, 0] * sizes[:, 1]).sum()) * 3
        flat = torch.from_file(str(path), shared=True, size=total, dtype=torch.uint8) if total else torch.empty(0, dtype=torch.uint8)
        store = cls.__new__(cls)
        store.path = path
        store.labels = torch.tensor(meta["labels"], dtype=torch.long)
        store.sizes = sizes
        store.stacked, store.images = None, []
        if meta["stacked"] and len(sizes):
            h, w = sizes[0].tolist()
            store.stacked = flat.view(len(sizes), h, w, 3)
        else:
            offset = 0
            for h, w in sizes.tolist():
                store.images.append(flat[offset : offset + h * w * 3].view(h, w, 3))
                offset += h * w * 3
        return store

    @property
    def nbytes(self) -> int:
        if self.stacked is not None:
            return self.stacked.numel()
        return sum(t.numel() for t in self.images)

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at ``indices``, zero-padded to the largest, and their valid sizes.

        Returns:
            uint8 (N, 3, H, W) in channels-last memory, and (N, 2) long (height, width).
        """
        sizes = self.sizes[indices]
        if self.stacked is not None:
            return self.stacked.index_select(0, indices).permute(0, 3, 1, 2), sizes
        height, width = (int(v) for v in sizes.max(0).values)
        out = torch.zeros(len(indices), height, width, 3, dtype=torch.uint8)
        for k, i in enumerate(indices.tolist()):
            image = self.images[i]
            out[k, : image.shape[0], : image.shape[1]] = image
        return out.permute(0, 3, 1, 2), sizes

    def unlink(self) -> None:
        """Removes the file a mapped store was read from. Its pages stay mapped (POSIX) until the
        store is gone, so nothing is left on disk even if the process is killed later; where
        the system refuses (Windows), the file is removed when the process exits."""
        if self.path is None:
            return
        paths = [self.path, Path(f"{self.path}.json")]
        try:
            for p in paths:
                p.unlink(missing_ok=True)
        except OSError:
            atexit.register(lambda: [p.unlink(missing_ok=True) for p in paths])

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        target_size: Callable[[int, int], tuple[int, int]] | None = None,
        workers: int | None = None,
        folder: str | os.PathLike | None = None,
        chunk: int = 512,
        fixed_size: tuple[int, int] | None = None,
    ) -> tuple["ImageStore", Dataset, list[tuple[str, str]]]:
        """Decodes a dataset into a store.

        Args:
            dataset: the images.
            target_size: see :func:`~sppnet.data.decode.load_images`.
            workers: decoding threads. Default: CPU count.
            folder: decode into a new file in this folder, ``chunk`` images at a time, and map
                it, so that memory never holds more than one chunk of decoded images and the
                system pages the rest in from disk as batches need them: for datasets larger
                than memory. The file (``.sppnet-decoded-*``, with a ``.json`` beside it) is
                the caller's to remove, e.g. with :meth:`unlink` once mapped. Default: memory.
            chunk: images decoded at a time into ``folder``.
            fixed_size: the (width, height) ``target_size`` gives every image, when it gives all
                the same (a size policy's ``fixed_store_size``): the images are then decoded
                straight into one array, never held twice.

        Returns:
            The store, the dataset of the images kept (unreadable ones dropped) and the
            (path, reason) of each unreadable file.
        """
        if folder is not None:
            return cls._decode_to_file(dataset, target_size, workers, Path(folder), chunk)
        if fixed_size is not None and len(dataset):
            return cls._decode_stacked(dataset, target_size, workers, fixed_size)
        result = load_images(dataset.paths(), target_size, workers)
        kept = dataset.subset(result.kept)
        return cls(result.images, kept.labels), kept, result.failures

    @classmethod
    def _decode_stacked(cls, dataset, target_size, workers, fixed_size):
        """Every image stored at one size: decoded straight into one (N, H, W, 3) array, so
        memory never holds the images twice (a list of arrays, then their stacked copy)."""
        width, height = fixed_size
        paths = dataset.paths()
        stacked = np.empty((len(paths), height, width, 3), np.uint8)
        result = decode_many(paths, target_size, workers, into=stacked)
        for row, i in enumerate(result.kept):
            if i != row:
                stacked[row] = stacked[i]  # close the gaps of unreadable files
        if result.failures:
            log.warning("skipped %d unreadable image file(s)", len(result.failures))
        subset = dataset.subset(result.kept)
        return cls(stacked[: len(result.kept)], subset.labels), subset, result.failures

    @classmethod
    def _decode_to_file(cls, dataset, target_size, workers, folder: Path, chunk: int):
        paths = dataset.paths()
        sizes: list[list[int]] = []
        kept: list[int] = []
        failures: list[tuple[str, str]] = []
        fd, name = tempfile.mkstemp(prefix=".sppnet-decoded-", dir=folder)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                for start in range(0, len(paths), chunk):
                    result = decode_many(paths[start : start + chunk], target_size, workers)
                    for i, image in zip(result.kept, result.images):
                        f.write(image.tobytes())
                        sizes.append(list(image.shape[:2]))
                        kept.append(start + i)
                    failures += result.failures
            subset = dataset.subset(kept)
            meta = {"labels": list(subset.labels), "sizes": sizes, "stacked": len({tuple(s) for s in sizes}) == 1}
            Path(f"{path}.json").write_text(json.dumps(meta))
            store = cls.attach(path)
        except BaseException as err:
            for p in (path, Path(f"{path}.json")):
                p.unlink(missing_ok=True)
            if isinstance(err, OSError):  # a full or failing disk: one line, nothing left behind
                raise WriteError(f"{folder}: cannot hold the decoded images ({err.strerror or err}); free some "
                                 "space or give --store-dir another folder") from None
            raise
        if failures:
            log.warning("skipped %d unreadable image file(s)", len(failures))
        return store, subset, failures


def available_memory() -> int | None:
    """Bytes of memory this process can still fill: the kernel's MemAvailable, or less where a
    cgroup (a container's limit) allows less. None where neither can be read (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroups = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))
    for limit_file, usage_file in cgroups:  # cgroup v2, v1 (v1 says "no limit" with a huge number)
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            if limit != "max":
                used = int(Path("/sys/fs/cgroup", usage_file).read_text())
                found.append(max(0, int(limit) - used))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


#: Decode into memory-mapped files instead of memory when the decoded images would take more
#: than this share of the memory available.
MEMORY_SHARE = 0.75


def store_folder(
    subsets: Sequence[tuple[Dataset, TargetSize | None]],
    fallback: str | os.PathLike,
    store_dir: str | os.PathLike | None = None,
) -> tuple[Path | None, str | None]:
    """Where to decode ``subsets`` ((dataset, target size) pairs) with
    :meth:`ImageStore.from_dataset`: ``store_dir`` if given; else memory (None), unless their
    decoded images would take more than :data:`MEMORY_SHARE` of :func:`available_memory`, then
    ``fallback``.

    Returns:
        The folder (None: memory) and, when it falls back, a sentence that says why.
    """
    if store_dir is not None:
        return Path(store_dir).expanduser(), None
    need = sum(estimate_store_bytes(subset, size) for subset, size in subsets)
    free = available_memory()
    if free is None or need <= MEMORY_SHARE * free:
        return None, None
    why = (
        f"The decoded images need about {need / 1e9:.1f} GB, more than {MEMORY_SHARE:.0%} of the "
        f"{free / 1e9:.1f} GB of memory available: decoding them into memory-mapped files in "
        f"{fallback} instead (removed once mapped)"
    )
    return Path(fallback), why


def estimate_store_bytes(
    dataset: Dataset, target_size: TargetSize | None = None, sample: int = 256
) -> int:
    """About how many bytes the decoded images of ``dataset`` take in an :class:`ImageStore`,
    from the headers of up to ``sample`` files spread over it (unreadable ones left out)."""
    if len(dataset) == 0:
        return 0
    paths = dataset.paths()
    picked = paths[:: max(1, len(paths) // sample)][:sample]
    total = counted = 0
    for path in picked:
        try:
            width, height = image_size(path)
        except DataError:
            continue
        if target_size is not None:
            width, height = target_size(width, height)
        total += width * height * 3
        counted += 1
    return total * len(paths) // counted if counted else 0


def check_store_dir(store_dir: str | os.PathLike | None) -> None:
    """Creates ``store_dir`` if needed and checks that files can be written there.

    Raises:
        ConfigError: it is not a folder. WriteError: it cannot be written.
    """
    if store_dir is None:
        return
    folder = Path(store_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--store-dir {store_dir}: not a folder")
    check_writable(folder, f"--store-dir {store_dir}")
    folder.mkdir(parents=True, exist_ok=True)


def build_store(
    dataset: Dataset,
    target_size: TargetSize | None = None,
    fixed_size: tuple[int, int] | None = None,
    folder: str | os.PathLike | None = None,
    keep_file: bool = False,
    workers: int | None = None,
) -> tuple[ImageStore, Dataset, list[tuple[str, str]]]:
    """Decodes ``dataset`` once into an :class:`ImageStore`.

    Args:
        dataset: the images.
        target_size: (width, height) -> stored (width, height), e.g. a size policy's
            ``store_size``; None keeps the decoded size.
        fixed_size: the one size ``target_size`` gives every image, if it does (a size policy's
            ``fixed_store_size``).
        folder: decode into a memory-mapped file in this folder (created if needed; see
            :func:`store_folder`); None: memory.
        keep_file: leave a mapped store's file on disk (for other processes to map, see
            :func:`sppnet.distributed.shared_store`); by default its name is removed as soon as
            it is mapped, so nothing stays on disk.

    Returns:
        The store, the dataset of the images kept and the (path, reason) of each unreadable file.
    """
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    store, kept, failures = ImageStore.from_dataset(dataset, target_size, workers, folder, fixed_size=fixed_size)
    if not keep_file:
        store.unlink()
    return store, kept, failures

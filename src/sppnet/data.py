"""Datasets: locating, scanning, the Keras-compatible split, safe decoding and the image store.

A dataset is a folder of class subfolders (``root/<class>/<image>``), an archive of one
(``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``) or a known name (``flowers``). :func:`locate` turns
any of them into a folder; :func:`scan` lists its images; :func:`split` makes the same
training/validation split as Keras' ``image_dataset_from_directory``; :func:`decode_image` turns
any image file into RGB uint8; :func:`load_images` decodes many in parallel into memory.

Cache: downloads and extracted archives live under ``$SPPNET_HOME`` if set, else
``$XDG_CACHE_HOME/sppnet``, else ``~/.cache/sppnet``.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "KNOWN_DATASETS",
    "RemoteArchive",
    "Dataset",
    "cache_dir",
    "locate",
    "download",
    "extract_archive",
    "scan",
    "split",
    "run_split",
    "decode_image",
    "load_images",
    "available_memory",
    "estimate_store_bytes",
    "store_folder",
    "ImageStore",
]

#: File endings read as images (any case). Keras reads the same, without webp.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

#: Largest image, in pixels, that sppnet decodes (about 8,000 x 8,000). Larger files are treated as
#: decompression bombs: skipped in training, an error in prediction.
MAX_PIXELS = 64_000_000

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class RemoteArchive:
    """An archive that can be downloaded by name, verified by size and sha256."""

    url: str
    size: int
    sha256: str
    filename: str


KNOWN_DATASETS: dict[str, RemoteArchive] = {
    "flowers": RemoteArchive(
        url="http://download.tensorflow.org/example_images/flower_photos.tgz",
        size=228_813_984,
        sha256="4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        filename="flower_photos.tgz",
    )
}


def cache_dir() -> Path:
    """The folder sppnet caches downloads and extracted archives in."""
    if os.environ.get("SPPNET_HOME"):
        return Path(os.environ["SPPNET_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sppnet"


# --------------------------------------------------------------------------------------------
# Locating: folder, archive or name -> folder


def locate(source: str | os.PathLike, cache: Path | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Turns a dataset source into the folder that holds its class subfolders.

    Args:
        source: a folder, an archive (.tgz, .tar.gz, .tar, .zip) or a name in ``KNOWN_DATASETS``
            (``"flowers"``: downloaded once, verified, extracted once).
        cache: cache folder; default :func:`cache_dir`.
        progress: called as ``progress(bytes_done, bytes_total)`` during a download.

    Raises:
        DataError: the source does not exist, is not a dataset, or cannot be downloaded.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    name = str(source)
    path = Path(source).expanduser()
    if not path.exists() and name in KNOWN_DATASETS:
        remote = KNOWN_DATASETS[name]
        archive = cache / "downloads" / remote.filename
        if not _matches(archive, remote):
            download(remote, archive, progress)
        return _dataset_root(extract_archive(archive, cache))
    if path.is_dir():
        return _dataset_root(path)
    if path.is_file():
        if not name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"{path}: not a folder or an archive (.tgz, .tar.gz, .tar, .zip)")
        return _dataset_root(extract_archive(path, cache))
    known = ", ".join(sorted(KNOWN_DATASETS))
    raise DataError(f"{name}: no such folder or archive (known dataset names: {known})")


def _dataset_root(folder: Path) -> Path:
    """Descends through single wrapping folders (an archive's ``flower_photos/``)."""
    while True:
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) == 1 and any(p.is_dir() and not p.name.startswith(".") for p in subdirs[0].iterdir()):
            folder = subdirs[0]
        else:
            return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: Path, remote: RemoteArchive) -> bool:
    return path.is_file() and path.stat().st_size == remote.size and _sha256(path) == remote.sha256


def download(remote: RemoteArchive, dest: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Downloads ``remote`` to ``dest``, verified by size and sha256.

    The bytes go to a temporary file beside ``dest`` that is renamed only once verified; a wrong
    size or checksum deletes it and raises.

    Raises:
        DataError: the download failed or did not verify.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest, done = hashlib.sha256(), 0
    log.info("downloading %s (%.1f MB) to %s", remote.url, remote.size / 1e6, dest)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=60) as response:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, remote.size)
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", err)
                raise DataError(
                    f"could not download {remote.url} ({reason}); pass a local archive or folder "
                    "instead, e.g. sppnet train path/to/flower_photos.tgz"
                ) from None
        if done != remote.size:
            raise DataError(
                f"download of {remote.url} is {done:,} bytes, expected {remote.size:,}; the "
                "partial file was deleted, try again or pass a local archive"
            )
        if digest.hexdigest() != remote.sha256:
            raise DataError(
                f"download of {remote.url} has sha256 {digest.hexdigest()}, expected {remote.sha256}; "
                "the file was deleted"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------
# Safe extraction


def _safe_member_path(archive: Path, name: str) -> PurePosixPath | None:
    """The relative path a member may be written to; raises for hostile names."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing to extract member with an absolute path: {name!r}")
    if ".." in posix.parts:
        raise DataError(f"{archive}: refusing to extract member that leaves the target folder: {name!r}")
    parts = [p for p in posix.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _write_member(target: Path, rel: PurePosixPath | None, is_dir: bool, open_source: Callable) -> None:
    """Writes one checked archive member under ``target`` (never over an existing file)."""
    if rel is None:
        return
    dest = target.joinpath(*rel.parts)
    if is_dir:
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_source() as source, open(dest, "xb") as out:
        shutil.copyfileobj(source, out)


def _extract_tar(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                rel = _safe_member_path(archive, member.name)
                if member.issym() or member.islnk():
                    raise DataError(f"{archive}: refusing to extract link {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing to extract special file {member.name!r}")
                _write_member(target, rel, member.isdir(), lambda: tar.extractfile(member))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot read archive ({err})") from None


def _extract_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _safe_member_path(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DataError(f"{archive}: refusing to extract link {info.filename!r}")
                # Zip writers often store permission bits only; no file type means a plain file.
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise DataError(f"{archive}: refusing to extract special file {info.filename!r}")
                _write_member(target, rel, info.is_dir(), lambda: zf.open(info))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot read archive ({err})") from None


def extract_archive(archive: Path, cache: Path | None = None) -> Path:
    """Extracts an archive once into the cache, keyed by its sha256, and returns the folder.

    Extraction goes to a temporary folder renamed into place when complete, so a failed or
    interrupted extraction leaves nothing behind. Absolute paths, ``..``, links and device files
    make the whole archive refused.

    Raises:
        DataError: the archive is unreadable or hostile.
    """
    archive = Path(archive)
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "datasets" / _sha256(archive)[:16]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        log.info("extracting %s to %s", archive, target)
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent extraction that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Scanning and splitting


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


def _is_image_name(name: str) -> bool:
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
            walked.append((dirpath, sorted(f for f in filenames if _is_image_name(f))))
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


# --------------------------------------------------------------------------------------------
# Decoding


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
                    upright = _upright_size(img)
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
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (or a format sppnet cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image too large (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None


@dataclass
class LoadResult:
    """Decoded images and the files that could not be decoded.

    Attributes:
        images: one uint8 array (H, W, 3) per readable file, in input order.
        kept: indices (into the input) of the readable files.
        failures: (path, reason) of each unreadable file.
    """

    images: list[np.ndarray]
    kept: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)


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

    out = _decode_many(paths, target_size, workers)
    if out.failures:
        log.warning("skipped %d unreadable image file(s)", len(out.failures))
    return out


def _decode_many(paths, target_size, workers: int | None, into: np.ndarray | None = None,
                 warn: bool = True) -> LoadResult:
    """:func:`load_images` without the closing count (with ``warn``, a warning per unreadable
    file). With ``into``, an (N, H, W, 3) array of the one size ``target_size`` gives every
    image, each image is decoded straight into its row, and ``images`` holds those rows."""

    def one(i: int) -> np.ndarray | DataError:
        try:
            image = decode_image(paths[i], target_size)
        except DataError as err:
            return err
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
    return out


def _constant_size(target_size) -> tuple[int, int] | None:
    """The (width, height) that ``target_size`` gives every image, if it ignores the image's
    own size (fixed, multi-size and size-range policies store all images at one size)."""
    if target_size is None:
        return None
    sizes = {tuple(target_size(w, h)) for w, h in ((1, 1), (4000, 30), (30, 4000), (640, 480))}
    return sizes.pop() if len(sizes) == 1 else None


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
    subsets: Sequence[tuple["Dataset", Callable[[int, int], tuple[int, int]] | None]],
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
    dataset: Dataset, target_size: Callable[[int, int], tuple[int, int]] | None = None, sample: int = 256
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


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: decoding will report the file if it matters
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file after EXIF orientation, from its header.

    Raises:
        DataError: the file is not a readable image.
    """
    try:
        with Image.open(path) as img:
            return _upright_size(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (or a format sppnet cannot read)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read image header ({err})") from None


def summarize(dataset: Dataset, train: Dataset, val: Dataset, workers: int | None = None) -> str:
    """A human-readable summary: Keras' counts, per-class counts, image sizes, unreadable files.

    Every image is decoded (at a reduced scale where possible) to find unreadable ones.
    """
    lines = [
        f"Found {len(dataset)} files belonging to {len(dataset.class_names)} classes.",
        f"Using {len(train)} files for training.",
        f"Using {len(val)} files for validation.",
        "",
        f"{'class':<20} {'files':>7} {'train':>7} {'val':>7}",
    ]
    totals, in_train, in_val = dataset.class_counts(), train.class_counts(), val.class_counts()
    for name in dataset.class_names:
        lines.append(f"{name:<20} {totals[name]:>7} {in_train[name]:>7} {in_val[name]:>7}")
    # Decode everything at about 1/8 scale: enough to find truncated and broken files, fast.
    result = load_images(dataset.paths(), lambda w, h: (max(1, w // 8), max(1, h // 8)), workers)
    sizes = []
    for i in result.kept:
        try:
            sizes.append(image_size(dataset.root / dataset.files[i]))
        except DataError as err:  # header unreadable though the pixels decoded: report it too
            result.failures.append((str(dataset.root / dataset.files[i]), str(err)))
    lines.append("")
    if sizes:
        widths = np.array([s[0] for s in sizes])
        heights = np.array([s[1] for s in sizes])
        lines.append(
            f"Image sizes (width x height): min {widths.min()}x{heights.min()}, "
            f"median {int(np.median(widths))}x{int(np.median(heights))}, max {widths.max()}x{heights.max()}; "
            f"{len(set(sizes))} distinct sizes; {int((widths > heights).sum())} landscape, "
            f"{int((widths < heights).sum())} portrait, {int((widths == heights).sum())} square"
        )
    if result.failures:
        lines.append(f"Unreadable files ({len(result.failures)}), skipped in training:")
        lines += [f"  {reason}" for _, reason in result.failures]
    else:
        lines.append("Unreadable files: none")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The in-memory image store


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
    ) -> tuple["ImageStore", Dataset, list[tuple[str, str]]]:
        """Decodes a dataset into a store.

        Args:
            dataset: the images.
            target_size: see :func:`load_images`.
            workers: decoding threads. Default: CPU count.
            folder: decode into a new file in this folder, ``chunk`` images at a time, and map
                it, so that memory never holds more than one chunk of decoded images and the
                system pages the rest in from disk as batches need them: for datasets larger
                than memory. The file (``.sppnet-decoded-*``, with a ``.json`` beside it) is
                the caller's to remove, e.g. with :meth:`unlink` once mapped. Default: memory.
            chunk: images decoded at a time into ``folder``.

        Returns:
            The store, the dataset of the images kept (unreadable ones dropped) and the
            (path, reason) of each unreadable file.
        """
        if folder is not None:
            return cls._decode_to_file(dataset, target_size, workers, Path(folder), chunk)
        if _constant_size(target_size) is not None and len(dataset):
            return cls._decode_stacked(dataset, target_size, workers)
        result = load_images(dataset.paths(), target_size, workers)
        kept = dataset.subset(result.kept)
        return cls(result.images, kept.labels), kept, result.failures

    @classmethod
    def _decode_stacked(cls, dataset, target_size, workers):
        """Every image stored at one size: decoded straight into one (N, H, W, 3) array, so
        memory never holds the images twice (a list of arrays, then their stacked copy)."""
        width, height = _constant_size(target_size)
        paths = dataset.paths()
        stacked = np.empty((len(paths), height, width, 3), np.uint8)
        result = _decode_many(paths, target_size, workers, into=stacked)
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
                    result = _decode_many(paths[start : start + chunk], target_size, workers)
                    for i, image in zip(result.kept, result.images):
                        f.write(image.tobytes())
                        sizes.append(list(image.shape[:2]))
                        kept.append(start + i)
                    failures += result.failures
            subset = dataset.subset(kept)
            meta = {"labels": list(subset.labels), "sizes": sizes, "stacked": len({tuple(s) for s in sizes}) == 1}
            Path(f"{path}.json").write_text(json.dumps(meta))
            store = cls.attach(path)
        except BaseException:
            for p in (path, Path(f"{path}.json")):
                p.unlink(missing_ok=True)
            raise
        if failures:
            log.warning("skipped %d unreadable image file(s)", len(failures))
        return store, subset, failures

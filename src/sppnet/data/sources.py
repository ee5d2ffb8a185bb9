"""Dataset sources: a folder, an archive of one, or a known dataset downloaded once.

:func:`locate` turns any source into the folder that holds its class subfolders. Archives
(``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``) are extracted once into the cache with path checks
(absolute paths, ``..``, links and device files make the whole archive refused); downloads are
verified by size and sha256 before use.

Cache: downloads and extracted archives live under ``$SPPNET_HOME`` if set, else
``$XDG_CACHE_HOME/sppnet``, else ``~/.cache/sppnet``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import DataError
from ..files import atomic_path

log = logging.getLogger(__name__)

__all__ = ["ARCHIVE_SUFFIXES", "RemoteArchive", "KNOWN_DATASETS", "cache_dir", "locate", "download", "extract_archive"]

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
        root = _dataset_root(extract_archive(path, cache))
        if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            raise DataError(f"{path}: the archive holds no class folders; expected <class name>/<image files> inside")
        return root
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
    digest, done = hashlib.sha256(), 0
    log.info("downloading %s (%.1f MB) to %s", remote.url, remote.size / 1e6, dest)
    with atomic_path(dest, suffix=".part") as tmp:
        with open(tmp, "wb") as out:
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
    return dest


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


#: An archive may expand to this many times its own size (or to MIN_EXPANSION_BYTES, whichever is
#: larger), and never past the free disk space: a 1 MB gzip of 1 GiB of zeros is refused before
#: its contents are written. Photo archives expand about 1x (JPEG), lossless ones a few times.
EXPANSION_RATIO = 100
MIN_EXPANSION_BYTES = 1 << 30


class _Budget:
    """The bytes an archive may still expand to; each member's declared size is charged before
    it is written."""

    def __init__(self, archive: Path, target: Path) -> None:
        self.archive = archive
        self.limit = max(MIN_EXPANSION_BYTES, EXPANSION_RATIO * archive.stat().st_size)
        self.free = shutil.disk_usage(target).free
        self.total = 0

    def charge(self, size: int) -> None:
        self.total += max(0, int(size))
        if self.total > self.limit:
            raise DataError(f"{self.archive}: expands to more than {self.limit / 1e6:,.0f} MB "
                            f"({EXPANSION_RATIO} times its size at most): refused as a decompression bomb")
        if self.total > self.free:
            raise DataError(f"{self.archive}: its contents need more than the {self.free / 1e6:,.0f} MB free on "
                            "the cache's disk; free some space or set SPPNET_HOME to a larger disk")


def _extract_tar(archive: Path, target: Path) -> None:
    budget = _Budget(archive, target)
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                budget.charge(member.size)
                rel = _safe_member_path(archive, member.name)
                if member.issym() or member.islnk():
                    raise DataError(f"{archive}: refusing to extract link {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing to extract special file {member.name!r}")
                _write_member(target, rel, member.isdir(), lambda: tar.extractfile(member))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot read archive ({err})") from None


def _extract_zip(archive: Path, target: Path) -> None:
    budget = _Budget(archive, target)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():  # the sizes are all known before anything is written
                budget.charge(info.file_size)
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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    except OSError as err:
        raise DataError(f"{cache}: cannot extract {archive.name} into the cache there ({err.strerror or err}); set "
                        "SPPNET_HOME to a writable folder") from None
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

"""Atomic writes: the one way sppnet writes a file.

Every file sppnet writes (run folders, caches, exports, plots, downloads) is written to a hidden
temporary name beside its target and renamed into place once complete, so a process killed at
any moment leaves the target either complete and old or complete and new, never half written.

    atomic_write_bytes(path, payload)          # bytes in hand
    with atomic_path(path) as tmp:             # a writer that wants a path (safetensors, onnx)
        save_file(tensors, tmp)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import WriteError

__all__ = ["atomic_write_bytes", "atomic_path", "check_writable", "remove_temporaries", "TMP_SUFFIX"]

#: The suffix of the temporary files (``.<name>.<random>.tmp``) written beside a target.
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    The parent folder is created if needed. The file gets the permissions of a new file under
    the process's umask (not ``mkstemp``'s 0600). If the block raises (or the process is
    interrupted), the temporary file is removed and ``path`` is left as it was.

    Raises:
        WriteError: naming ``path``, when it cannot be written (its folder is a file, read-only,
            the disk is full): an ``OSError`` from the block is reported so too.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        tmp = Path(name)
        os.close(fd)
        yield tmp
        # Set after the block: a writer may replace the file (safetensors recreates it as 0600).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` through a temporary file, an fsync and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def _umask() -> int:
    """The process's umask: read from /proc where it can be (setting it to read it is not
    thread-safe), else by setting and restoring it."""
    try:
        text = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Checks, without creating anything, that files can be written in ``folder``: an existing
    folder is probed with a temporary file; a missing one must have an existing, writable
    folder as its nearest existing ancestor.

    Raises:
        WriteError: ``what`` (e.g. ``"--out runs/x"``) cannot be written, and why.
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"{what}: {existing} is a file, not a folder")
    try:
        if existing == folder:
            with tempfile.TemporaryFile(dir=folder):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, f"{existing} is not writable")
    except OSError as err:
        raise WriteError(f"{what}: cannot write there ({err.strerror or err})") from None


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files (``.<name>.<random>.tmp``) a killed writer left in ``folder``;
    returns them."""
    removed = []
    for path in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

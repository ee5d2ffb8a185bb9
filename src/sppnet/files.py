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

__all__ = ["atomic_write_bytes", "atomic_path", "TMP_SUFFIX"]

#: The suffix of the temporary files (``.<name>.<random>.tmp``) written beside a target.
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    The parent folder is created if needed. If the block raises (or the process is
    interrupted), the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` through a temporary file, an fsync and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

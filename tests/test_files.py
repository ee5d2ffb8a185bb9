"""files: atomic writes leave the old file or the new one, never a part, and no temporary file."""

import pytest

from sppnet.files import atomic_path, atomic_write_bytes


def test_atomic_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "f.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_files_follow_the_umask_and_killed_writes_are_cleaned(tmp_path):
    import os

    from sppnet.files import remove_temporaries

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    (tmp_path / ".state.pt.x1y2.tmp").write_bytes(b"half")
    assert [p.name for p in remove_temporaries(tmp_path)] == [".state.pt.x1y2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]

"""data.sources: locating datasets, safe extraction, verified downloads."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from sppnet import data
from sppnet.data import sources
from sppnet.data import DataError, extract_archive, locate, scan


HERE = Path(__file__).resolve().parent




# ---------------------------------------------------------------------------------------------
# Locating, extracting, downloading


def _tar_of(folder: Path, dest: Path, arcname="photos") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return dest


def test_locate_folder_and_archives(tiny_dataset, tmp_path):
    assert locate(tiny_dataset, cache=tmp_path / "c") == tiny_dataset
    tgz = _tar_of(tiny_dataset, tmp_path / "tiny.tgz")
    root = locate(tgz, cache=tmp_path / "c")
    assert root.name == "photos" and scan(root).files == scan(tiny_dataset).files
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(tiny_dataset.rglob("*.jpg")):
            zf.write(f, f"wrap/{f.relative_to(tiny_dataset).as_posix()}")
    assert scan(locate(zpath, cache=tmp_path / "c")).files == scan(tiny_dataset).files


def test_archive_is_extracted_once(tiny_dataset, tmp_path, monkeypatch):
    tgz = _tar_of(tiny_dataset, tmp_path / "tiny.tgz")
    first = locate(tgz, cache=tmp_path / "c")
    monkeypatch.setattr(sources, "_extract_tar", lambda *a: pytest.fail("extracted twice"))
    assert locate(tgz, cache=tmp_path / "c") == first


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPPNET_HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home"
    monkeypatch.delenv("SPPNET_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "sppnet"


def _hostile_tars(tmp_path):
    def tar_with(name, build):
        path = tmp_path / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            build(tar)
        return path

    def add_file(tar, name, payload=b"x"):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    def add_special(tar, name, kind, target=""):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return {
        "absolute path": tar_with("abs", lambda t: add_file(t, "/tmp/evil.jpg")),
        "leaves the target": tar_with("dotdot", lambda t: add_file(t, "a/../../evil.jpg")),
        "link": tar_with("sym", lambda t: add_special(t, "a/link.jpg", tarfile.SYMTYPE, "/etc/passwd")),
        "link 'a/hard.jpg'": tar_with("hard", lambda t: (add_file(t, "a/ok.jpg"), add_special(t, "a/hard.jpg", tarfile.LNKTYPE, "a/ok.jpg"))),
        "special file": tar_with("dev", lambda t: add_special(t, "a/dev", tarfile.CHRTYPE)),
    }


@pytest.mark.parametrize("problem", ["absolute path", "leaves the target", "link", "link 'a/hard.jpg'", "special file"])
def test_hostile_tar_archives_are_refused(tmp_path, problem):
    archive = _hostile_tars(tmp_path)[problem]
    cache = tmp_path / "cache"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=problem):
        extract_archive(archive, cache)
    # Nothing extracted anywhere: no dataset folder, no leftover temporary folder, no escaped file.
    assert list((cache / "datasets").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["cache"])
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_hostile_zip_archives_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("a/ok.jpg", b"x")
        zf.writestr("../escape.jpg", b"x")
    with pytest.raises(DataError, match="leaves the target folder: '../escape.jpg'"):
        extract_archive(evil, tmp_path / "cache")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("a/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="refusing to extract link 'a/link.jpg'"):
        extract_archive(link, tmp_path / "cache")
    assert not (tmp_path / "escape.jpg").exists()
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_corrupt_archive_gives_one_line(tmp_path):
    bad = tmp_path / "broken.tgz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataError, match="broken.tgz: cannot read archive"):
        locate(bad, cache=tmp_path / "c")


class _Server:
    """Serves files from a folder on 127.0.0.1, counting requests."""

    def __init__(self, folder: Path):
        self.hits = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(folder), **k)

            def do_GET(self):
                outer.hits += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_archive(tiny_dataset, tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    archive = _tar_of(tiny_dataset, folder / "flower_photos.tgz", arcname="flower_photos")
    blob = archive.read_bytes()
    (folder / "truncated.tgz").write_bytes(blob[: len(blob) // 2])
    server = _Server(folder)
    yield server, blob
    server.close()


def _remote(url, blob, **changes):
    fields = dict(url=url, size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), filename="flower_photos.tgz")
    fields.update(changes)
    return data.RemoteArchive(**fields)


def test_download_verifies_and_caches(served_archive, tmp_path, monkeypatch):
    server, blob = served_archive
    monkeypatch.setitem(data.KNOWN_DATASETS, "flowers", _remote(f"{server.url}/flower_photos.tgz", blob))
    seen = []
    root = locate("flowers", cache=tmp_path / "cache", progress=lambda done, total: seen.append((done, total)))
    assert scan(root).class_names == ["cats", "dogs", "owls"]
    assert seen[-1] == (len(blob), len(blob))
    assert (tmp_path / "cache" / "downloads" / "flower_photos.tgz").read_bytes() == blob
    assert locate("flowers", cache=tmp_path / "cache") == root
    assert server.hits == 1  # the second call used the cache


def test_truncated_download_is_deleted(served_archive, tmp_path):
    server, blob = served_archive
    dest = tmp_path / "dl" / "flower_photos.tgz"
    with pytest.raises(DataError, match=rf"is {len(blob) // 2:,} bytes, expected {len(blob):,}"):
        data.download(_remote(f"{server.url}/truncated.tgz", blob), dest)
    assert list(dest.parent.iterdir()) == []


def test_wrong_checksum_download_is_deleted(served_archive, tmp_path):
    server, blob = served_archive
    dest = tmp_path / "dl" / "flower_photos.tgz"
    with pytest.raises(DataError, match="has sha256 .* expected 0000"):
        data.download(_remote(f"{server.url}/flower_photos.tgz", blob, sha256="0" * 64), dest)
    assert list(dest.parent.iterdir()) == []


def test_offline_flowers_says_to_pass_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setitem(data.KNOWN_DATASETS, "flowers", data.RemoteArchive("http://127.0.0.1:9/none.tgz", 10, "0" * 64, "f.tgz"))
    with pytest.raises(DataError, match="could not download .*pass a local archive or folder instead"):
        locate("flowers", cache=tmp_path / "cache")
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []

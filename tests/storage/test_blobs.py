"""BlobStore: content-addressed contents and the ``+files/`` hard links derived from file entries."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from devpitx.storage.blobs import BlobStore


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", tmp_path / "+files", tmp_path / "tmp")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashed_tmp_file(blobs: BlobStore, data: bytes, name: str = "upload") -> Path:
    path = blobs.tmp_dir / name
    path.write_bytes(data)
    return path


def test_put_bytes_stores_content_under_its_digest(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"hello")
    assert digest == sha(b"hello")
    assert blobs.path_for(digest) == blobs.root / "sha256" / digest[:2] / digest[2:4] / digest
    assert blobs.path_for(digest).read_bytes() == b"hello"
    assert blobs.has(digest) and blobs.size(digest) == 5
    assert list(blobs.tmp_dir.iterdir()) == []


def test_adopt_moves_the_file_in(blobs: BlobStore) -> None:
    src = hashed_tmp_file(blobs, b"wheel")
    target = blobs.adopt(src, sha(b"wheel"))
    assert target.read_bytes() == b"wheel"
    assert not src.exists()


def test_adopt_is_idempotent(blobs: BlobStore) -> None:
    first = blobs.adopt(hashed_tmp_file(blobs, b"same", "a"), sha(b"same"))
    inode = first.stat().st_ino
    second_src = hashed_tmp_file(blobs, b"same", "b")
    second = blobs.adopt(second_src, sha(b"same"))
    assert second == first
    assert first.stat().st_ino == inode  # the stored copy is not replaced
    assert not second_src.exists()
    assert [digest for digest, _path in blobs.iter_blobs()] == [sha(b"same")]
    assert blobs.put_bytes(b"same") == sha(b"same")
    assert first.stat().st_ino == inode
    assert list(blobs.tmp_dir.iterdir()) == []


def test_copy_in_hashes_while_copying(blobs: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "elsewhere.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one copy chunk
    src.write_bytes(data)
    digest, size = blobs.copy_in(src)
    assert (digest, size) == (sha(data), len(data))
    assert blobs.path_for(digest).read_bytes() == data
    assert src.exists()
    assert list(blobs.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("digest", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61])
def test_path_for_refuses_what_is_not_a_sha256_digest(blobs: BlobStore, digest: str) -> None:
    with pytest.raises(ValueError):
        blobs.path_for(digest)


@pytest.mark.parametrize(
    "relpath",
    ["", "/etc/passwd", "a//b", "a/b/", "a/../b", "..", "a/./b", ".", "a/b\x00c", "\x00", "a/.."],
)
def test_unsafe_relpaths_are_refused(blobs: BlobStore, relpath: str) -> None:
    digest = blobs.put_bytes(b"x")
    with pytest.raises(ValueError, match="unsafe relpath"):
        blobs.relpath_path(relpath)
    with pytest.raises(ValueError):
        blobs.link_relpath(relpath, digest)
    with pytest.raises(ValueError):
        blobs.unlink_relpath(relpath)


def test_safe_relpaths_stay_below_files_root(blobs: BlobStore) -> None:
    for relpath in ("u/i/+f/abc/def/pkg-1.0.tar.gz", "u/i/+f/a/b/..pkg", ".hidden/x", "...", "a b/c%2Fd"):
        path = blobs.relpath_path(relpath)
        assert path.resolve().is_relative_to(blobs.files_root.resolve())
        assert path.relative_to(blobs.files_root).as_posix() == relpath


def test_link_relpath_makes_a_hard_link_and_is_idempotent(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"content")
    relpath = "u/i/+f/ed7/002b439e9ac84/pkg-1.0.tar.gz"
    blobs.link_relpath(relpath, digest)
    link = blobs.files_root / relpath
    assert os.path.samefile(link, blobs.path_for(digest))
    blobs.link_relpath(relpath, digest)
    assert os.path.samefile(link, blobs.path_for(digest))
    assert sorted(p.name for p in link.parent.iterdir()) == ["pkg-1.0.tar.gz"]


@pytest.mark.parametrize("stale", ["other-blob", "plain-file"])
def test_link_relpath_replaces_a_stale_link(blobs: BlobStore, stale: str) -> None:
    relpath = "u/i/+f/abc/def/pkg.zip"
    link = blobs.files_root / relpath
    old = blobs.put_bytes(b"old")
    if stale == "other-blob":
        blobs.link_relpath(relpath, old)
    else:
        link.parent.mkdir(parents=True)
        link.write_bytes(b"copied by hand")
    new = blobs.put_bytes(b"new")
    blobs.link_relpath(relpath, new)
    assert os.path.samefile(link, blobs.path_for(new))
    assert blobs.path_for(old).read_bytes() == b"old"  # the old content is untouched
    assert sorted(p.name for p in link.parent.iterdir()) == ["pkg.zip"]


def test_failed_link_relpath_leaves_no_tmp_file(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    relpath = "u/i/+f/abc/def/pkg.zip"
    old, new = blobs.put_bytes(b"old"), blobs.put_bytes(b"new")
    blobs.link_relpath(relpath, old)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "injected failure")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        blobs.link_relpath(relpath, new)
    monkeypatch.undo()
    link = blobs.files_root / relpath
    assert sorted(p.name for p in link.parent.iterdir()) == ["pkg.zip"]
    assert os.path.samefile(link, blobs.path_for(old))


def test_unlink_relpath_removes_the_link_and_empty_directories(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"content")
    blobs.link_relpath("u/i/+f/abc/def/one.zip", digest)
    blobs.link_relpath("u/i/+f/abc/fed/two.zip", digest)
    blobs.unlink_relpath("u/i/+f/abc/def/one.zip")
    assert not (blobs.files_root / "u/i/+f/abc/def").exists()
    assert (blobs.files_root / "u/i/+f/abc/fed/two.zip").exists()
    blobs.unlink_relpath("u/i/+f/abc/fed/two.zip")
    assert blobs.files_root.is_dir()
    assert list(blobs.files_root.iterdir()) == []
    assert blobs.has(digest)  # contents are removed only by gc
    blobs.unlink_relpath("u/i/+f/abc/fed/two.zip")  # already gone: fine


def test_unlink_relpath_removes_a_leftover_tmp_link(blobs: BlobStore) -> None:
    # A crash between linking the tmp name and renaming it; replay of a later
    # tombstone for the same relpath must not leave the tmp file behind.
    digest = blobs.put_bytes(b"content")
    blobs.link_relpath("u/i/+f/abc/def/one.zip", digest)
    tmp = blobs.files_root / "u/i/+f/abc/def/.one.zip.tmp"
    os.link(blobs.path_for(digest), tmp)
    blobs.unlink_relpath("u/i/+f/abc/def/one.zip")
    assert not tmp.exists()
    assert list(blobs.files_root.iterdir()) == []


def test_clear_tmp_removes_files_only(blobs: BlobStore) -> None:
    hashed_tmp_file(blobs, b"1", "upload-1")
    hashed_tmp_file(blobs, b"2", ".hidden")
    (blobs.tmp_dir / "subdir").mkdir()
    assert blobs.clear_tmp() == 2
    assert [p.name for p in blobs.tmp_dir.iterdir()] == ["subdir"]


def test_iter_blobs_lists_digests_only(blobs: BlobStore) -> None:
    digests = {blobs.put_bytes(b"a"), blobs.put_bytes(b"b")}
    (blobs.root / "sha256" / "README").write_text("not a blob")
    assert {digest for digest, _path in blobs.iter_blobs()} == digests
    assert all(path == blobs.path_for(digest) for digest, path in blobs.iter_blobs())


def test_iter_blobs_of_an_empty_store(tmp_path: Path) -> None:
    assert list(BlobStore(tmp_path / "b", tmp_path / "f", tmp_path / "t").iter_blobs()) == []

"""Content-addressed file contents, and the ``+files/`` view of them.

``blobs/sha256/ab/cd/<hex>`` holds each distinct content once, whatever index
or name it is published under. A blob is written and fsynced *before* the
commit that names it, so a committed entry never points at missing bytes.
``+files/<relpath>`` are hard links into ``blobs/`` at devpi's URL layout, so a
front-end web server can serve ``+f`` URLs straight from disk; they are
derived from the file entries and recreated on replay.

All methods here are blocking I/O: call them through a RunBlocking runner
unless the data is known to be small.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from devpitx.storage.atomic import fsync_dir, make_dirs, sync_filesystem, tmp_name_for

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK_BYTES = 1024 * 1024


class BlobStore:
    def __init__(self, root: Path, files_root: Path, tmp_dir: Path) -> None:
        self.root = root
        self._root_text = str(root)
        self.files_root = files_root
        self.tmp_dir = tmp_dir
        for path in (root, files_root, tmp_dir):
            make_dirs(path)

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def has(self, sha256: str) -> bool:
        # Plain strings, not path_for: replicas ask this on the reactor thread for every file.
        if not _HEX64.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return os.path.isfile(f"{self._root_text}/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}")

    def size(self, sha256: str) -> int:
        return self.path_for(sha256).stat().st_size

    def adopt(self, src: Path, sha256: str) -> Path:
        """Move the already-hashed file ``src`` (on this filesystem) into the store, durably.

        The caller vouches for ``sha256``; it computed it while writing ``src``.
        """
        target = self.path_for(sha256)
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if target.exists():
            src.unlink()
            return target
        make_dirs(target.parent)
        try:
            os.link(src, target)
        except FileExistsError:
            pass  # a concurrent adopt of the same content won
        src.unlink()
        fsync_dir(target.parent)
        return target

    def adopt_replicated(self, items: Sequence[tuple[bytes | Path, str]]) -> None:
        """Store contents a replica fetched and verified, all made durable by one filesystem sync.

        Each item is the content (bytes, or a file in tmp/ that is consumed)
        and its sha256, which the caller vouches for. The contents are written
        unsynced, the filesystem is synced once, and only then do names in
        ``blobs/`` point at them: a blob that exists is always complete. The
        new names themselves are not fsynced; one lost in a crash is a
        missing blob, which file replication fetches again, and a crash
        leaves only tmp/ files, which opening the store removes.
        """
        staged = [(content, sha256) for content, sha256 in items if isinstance(content, Path)]
        try:
            for _content, sha256 in items:
                self.path_for(sha256)    # a malformed digest fails before anything is written
            for content, sha256 in items:
                if isinstance(content, Path):
                    continue
                fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="replicated-")
                staged.append((Path(name), sha256))
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
            sync_filesystem(self.tmp_dir)
            for path, sha256 in staged:
                target = self.path_for(sha256)
                if target.exists():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except FileExistsError:
                    pass  # the same content arrived twice in this group
        finally:
            for path, _sha256 in staged:
                path.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> str:
        """Store small contents (toxresults, metadata files); returns the sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if self.has(sha256):
            return sha256
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.adopt(Path(name), sha256)
        finally:
            Path(name).unlink(missing_ok=True)
        return sha256

    def copy_in(self, src: Path) -> tuple[str, int]:
        """Copy a file from anywhere into the store, hashing on the way; (sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="copy-")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            self.adopt(Path(name), sha256)
        finally:
            Path(name).unlink(missing_ok=True)
        return sha256, size

    def stage_external(self, src: Path, *, hard_link: bool) -> Path:
        """A private file in tmp/ with the content of ``src`` (a file outside the store), to be
        verified and then ``adopt``ed; the caller removes it if it is not adopted.

        ``hard_link``: share ``src``'s inode instead of copying (falls back to a
        copy across filesystems). The blob then changes if ``src`` is changed in
        place, which is what an operator asking for hard links accepts.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="external-")
        tmp = Path(name)
        try:
            if hard_link:
                os.close(fd)
                fd = -1
                tmp.unlink()
                try:
                    os.link(src, tmp)
                    return tmp
                except OSError:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            out = os.fdopen(fd, "wb")
            fd = -1  # owned by ``out`` now
            with out, open(src, "rb") as inp:
                while chunk := inp.read(COPY_CHUNK_BYTES):
                    out.write(chunk)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def relpath_path(self, relpath: str) -> Path:
        parts = relpath.split("/")
        if any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise ValueError(f"unsafe relpath {relpath!r}")
        return self.files_root.joinpath(*parts)

    def link_relpath(self, relpath: str, sha256: str, *, durable: bool = True) -> None:
        """Make ``+files/<relpath>`` a hard link to the blob (idempotent).

        ``durable=False``: no fsync; the caller syncs the filesystem later, or
        can recreate the link after a crash.
        """
        target = self.relpath_path(relpath)
        blob = self.path_for(sha256)
        try:
            if os.path.samefile(target, blob):
                return
        except FileNotFoundError:
            pass
        make_dirs(target.parent, durable=durable)
        tmp = tmp_name_for(target)
        tmp.unlink(missing_ok=True)
        try:
            os.link(blob, tmp)
            os.replace(tmp, target)
        finally:
            # Nothing on open sweeps +files/ (it can be huge): never leave the tmp name behind.
            tmp.unlink(missing_ok=True)
        if durable:
            # Durable before state/.serial says the entry is applied: replay would not redo it.
            fsync_dir(target.parent)

    def unlink_relpath(self, relpath: str, *, durable: bool = True) -> None:
        target = self.relpath_path(relpath)
        changed = _unlink_if_present(target)
        # A link_relpath of this relpath killed between link and rename left its tmp name.
        changed |= _unlink_if_present(tmp_name_for(target))
        # Empty hash directories would pile up as files come and go.
        parent = target.parent
        while parent != self.files_root:
            try:
                parent.rmdir()
            except OSError:
                break
            changed = True
            parent = parent.parent
        if changed and durable:
            # A removal lost to a power cut would serve a deleted file again.
            fsync_dir(parent)

    def clear_tmp(self) -> int:
        """Remove everything in tmp/ (uploads and downloads that never committed)."""
        count = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            count += 1
        return count

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if _HEX64.match(name):
                    yield name, Path(dirpath) / name


def _unlink_if_present(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True

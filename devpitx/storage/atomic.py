"""Crash-safe file primitives: every durable write in the server goes through here.

A file is written under a temporary name, fsynced, then published under its
final name, and the directory is fsynced so the rename itself survives power
loss. Readers therefore see either the old file or the complete new one.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def tmp_name_for(path: Path) -> Path:
    # Hidden and suffixed, so recovery can recognise and delete leftovers.
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, *, durable: bool = True) -> None:
    """``mkdir -p`` that survives power loss.

    A directory's existence is an entry in its parent, so the parent of each
    directory created here is fsynced too; otherwise a file fsynced inside a
    new directory can vanish together with the directory after a power cut.
    ``durable=False`` leaves that to a later :func:`sync_filesystem`.
    """
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    if durable:
        for directory in missing:
            fsync_dir(directory.parent)


def _write_tmp(tmp: Path, data: bytes, *, sync: bool = True) -> None:
    with open(tmp, "xb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True, tmp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (old or new content, never a mix).

    ``tmp_dir`` (same filesystem) collects the temporary files of a whole tree
    in one place, so leftovers of a crash are found without walking the tree.
    """
    tmp = tmp_dir / tmp_name_for(path).name if tmp_dir is not None else tmp_name_for(path)
    try:
        tmp.unlink(missing_ok=True)
        _write_tmp(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync_dir:
        fsync_dir(path.parent)


def publish_new(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Create ``path`` with ``data``; refuse to overwrite (FileExistsError).

    Used for journal entries, which are written once and never changed: a link
    fails if the name exists, so a bug can never silently rewrite history.
    ``durable=False`` skips both fsyncs: the caller makes a whole group of
    files durable at once with :func:`sync_filesystem` and must cope with a
    crash leaving any of them empty, partly written or missing.
    """
    tmp = tmp_name_for(path)
    try:
        tmp.unlink(missing_ok=True)
        _write_tmp(tmp, data, sync=durable)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        syncfs: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None     # not Linux/glibc
    return syncfs


_SYNCFS = _find_syncfs()


def sync_filesystem(path: Path) -> None:
    """Make everything written so far on ``path``'s filesystem durable, files and directories.

    One syncfs(2) costs about as much as a single fsync, whatever the number
    of files written since the last one; where syncfs is missing, sync(2)
    flushes every filesystem instead.
    """
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)

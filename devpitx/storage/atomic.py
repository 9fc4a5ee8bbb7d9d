"""Crash-safe file primitives: every durable write in the server goes through here.

A file is written under a temporary name, fsynced, then published under its
final name, and the directory is fsynced so the rename itself survives power
loss. Readers therefore see either the old file or the complete new one.
"""
from __future__ import annotations

import os
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


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that survives power loss.

    A directory's existence is an entry in its parent, so the parent of each
    directory created here is fsynced too; otherwise a file fsynced inside a
    new directory can vanish together with the directory after a power cut.
    """
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    for directory in missing:
        fsync_dir(directory.parent)


def _write_tmp(tmp: Path, data: bytes) -> None:
    with open(tmp, "xb") as f:
        f.write(data)
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


def publish_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; refuse to overwrite (FileExistsError).

    Used for journal entries, which are written once and never changed: a link
    fails if the name exists, so a bug can never silently rewrite history.
    """
    tmp = tmp_name_for(path)
    try:
        tmp.unlink(missing_ok=True)
        _write_tmp(tmp, data)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)

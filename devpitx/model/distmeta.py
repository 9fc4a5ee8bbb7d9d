"""Core metadata (PEP 658) of an uploaded wheel.

This module owns one job: given a wheel file on disk and its file name, return
the exact bytes of its ``<name>-<version>.dist-info/METADATA``, or say why the
file is not a usable wheel. It is synchronous and meant for a worker thread.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import IO

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Zip-bomb guard: real METADATA files are a few KiB, long READMEs a few hundred.
MAX_METADATA_BYTES = 16 * 1024 * 1024

_DIST_INFO_SUFFIX = ".dist-info"


class ArchiveError(ValueError):
    """str(exc) readable: why the file is not a valid distribution."""


def wheel_core_metadata(path: Path | IO[bytes], filename: str) -> bytes:
    """The exact METADATA bytes of the wheel at ``path`` (or in a binary file object), uploaded
    as ``filename``.

    The dist-info directory is the single top-level ``*.dist-info`` whose
    name and version match the wheel file name (PEP 503 name normalisation,
    PEP 440 version equality); if none matches but the wheel has exactly one
    dist-info directory, that one is used.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{filename}: not a valid zip file ({exc})") from exc
    with archive:
        dist_info = _find_dist_info(archive.namelist(), filename)
        member = f"{dist_info}/METADATA"
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ArchiveError(f"{filename}: {member} is missing") from None
        try:
            # The header's file_size is the uploader's claim: bound the actual
            # decompressed stream instead.
            with archive.open(info) as stream:
                data = stream.read(MAX_METADATA_BYTES + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            # Bad CRC, corrupt deflate stream, truncated member, unsupported
            # compression, encrypted member: not a readable wheel either way.
            raise ArchiveError(f"{filename}: cannot read {member} ({exc})") from exc
    if len(data) > MAX_METADATA_BYTES:
        raise ArchiveError(f"{filename}: {member} is larger than {MAX_METADATA_BYTES} bytes")
    return data


def _find_dist_info(names: list[str], filename: str) -> str:
    dirs = sorted({top for top, sep, _rest in (n.partition("/") for n in names)
                   if sep and top.endswith(_DIST_INFO_SUFFIX)})
    expected = _wheel_name_version(filename)
    if expected is not None:
        matching = [d for d in dirs if _dist_info_matches(d, *expected)]
        if len(matching) == 1:
            return matching[0]
        if len(matching) > 1:
            raise ArchiveError(f"{filename}: several .dist-info directories match: {', '.join(matching)}")
    if len(dirs) == 1:
        return dirs[0]
    if not dirs:
        raise ArchiveError(f"{filename}: no .dist-info directory")
    raise ArchiveError(f"{filename}: no .dist-info directory matches the file name among {', '.join(dirs)}")


def _wheel_name_version(filename: str) -> tuple[str, str] | None:
    """(name, version) from ``name-version[-build]-py-abi-platform.whl``, if it has that shape."""
    stem = filename[:-4] if filename.lower().endswith(".whl") else filename
    parts = stem.split("-")
    if len(parts) not in (5, 6):
        return None
    return parts[0], parts[1]


def _dist_info_matches(directory: str, name: str, version: str) -> bool:
    # Neither part may contain "-" once escaped (PEP 427), so the last "-" splits
    # them even for legacy names that kept a dash.
    dir_name, sep, dir_version = directory[: -len(_DIST_INFO_SUFFIX)].rpartition("-")
    if not sep:
        return False
    return canonicalize_name(dir_name) == canonicalize_name(name) and _same_version(dir_version, version)


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a.replace("-", "_").lower() == b.replace("-", "_").lower()

"""Deterministic builders for wheels and sdists used by the integration tests.

The integration tests need real distribution files that pip, uv and twine
accept, without running a build backend or touching the network. Everything
here is written with ``zipfile``/``tarfile`` directly, with fixed timestamps,
so the same arguments always give byte-identical files (tests rely on that for
"identical re-upload" and compare hashes).

File names follow the current normalisation rules: the distribution part of a
wheel (PEP 427, as amended by the binary distribution format spec) and of an
sdist (PEP 625) is the PEP 503 normalised name with ``-`` replaced by ``_``;
the version is PEP 440 normalised.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

# Zip cannot represent dates before 1980; a fixed date makes builds reproducible.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# 2020-01-01T00:00:00Z for tar members and the gzip header.
_TAR_MTIME = 1577836800
_CHUNK_BYTES = 1 << 20


def normalize_name(name: str) -> str:
    """PEP 503 normalisation (``My.Pkg_x`` -> ``my-pkg-x``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def filename_name(name: str) -> str:
    """The distribution component of wheel and sdist file names (``my_pkg``)."""
    return normalize_name(name).replace("-", "_")


def normalize_version(version: str) -> str:
    return str(Version(version))


def import_name(name: str) -> str:
    """The top-level module our builders put into a distribution."""
    return filename_name(name)


def wheel_filename(name: str, version: str) -> str:
    return f"{filename_name(name)}-{normalize_version(version)}-py3-none-any.whl"


def sdist_filename(name: str, version: str) -> str:
    return f"{filename_name(name)}-{normalize_version(version)}.tar.gz"


def metadata_text(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str = "",
) -> str:
    """Core metadata (Metadata-Version 2.1) as written to METADATA / PKG-INFO."""
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {normalize_version(version)}",
    ]
    if summary:
        lines.append(f"Summary: {summary}")
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    return "\n".join(lines) + "\n\n"


def _record_hash(data: bytes) -> str:
    return _record_digest(hashlib.sha256(data).digest())


def _record_digest(digest: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _zip_info(arcname: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def _module_source(name: str, version: str) -> bytes:
    return f'"""Test distribution {name}."""\n__version__ = "{normalize_version(version)}"\n'.encode()


@dataclass(frozen=True)
class BuiltWheel:
    """What a test may want to know about a wheel besides its path."""

    path: Path
    metadata: bytes
    sha256: str


def _wheel_members(
    name: str,
    version: str,
    *,
    requires_python: str | None,
    requires_dist: Iterable[str],
    summary: str,
    extra_files: Mapping[str, bytes | str],
) -> tuple[str, list[tuple[str, bytes]]]:
    """All members of a pure-python wheel except RECORD, in archive order."""
    dist_info = f"{filename_name(name)}-{normalize_version(version)}.dist-info"
    pkg = import_name(name)
    members: list[tuple[str, bytes]] = [(f"{pkg}/__init__.py", _module_source(name, version))]
    for rel, content in sorted(extra_files.items()):
        members.append((rel, content.encode() if isinstance(content, str) else content))
    metadata = metadata_text(
        name, version, requires_python=requires_python, requires_dist=requires_dist, summary=summary
    ).encode()
    wheel = b"Wheel-Version: 1.0\nGenerator: devpitx-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members.append((f"{dist_info}/METADATA", metadata))
    members.append((f"{dist_info}/WHEEL", wheel))
    return dist_info, members


def build_wheel_info(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str = "",
    extra_files: Mapping[str, bytes | str] | None = None,
) -> BuiltWheel:
    """Like :func:`build_wheel`, also returning METADATA bytes and the file's sha256."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dist_info, members = _wheel_members(
        name,
        version,
        requires_python=requires_python,
        requires_dist=requires_dist,
        summary=summary,
        extra_files=extra_files or {},
    )
    record = "".join(f"{rel},{_record_hash(data)},{len(data)}\n" for rel, data in members)
    record += f"{dist_info}/RECORD,,\n"
    members.append((f"{dist_info}/RECORD", record.encode()))
    path = dest_dir / wheel_filename(name, version)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in members:
            zf.writestr(_zip_info(rel, zipfile.ZIP_DEFLATED), data)
    metadata = dict(members)[f"{dist_info}/METADATA"]
    return BuiltWheel(path, metadata, hashlib.sha256(path.read_bytes()).hexdigest())


def build_wheel(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str = "",
    extra_files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``dest_dir`` and return its path.

    The wheel contains ``<pkg>/__init__.py`` (with ``__version__``), any
    ``extra_files`` (archive path -> content; use them to make two builds of the
    same name and version differ), and a ``.dist-info`` with METADATA, WHEEL and
    a RECORD listing correct sha256 digests.
    """
    return build_wheel_info(
        dest_dir,
        name,
        version,
        requires_python=requires_python,
        requires_dist=requires_dist,
        summary=summary,
        extra_files=extra_files,
    ).path


def wheel_metadata(path: Path) -> bytes:
    """The ``*.dist-info/METADATA`` bytes of a wheel file."""
    with zipfile.ZipFile(path) as zf:
        (member,) = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        return zf.read(member)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


# A complete PEP 517 backend shipped inside each sdist (``backend-path``), so
# that pip and uv can build the sdist with *no* build requirements: the tests
# must never need a registry to install what they uploaded. It only knows how
# to turn this sdist's one package into a wheel.
_BACKEND_SOURCE = '''\
"""Minimal in-tree PEP 517 backend for devpitx test sdists."""
import base64, hashlib, os, zipfile

def _meta():
    with open("PKG-INFO", "rb") as f:
        data = f.read()
    fields = dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)
    return data, fields["Name"], fields["Version"]

def _fname(name):
    out = []
    for ch in name.lower():
        out.append("_" if ch in "-_." else ch)
    return "".join(out)

def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def get_requires_for_build_wheel(config_settings=None):
    return []

def get_requires_for_build_sdist(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    metadata, name, version = _meta()
    stem = _fname(name)
    dist_info = f"{stem}-{version}.dist-info"
    members = []
    for root, _dirs, files in os.walk(stem):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            with open(path, "rb") as f:
                members.append((path.replace(os.sep, "/"), f.read()))
    members.append((dist_info + "/METADATA", metadata))
    members.append((dist_info + "/WHEEL", b"Wheel-Version: 1.0\\nGenerator: devpitx-test-backend\\n"
                    b"Root-Is-Purelib: true\\nTag: py3-none-any\\n"))
    record = "".join(f"{p},{_digest(d)},{len(d)}\\n" for p, d in members) + dist_info + "/RECORD,,\\n"
    members.append((dist_info + "/RECORD", record.encode()))
    filename = f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for path, data in members:
            zf.writestr(path, data)
    return filename
'''


def build_sdist(
    dest_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str = "",
    extra_files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """Write ``<name>-<version>.tar.gz`` (PEP 625 name) into ``dest_dir``.

    The sdist holds PKG-INFO, a pyproject.toml whose build backend lives inside
    the sdist itself (no build requirements, so it builds offline), the backend
    and ``<pkg>/__init__.py``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{filename_name(name)}-{normalize_version(version)}"
    pkg = import_name(name)
    pyproject = (
        "[build-system]\n"
        "requires = []\n"
        'build-backend = "devpitx_test_backend"\n'
        'backend-path = ["_backend"]\n'
    )
    members: list[tuple[str, bytes]] = [
        (
            "PKG-INFO",
            metadata_text(
                name, version, requires_python=requires_python, requires_dist=requires_dist, summary=summary
            ).encode(),
        ),
        ("pyproject.toml", pyproject.encode()),
        ("_backend/devpitx_test_backend.py", _BACKEND_SOURCE.encode()),
        (f"{pkg}/__init__.py", _module_source(name, version)),
    ]
    for rel, content in sorted((extra_files or {}).items()):
        members.append((rel, content.encode() if isinstance(content, str) else content))
    path = dest_dir / sdist_filename(name, version)
    with open(path, "wb") as raw:
        # The gzip header holds an mtime and a file name; fix both for reproducibility.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, data in members:
                    info = tarfile.TarInfo(f"{stem}/{rel}")
                    info.size = len(data)
                    info.mtime = _TAR_MTIME
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
    return path


def build_big_wheel(dest_dir: Path, name: str, version: str, size_bytes: int) -> Path:
    """Write a wheel with one incompressible file of ``size_bytes`` bytes.

    The payload is streamed in 1 MiB chunks from a generator seeded by name and
    version (same arguments -> same file) and stored uncompressed, so memory
    use stays at one chunk however large the wheel is, and the file is about
    ``size_bytes`` long on disk.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dist_info, members = _wheel_members(
        name, version, requires_python=None, requires_dist=(), summary="big test wheel", extra_files={}
    )
    payload_name = f"{import_name(name)}/payload.bin"
    rng = random.Random(f"{normalize_name(name)}=={normalize_version(version)}")
    path = dest_dir / wheel_filename(name, version)
    digest = hashlib.sha256()
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        with zf.open(_zip_info(payload_name, zipfile.ZIP_STORED), "w", force_zip64=True) as out:
            remaining = size_bytes
            while remaining > 0:
                chunk = rng.randbytes(min(_CHUNK_BYTES, remaining))
                digest.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
        record_lines = [f"{payload_name},{_record_digest(digest.digest())},{size_bytes}\n"]
        for rel, data in members:
            zf.writestr(_zip_info(rel, zipfile.ZIP_DEFLATED), data)
            record_lines.append(f"{rel},{_record_hash(data)},{len(data)}\n")
        record_lines.append(f"{dist_info}/RECORD,,\n")
        zf.writestr(_zip_info(f"{dist_info}/RECORD", zipfile.ZIP_DEFLATED), "".join(record_lines))
    return path

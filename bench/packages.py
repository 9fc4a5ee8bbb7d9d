"""Deterministic benchmark packages: valid sdists and wheels built in memory (or streamed to disk).

Both servers must receive byte-identical data, so every archive is a pure
function of (name, version, payload size): fixed timestamps, fixed owners, and
payload bytes from a seeded PRNG. The payload is incompressible on purpose: a
"100 KB file" must really put 100 KB on the wire, whatever the compression.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# 1980-01-01 is the earliest date a zip entry can carry; tar gets the epoch.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK_BYTES = 1 << 20
SUMMARY = "devpitx benchmark package"


@dataclass(frozen=True)
class Dist:
    """One release file and the upload form fields that describe it."""

    name: str
    version: str
    filename: str
    filetype: str  # "sdist" or "bdist_wheel", as twine sends it
    pyversion: str
    content: bytes
    requires_python: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def escaped_name(name: str) -> str:
    """The file-name form of a project name (PEP 427/625): runs of other characters become '_'."""
    return re.sub(r"[^\w\d.]+", "_", name, flags=re.UNICODE)


def payload(seed: str, size: int) -> bytes:
    """``size`` deterministic, incompressible bytes."""
    return random.Random(seed).randbytes(size)


def iter_payload(seed: str, size: int, chunk: int = _CHUNK_BYTES) -> Iterator[bytes]:
    """The same bytes as ``payload(seed, size)`` in chunks, for files too big to hold in memory.

    ``Random.randbytes`` draws 32-bit words, so chunks of a multiple of 4
    bytes reproduce the one-shot sequence exactly.
    """
    assert chunk % 4 == 0
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def core_metadata(name: str, version: str, requires_python: str = "", requires_dist: Sequence[str] = ()) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {SUMMARY}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {req}" for req in requires_dist]
    return "\n".join(lines) + "\n\n"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"sha256={digest}"


def _zip_info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # the payload is random: compressing it is wasted CPU
    info.external_attr = 0o644 << 16
    return info


def _wheel_members(name: str, version: str, requires_python: str,
                   requires_dist: Sequence[str] = ()) -> tuple[str, list[tuple[str, bytes]]]:
    base = escaped_name(name)
    distinfo = f"{base}-{version}.dist-info"
    members = [
        (f"{base}/__init__.py", f'"""{SUMMARY}."""\n__version__ = "{version}"\n'.encode()),
        (f"{distinfo}/METADATA", core_metadata(name, version, requires_python, requires_dist).encode()),
        (f"{distinfo}/WHEEL",
         b"Wheel-Version: 1.0\nGenerator: devpitx-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n\n"),
    ]
    return distinfo, members


def wheel_filename(name: str, version: str) -> str:
    return f"{escaped_name(name)}-{version}-py3-none-any.whl"


def make_wheel(name: str, version: str, payload_bytes: int = 0, requires_python: str = "",
               requires_dist: Sequence[str] = ()) -> Dist:
    """A valid py3-none-any wheel whose package carries ``payload_bytes`` of data."""
    base = escaped_name(name)
    distinfo, members = _wheel_members(name, version, requires_python, requires_dist)
    if payload_bytes:
        members.insert(1, (f"{base}/data.bin", payload(f"{name}-{version}-whl", payload_bytes)))
    record = "".join(f"{arc},{_record_hash(data)},{len(data)}\n" for arc, data in members)
    record += f"{distinfo}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc, data in members:
            zf.writestr(_zip_info(arc), data)
        zf.writestr(_zip_info(f"{distinfo}/RECORD"), record.encode())
    return Dist(name, version, wheel_filename(name, version), "bdist_wheel", "py3", buf.getvalue(),
                requires_python)


def write_big_wheel(path: Path, name: str, version: str, payload_bytes: int) -> str:
    """Stream a wheel with a ``payload_bytes`` data member to ``path``; return its sha256.

    Used for the 50 MB and 300 MB files, which should not be built in memory
    (the harness must not compete with the servers for RAM while measuring
    their RSS).
    """
    base = escaped_name(name)
    distinfo, members = _wheel_members(name, version, "")
    data_arc = f"{base}/data.bin"
    data_hash = hashlib.sha256()
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        with zf.open(_zip_info(data_arc), "w", force_zip64=True) as out:
            for chunk in iter_payload(f"{name}-{version}-whl", payload_bytes):
                data_hash.update(chunk)
                out.write(chunk)
        for arc, data in members:
            zf.writestr(_zip_info(arc), data)
        digest = base64.urlsafe_b64encode(data_hash.digest()).rstrip(b"=").decode("ascii")
        record = f"{data_arc},sha256={digest},{payload_bytes}\n"
        record += "".join(f"{arc},{_record_hash(data)},{len(data)}\n" for arc, data in members)
        record += f"{distinfo}/RECORD,,\n"
        zf.writestr(_zip_info(f"{distinfo}/RECORD"), record.encode())
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def sdist_filename(name: str, version: str) -> str:
    return f"{escaped_name(name)}-{version}.tar.gz"


def make_sdist(name: str, version: str, payload_bytes: int = 0, requires_python: str = "") -> Dist:
    """A valid .tar.gz sdist (PKG-INFO, pyproject.toml, package source) with optional payload."""
    base = f"{escaped_name(name)}-{version}"
    module = escaped_name(name)
    pyproject = (
        "[build-system]\nrequires = [\"setuptools>=69\"]\nbuild-backend = \"setuptools.build_meta\"\n\n"
        f"[project]\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"{SUMMARY}\"\n"
    )
    if requires_python:
        pyproject += f"requires-python = \"{requires_python}\"\n"
    members = [
        (f"{base}/PKG-INFO", core_metadata(name, version, requires_python).encode()),
        (f"{base}/pyproject.toml", pyproject.encode()),
        (f"{base}/src/{module}/__init__.py", f'__version__ = "{version}"\n'.encode()),
    ]
    if payload_bytes:
        members.append((f"{base}/src/{module}/data.bin", payload(f"{name}-{version}-sdist", payload_bytes)))
    raw = io.BytesIO()
    # mtime=0 in the gzip header too, or the archive differs from run to run.
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for arc, data in members:
                info = tarfile.TarInfo(arc)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return Dist(name, version, sdist_filename(name, version), "sdist", "source", raw.getvalue(), requires_python)

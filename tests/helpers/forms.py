"""Upload request bodies for in-process tests: multipart forms as twine builds them, and small wheels."""
from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence

BOUNDARY = "devpitx-test-boundary-7d93a1"


def multipart(fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]] = (),
              boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """(body, content-type) of a multipart/form-data body."""
    out = io.BytesIO()
    for name, value in fields:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, filename, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def wheel_bytes(name: str, version: str, *, requires_python: str | None = None, summary: str = "",
                payload: bytes = b"") -> tuple[str, bytes, bytes]:
    """(filename, wheel bytes, METADATA bytes) of a minimal valid wheel."""
    dist = name.replace("-", "_")
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n"
    if requires_python:
        metadata += f"Requires-Python: {requires_python}\n"
    metadata_bytes = metadata.encode()
    files = {
        f"{dist}/__init__.py": b"VALUE = 1\n" + payload,
        f"{dist}-{version}.dist-info/METADATA": metadata_bytes,
        f"{dist}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for path, data in files.items())
    record += f"{dist}-{version}.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path, data in files.items():
            zf.writestr(zipfile.ZipInfo(path, (2024, 1, 1, 0, 0, 0)), data)
        zf.writestr(zipfile.ZipInfo(f"{dist}-{version}.dist-info/RECORD", (2024, 1, 1, 0, 0, 0)), record)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue(), metadata_bytes


def upload_fields(name: str, version: str, content: bytes, *, action: str = "file_upload",
                  extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [
        (":action", action), ("protocol_version", "1"), ("metadata_version", "2.1"),
        ("name", name), ("version", version),
        ("sha256_digest", hashlib.sha256(content).hexdigest()),
        ("blake2_256_digest", hashlib.blake2b(content, digest_size=32).hexdigest()),
        *extra,
    ]

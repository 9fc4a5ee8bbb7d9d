"""Tests for devpitx.model.distmeta: METADATA bytes out of uploaded wheels."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from devpitx.model.distmeta import MAX_METADATA_BYTES, ArchiveError, wheel_core_metadata

METADATA = (
    b"Metadata-Version: 2.1\r\nName: Foo_Bar\nVersion: 1.0\n"
    b"Summary: caf\xc3\xa9\nDescription-Content-Type: text/markdown\n\n# Foo\n\ntrailing spaces   \n"
)
WHEEL = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def build_wheel(
    tmp_path: Path,
    members: dict[str, bytes],
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path = tmp_path / "upload.whl"
    path.write_bytes(buf.getvalue())
    return path


def wheel_members(dist_info: str, metadata: bytes | None = METADATA) -> dict[str, bytes]:
    members = {"foo_bar/__init__.py": b"VALUE = 1\n"}
    if metadata is not None:
        members[f"{dist_info}/METADATA"] = metadata
    members[f"{dist_info}/WHEEL"] = WHEEL
    members[f"{dist_info}/RECORD"] = b"foo_bar/__init__.py,,\n" + f"{dist_info}/RECORD,,\n".encode()
    return members


def test_returns_exact_metadata_bytes(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info"))
    assert wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl") == METADATA


def test_stored_member_without_compression(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info"), compression=zipfile.ZIP_STORED)
    assert wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl") == METADATA


@pytest.mark.parametrize(
    ("dist_info", "filename"),
    [
        ("Foo_Bar-1.0.dist-info", "foo_bar-1.0-py3-none-any.whl"),
        ("foo_bar-1.0.dist-info", "Foo_Bar-1.0-py3-none-any.whl"),
        ("Foo.Bar-1.0.dist-info", "foo_bar-1.0-py3-none-any.whl"),
        ("foo_bar-1.0.0.dist-info", "foo_bar-1.0-py3-none-any.whl"),  # PEP 440 equal versions
        ("foo_bar-1.0.dist-info", "foo_bar-1.0-1build-py3-none-any.whl"),  # build tag
        ("foo_bar-1.0+local.1.dist-info", "foo_bar-1.0+local.1-cp311-cp311-manylinux_2_17_x86_64.whl"),
        ("foo_bar-1.0.dist-info", "FOO_BAR-1.0-py3-none-any.WHL"),
    ],
)
def test_dist_info_matches_with_normalisation(tmp_path: Path, dist_info: str, filename: str) -> None:
    # A decoy dist-info of a vendored project proves the match is by name, not by "only one".
    members = wheel_members(dist_info) | wheel_members("vendored-2.0.dist-info", metadata=b"Name: vendored\n")
    path = build_wheel(tmp_path, members)
    assert wheel_core_metadata(path, filename) == METADATA


def test_falls_back_to_the_only_dist_info(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-0.9.dist-info"))
    assert wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl") == METADATA
    assert wheel_core_metadata(path, "not-a-wheel-name.whl") == METADATA


def test_nested_dist_info_is_not_top_level(tmp_path: Path) -> None:
    members = wheel_members("foo_bar-1.0.dist-info")
    members["foo_bar/_vendor/foo_bar-1.0.dist-info/METADATA"] = b"Name: wrong\n"
    path = build_wheel(tmp_path, members)
    assert wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl") == METADATA


def test_missing_metadata(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info", metadata=None))
    with pytest.raises(ArchiveError, match=r"foo_bar-1.0.dist-info/METADATA is missing"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_metadata_in_other_case_is_missing(tmp_path: Path) -> None:
    members = wheel_members("foo_bar-1.0.dist-info", metadata=None)
    members["foo_bar-1.0.dist-info/metadata"] = METADATA
    path = build_wheel(tmp_path, members)
    with pytest.raises(ArchiveError, match="METADATA is missing"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a zip file", b"PK\x03\x04" + b"\x00" * 100, b"\x1f\x8b\x08\x00" + b"\x00" * 100],
)
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.whl"
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match="pkg-1.0-py3-none-any.whl: not a valid zip file"):
        wheel_core_metadata(path, "pkg-1.0-py3-none-any.whl")


def test_truncated_zip(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info"))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match="not a valid zip file"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_corrupt_metadata_member(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info"), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    start = data.index(METADATA)
    data[start] ^= 0xFF  # CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="cannot read foo_bar-1.0.dist-info/METADATA"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_unsupported_compression_method(tmp_path: Path) -> None:
    member = "foo_bar-1.0.dist-info/METADATA"
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info"), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    # Central directory record of METADATA: method at +10, name length at +28, name at +46.
    pos = data.index(b"PK\x01\x02")
    while data[pos + 46: pos + 46 + int.from_bytes(data[pos + 28: pos + 30], "little")] != member.encode():
        pos = data.index(b"PK\x01\x02", pos + 4)
    data[pos + 10: pos + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=f"cannot read {member}"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_no_dist_info(tmp_path: Path) -> None:
    path = build_wheel(tmp_path, {"foo_bar/__init__.py": b"", "foo_bar-1.0.data/scripts/x": b""})
    with pytest.raises(ArchiveError, match="no .dist-info directory$"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_two_dist_info_dirs_none_matching(tmp_path: Path) -> None:
    members = wheel_members("other-1.0.dist-info") | wheel_members("foo_bar-2.0.dist-info")
    path = build_wheel(tmp_path, members)
    with pytest.raises(ArchiveError, match="no .dist-info directory matches the file name"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_two_matching_dist_info_dirs(tmp_path: Path) -> None:
    members = wheel_members("foo_bar-1.0.dist-info") | wheel_members("Foo.Bar-1.0.dist-info")
    path = build_wheel(tmp_path, members)
    with pytest.raises(ArchiveError, match="several .dist-info directories match"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


def test_metadata_at_the_size_limit_is_accepted(tmp_path: Path) -> None:
    big = b"Name: foo_bar\n" + b"a" * (MAX_METADATA_BYTES - 14)
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info", metadata=big))
    assert wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl") == big


def test_huge_metadata_is_refused(tmp_path: Path) -> None:
    huge = b"a" * (MAX_METADATA_BYTES + 1)
    path = build_wheel(tmp_path, wheel_members("foo_bar-1.0.dist-info", metadata=huge))
    assert path.stat().st_size < 1024 * 1024  # deflate: a small upload that inflates past the limit
    with pytest.raises(ArchiveError, match="METADATA is larger than 16777216 bytes"):
        wheel_core_metadata(path, "foo_bar-1.0-py3-none-any.whl")


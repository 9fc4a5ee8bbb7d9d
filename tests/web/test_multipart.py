"""Tests for devpitx.web.multipart: upload bodies as twine and devpi-client send them."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest
import requests_toolbelt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpitx.web import multipart
from devpitx.web.multipart import FormError, ParsedForm, UploadedFile, parse_form

BOUNDARY = "5b1d2c3e4f0a9876"
CT = f"multipart/form-data; boundary={BOUNDARY}"
URLENCODED = "application/x-www-form-urlencoded"

# Every byte value, CR/LF runs and near-misses of the delimiter: what a wheel
# or sdist may legitimately contain.
BINARY = (
    bytes(range(256))
    + b"\r\n\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"
    + b"x--" + BOUNDARY.encode() + b"\r\n"  # boundary text without the leading CRLF
    + b"\r\n--" + BOUNDARY.encode() + b"X\r\n"  # delimiter followed by something else
    + b"\r\n-\r\n--\r"
)

Part = tuple[str, bytes, str | None]  # name, body, filename (None: plain field)


def field(name: str, value: str | bytes) -> Part:
    return (name, value.encode() if isinstance(value, str) else value, None)


def file_part(name: str, filename: str, data: bytes) -> Part:
    return (name, data, filename)


def encode(parts: Iterable[Part], boundary: str = BOUNDARY) -> bytes:
    out = bytearray()
    for name, data, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def raw_part(headers: bytes, data: bytes) -> bytes:
    return b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"


CLOSE = b"--" + BOUNDARY.encode() + b"--\r\n"


class TrickleBody(io.BytesIO):
    """A spooled body whose reads return at most ``step`` bytes, like a raw stream may."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self._step = step

    def read(self, size: int | None = -1) -> bytes:
        limit = self._step if size is None or size < 0 else min(size, self._step)
        return super().read(limit)


def parse(data: bytes, tmp: Path, content_type: str = CT, **limits: int) -> ParsedForm:
    body = io.BytesIO(data)
    body.seek(0, os.SEEK_END)  # the spooled body is left at its end by Twisted
    return parse_form(body, content_type, tmp, **limits)


def twine_parts(content: bytes) -> list[Part]:
    return [
        field("name", "pkg5"),
        field("version", "1.0"),
        field("filetype", "bdist_wheel"),
        field("pyversion", "py3"),
        field("metadata_version", "2.1"),
        field("summary", "Ünïcode summary ✓"),
        field("classifiers", "Programming Language :: Python :: 3"),
        field("classifiers", "License :: OSI Approved :: MIT License"),
        field("classifiers", "Operating System :: OS Independent"),
        field("md5_digest", hashlib.md5(content).hexdigest()),
        field("sha256_digest", hashlib.sha256(content).hexdigest()),
        field("blake2_256_digest", hashlib.blake2b(content, digest_size=32).hexdigest()),
        field(":action", "file_upload"),
        field("protocol_version", "1"),
        file_part("content", "pkg5-1.0-py3-none-any.whl", content),
    ]


def summary(form: ParsedForm) -> tuple[dict[str, tuple[str, ...]], dict[str, list[tuple[str, str, bytes]]]]:
    """The form's observable content, independent of temp file names."""
    files = {k: [(f.field_name, f.filename, f.path.read_bytes()) for f in v] for k, v in form.files.items()}
    return {k: tuple(v) for k, v in form.fields.items()}, files


# -- successful parses ------------------------------------------------------


def test_twine_upload_fields_and_file(tmp_path: Path) -> None:
    form = parse(encode(twine_parts(BINARY)), tmp_path)
    assert form.first(":action") == "file_upload"
    assert form.first("protocol_version") == "1"
    assert form.first("summary") == "Ünïcode summary ✓"
    assert form.fields["classifiers"] == (
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Operating System :: OS Independent",
    )
    assert "content" not in form.fields
    assert form.first("content") is None and form.first("missing") is None
    assert form.file("missing") is None and form.file("name") is None

    content = form.file("content")
    assert content is not None
    assert content.field_name == "content"
    assert content.filename == "pkg5-1.0-py3-none-any.whl"
    assert content.path.parent == tmp_path and content.path.name.startswith("upload-")
    assert content.path.read_bytes() == BINARY
    assert content.size == len(BINARY)
    assert content.sha256 == form.first("sha256_digest")
    assert content.blake2b_256 == form.first("blake2_256_digest")
    assert content.md5 == form.first("md5_digest")
    assert list(tmp_path.iterdir()) == [content.path]


def test_real_twine_encoder_output_parses(tmp_path: Path) -> None:
    # twine builds its body with requests_toolbelt.MultipartEncoder from (name, value) tuples.
    parts: list[tuple[str, object]] = [(n, d.decode()) for n, d, f in twine_parts(BINARY) if f is None]
    parts.append(("content", ("pkg5-1.0-py3-none-any.whl", io.BytesIO(BINARY), "application/octet-stream")))
    encoder = requests_toolbelt.MultipartEncoder(parts)
    form = parse(encoder.to_string(), tmp_path, content_type=encoder.content_type)
    assert form.fields["classifiers"][1] == "License :: OSI Approved :: MIT License"
    assert form.first("summary") == "Ünïcode summary ✓"
    content = form.file("content")
    assert content is not None and content.path.read_bytes() == BINARY
    assert content.sha256 == hashlib.sha256(BINARY).hexdigest()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 19, 64, 1000])
def test_body_split_across_many_reads(tmp_path: Path, step: int) -> None:
    data = encode(twine_parts(BINARY * 3))
    expected = summary(parse(data, tmp_path))
    form = parse_form(TrickleBody(data, step), CT, tmp_path)
    assert summary(form) == expected


def test_chunk_size_smaller_than_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The module's own read size: delimiters and headers always straddle reads.
    monkeypatch.setattr(multipart, "CHUNK_BYTES", 5)
    data = encode(twine_parts(BINARY))
    form = parse(data, tmp_path)
    content = form.file("content")
    assert content is not None and content.path.read_bytes() == BINARY
    assert form.fields["classifiers"][2] == "Operating System :: OS Independent"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\r\n",
        b"\r",
        b"\n",
        b"\r\n\r\n",
        b"--" + BOUNDARY.encode(),
        b"--" + BOUNDARY.encode() + b"--",
        b"x\r\n--" + BOUNDARY.encode()[:5],
        b"\r\n--" + BOUNDARY.encode() + b"-",
        b"ends with cr\r",
        b"data--" + BOUNDARY.encode() + b"--\r\nmore",
    ],
)
def test_crlf_and_boundary_prefix_edge_cases(tmp_path: Path, payload: bytes) -> None:
    form = parse(encode([file_part("content", "a.tar.gz", payload), field("note", payload)]), tmp_path)
    content = form.file("content")
    assert content is not None and content.path.read_bytes() == payload
    assert content.size == len(payload)
    assert form.first("note") == payload.decode()


def test_boundary_quoted_and_header_case_insensitive(tmp_path: Path) -> None:
    boundary = "----=_Part 0:abc"  # needs quoting: contains space and ':'
    data = encode([field("name", "pkg"), file_part("content", "pkg-1.zip", b"zz")], boundary=boundary)
    form = parse(data, tmp_path, content_type=f'Multipart/Form-Data; charset=utf-8; Boundary="{boundary}"')
    assert form.first("name") == "pkg"
    content = form.file("content")
    assert content is not None and content.path.read_bytes() == b"zz"


def test_part_header_names_case_and_whitespace(tmp_path: Path) -> None:
    body = raw_part(b'content-disposition:form-data;name="a"', b"1") + raw_part(
        b'CONTENT-DISPOSITION:   Form-Data ;  name = "b" ; filename = "b.whl"  ', b"2"
    ) + CLOSE
    form = parse(body, tmp_path)
    assert form.first("a") == "1"
    b = form.file("b")
    assert b is not None and b.filename == "b.whl" and b.path.read_bytes() == b"2"


def test_epilogue_after_closing_boundary_is_ignored(tmp_path: Path) -> None:
    form = parse(encode([field("a", "1")]) + b"trailing epilogue\r\n", tmp_path)
    assert dict(form.fields) == {"a": ("1",)}


def test_empty_form(tmp_path: Path) -> None:
    form = parse(CLOSE, tmp_path)
    assert dict(form.fields) == {} and dict(form.files) == {}


def test_empty_field_and_empty_file(tmp_path: Path) -> None:
    form = parse(encode([field("version", ""), file_part("content", "", b"")]), tmp_path)
    assert form.first("version") == ""
    content = form.file("content")
    assert content is not None and content.filename == "" and content.size == 0
    assert content.sha256 == hashlib.sha256(b"").hexdigest()


def test_repeated_file_fields_keep_order(tmp_path: Path) -> None:
    form = parse(encode([file_part("content", "a.zip", b"A"), field("x", "1"),
                         file_part("content", "b.zip", b"B"), file_part("gpg_signature", "a.zip.asc", b"S")]),
                 tmp_path)
    assert [f.filename for f in form.files["content"]] == ["a.zip", "b.zip"]
    assert [f.path.read_bytes() for f in form.files["content"]] == [b"A", b"B"]
    sig = form.file("gpg_signature")
    assert sig is not None and sig.path.read_bytes() == b"S"
    assert len(set(tmp_path.iterdir())) == 3


@pytest.mark.parametrize(
    ("disposition", "filename"),
    [
        (b'form-data; name="content"; filename="dir/sub/pkg-1.0.tar.gz"', "dir/sub/pkg-1.0.tar.gz"),
        (b'form-data; name="content"; filename="C:\\dist\\pkg-1.0.zip"', "C:\\dist\\pkg-1.0.zip"),
        (b'form-data; name="content"; filename="say \\"hi\\" ; x.zip"', 'say "hi" ; x.zip'),
        (b'form-data; name="content"; filename=plain-1.0.zip', "plain-1.0.zip"),
        ('form-data; name="content"; filename="caf\u00e9-1.0.zip"'.encode(), "caf\u00e9-1.0.zip"),
        (b"form-data; name=\"content\"; filename*=UTF-8''%E2%82%AC-1.0.zip", "\u20ac-1.0.zip"),
        (b"form-data; name=\"content\"; filename*=iso-8859-1'en'%E9t%E9-1.zip", "\u00e9t\u00e9-1.zip"),
        # RFC 6266: the extended parameter wins over the plain one, in either order.
        (b"form-data; name=\"content\"; filename=\"fallback.zip\"; filename*=UTF-8''real%20name.zip",
         "real name.zip"),
        (b"form-data; name=\"content\"; filename*=UTF-8''real.zip; filename=\"fallback.zip\"", "real.zip"),
    ],
)
def test_filename_as_sent(tmp_path: Path, disposition: bytes, filename: str) -> None:
    form = parse(raw_part(b"Content-Disposition: " + disposition, b"data") + CLOSE, tmp_path)
    content = form.file("content")
    assert content is not None and content.filename == filename
    assert content.path.parent == tmp_path  # the client's name never picks the temp path


def test_utf8_field_names(tmp_path: Path) -> None:
    form = parse(encode([field("ñame", "välue")]), tmp_path)
    assert form.first("ñame") == "välue"


# -- urlencoded ---------------------------------------------------------------


def test_urlencoded_form(tmp_path: Path) -> None:
    data = b":action=submit&name=pkg&classifiers=A+%3A%3A+B&classifiers=C&summary=caf%C3%A9+%26+more&empty=&bare"
    form = parse(data, tmp_path, content_type=URLENCODED + "; charset=utf-8")
    assert form.first(":action") == "submit"
    assert form.fields["classifiers"] == ("A :: B", "C")
    assert form.first("summary") == "café & more"
    assert form.first("empty") == "" and form.first("bare") == ""
    assert dict(form.files) == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", [1, 2, 5])
def test_urlencoded_split_reads(tmp_path: Path, step: int) -> None:
    data = b"name=pkg&summary=caf%C3%A9+x&name=two"
    form = parse_form(TrickleBody(data, step), URLENCODED, tmp_path)
    assert dict(form.fields) == {"name": ("pkg", "two"), "summary": ("café x",)}


def test_urlencoded_invalid_utf8(tmp_path: Path) -> None:
    with pytest.raises(FormError, match="not valid UTF-8"):
        parse(b"summary=%FF%FE", tmp_path, content_type=URLENCODED)
    with pytest.raises(FormError, match="not valid UTF-8"):
        parse(b"%FF=1", tmp_path, content_type=URLENCODED)


def test_urlencoded_limits(tmp_path: Path) -> None:
    with pytest.raises(FormError, match="form fields too large"):
        parse(b"a=" + b"x" * 200, tmp_path, content_type=URLENCODED, max_total_field_bytes=100)
    with pytest.raises(FormError, match="^field 'big' too large$"):
        parse(b"small=1&big=" + b"x" * 50, tmp_path, content_type=URLENCODED, max_field_bytes=20)
    with pytest.raises(FormError, match="too many parts"):
        parse(b"a=1&b=2&c=3", tmp_path, content_type=URLENCODED, max_parts=2)
    assert parse(b"a=1&b=2", tmp_path, content_type=URLENCODED, max_parts=2).first("b") == "2"


# -- malformed and oversized bodies --------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("application/json", "unsupported form content type 'application/json'"),
        ("", "unsupported form content type ''"),
        ("text/plain; boundary=x", "unsupported form content type 'text/plain'"),
        ("multipart/form-data", "multipart form without boundary"),
        ("multipart/form-data; boundary=", "multipart form without boundary"),
        ('multipart/form-data; boundary="', "unterminated quoted string"),
        ("multipart/form-data; boundary=b\u00e4d", "boundary is not ASCII"),
        ("multipart/form-data; boundary=" + "b" * 300, "malformed form body"),
    ],
)
def test_bad_content_type(tmp_path: Path, content_type: str, message: str) -> None:
    with pytest.raises(FormError, match=message):
        parse(encode([field("a", "1")]), tmp_path, content_type=content_type)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "ends before the closing multipart boundary"),
        (b"this is not a multipart body at all", "malformed form body"),
        (b"--other-boundary\r\n\r\n", "malformed form body"),
        (raw_part(b'Content-Disposition: form-data; name="a"', b"1"), "ends before the closing"),
        (raw_part(b'Content-Disposition: form-data; name="a"', b"1")[:-10], "ends before the closing"),
        (b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; na", "ends before the closing"),
        (raw_part(b"Content-Type: text/plain", b"1") + CLOSE, "without Content-Disposition header"),
        (raw_part(b'Content-Disposition: form-data; filename="x.zip"', b"1") + CLOSE, "without a field name"),
        (raw_part(b'Content-Disposition: attachment; name="a"', b"1") + CLOSE, "expected 'form-data'"),
        (raw_part(b"Bad Header: x", b"1") + CLOSE, "malformed form body"),
        (raw_part(b'Content-Disposition: form-data; name="a"\r\nContent-Transfer-Encoding: base64', b"MQ==")
         + CLOSE, "unsupported Content-Transfer-Encoding 'base64'"),
        (raw_part(b"Content-Disposition: form-data; name=\"c\"; filename*=koi8-r''x", b"1") + CLOSE,
         "invalid extended header parameter"),
        (raw_part(b"Content-Disposition: form-data; name=\"c\"; filename*=nonsense", b"1") + CLOSE,
         "invalid extended header parameter"),
        (raw_part(b"Content-Disposition: form-data; name=\"c\"; filename*=UTF-8''%FF", b"1") + CLOSE,
         "invalid extended header parameter"),
        (raw_part(b'Content-Disposition: form-data; name="a"', b"\xff\xfe") + CLOSE,
         "field 'a' is not valid UTF-8"),
        (raw_part(b'Content-Disposition: form-data; name="\xff"', b"1") + CLOSE, "not valid UTF-8"),
        (raw_part(b"X-A: 1\r\nX-B: 1\r\nX-C: 1\r\nX-D: 1\r\nX-E: 1\r\nX-F: 1\r\nX-G: 1\r\nX-H: 1\r\nX-I: 1", b"")
         + CLOSE, "malformed form body"),
        (raw_part(b"X-Long: " + b"v" * 10000, b"") + CLOSE, "malformed form body"),
    ],
)
def test_malformed_body(tmp_path: Path, body: bytes, message: str) -> None:
    with pytest.raises(FormError, match=message):
        parse(body, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_field_too_large(tmp_path: Path) -> None:
    ok = parse(encode([field("x", "a" * 64)]), tmp_path, max_field_bytes=64)
    assert ok.first("x") == "a" * 64
    with pytest.raises(FormError, match="^field 'x' too large$"):
        parse(encode([field("x", "a" * 65)]), tmp_path, max_field_bytes=64)


def test_file_parts_are_not_field_limited(tmp_path: Path) -> None:
    form = parse(encode([file_part("content", "a.zip", b"z" * 10_000)]), tmp_path,
                 max_field_bytes=10, max_total_field_bytes=10)
    content = form.file("content")
    assert content is not None and content.size == 10_000


def test_total_field_bytes(tmp_path: Path) -> None:
    parts = [field("classifiers", "c" * 40) for _ in range(3)]
    assert len(parse(encode(parts), tmp_path, max_total_field_bytes=120).fields["classifiers"]) == 3
    with pytest.raises(FormError, match="form fields too large"):
        parse(encode([*parts, field("x", "1")]), tmp_path, max_total_field_bytes=120)


def test_too_many_parts(tmp_path: Path) -> None:
    parts = [field(f"f{i}", "v") for i in range(5)]
    assert len(parse(encode(parts), tmp_path, max_parts=5).fields) == 5
    with pytest.raises(FormError, match=r"too many parts in form \(limit 4\)"):
        parse(encode(parts), tmp_path, max_parts=4)


# -- no temp file survives a failure -------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # truncated inside the second file: no closing boundary
        b"\r\n" + raw_part(b'Content-Disposition: form-data; name="x"', b"y" * 100) + CLOSE,  # field too large
        b"\r\n" + raw_part(b"Content-Type: text/plain", b"") + CLOSE,  # part without Content-Disposition
        b"\r\n--" + BOUNDARY.encode() + b"garbage",  # broken delimiter, then EOF
    ],
)
def test_failure_removes_all_temp_files(tmp_path: Path, tail: bytes) -> None:
    body = (
        raw_part(b'Content-Disposition: form-data; name="content"; filename="a.whl"', BINARY * 50)
        + raw_part(b'Content-Disposition: form-data; name="second"; filename="b.whl"', BINARY * 50)[:-2]
        + tail
    )
    created: list[Path] = []
    real_sink = multipart._FileSink

    class RecordingSink(real_sink):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            created.append(self.path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multipart, "_FileSink", RecordingSink)
        with pytest.raises(FormError):
            parse(body, tmp_path, max_field_bytes=50)
    assert len(created) == 2  # both files were really started before the failure
    assert list(tmp_path.iterdir()) == []


def test_os_error_removes_temp_files_and_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = multipart._FileSink.write
    writes = 0

    def failing_write(self: multipart._FileSink, data: memoryview) -> None:
        nonlocal writes
        writes += 1
        if self.filename == "b.whl":
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(multipart._FileSink, "write", failing_write)
    body = encode([file_part("content", "a.whl", b"A" * 1000), file_part("content", "b.whl", b"B" * 1000)])
    with pytest.raises(OSError, match="No space left"):
        parse(body, tmp_path)
    assert writes >= 2
    assert list(tmp_path.iterdir()) == []


def test_discard_is_idempotent_and_context_manager_discards(tmp_path: Path) -> None:
    data = encode([file_part("content", "a.whl", b"A"), file_part("sig", "a.asc", b"S")])
    form = parse(data, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    form.discard()
    form.discard()
    assert list(tmp_path.iterdir()) == []
    with parse(data, tmp_path) as form2:
        content = form2.file("content")
        assert content is not None and content.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_records_are_immutable(tmp_path: Path) -> None:
    form = parse(encode([field("a", "1"), file_part("content", "a.whl", b"A")]), tmp_path)
    with pytest.raises(TypeError):
        form.fields["a"] = ("2",)  # type: ignore[index]
    content = form.file("content")
    assert isinstance(content, UploadedFile)
    with pytest.raises(AttributeError):
        content.size = 5  # type: ignore[misc]


# -- properties and scale -----------------------------------------------------

field_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: '"' not in s and "\\" not in s
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.lists(st.tuples(field_names, st.text(max_size=200)), max_size=6),
    files=st.lists(st.tuples(field_names, st.binary(max_size=3000)), max_size=3),
    step=st.integers(min_value=1, max_value=400),
)
def test_round_trip_property(fields: list[tuple[str, str]], files: list[tuple[str, bytes]], step: int) -> None:
    parts = [field(n, v) for n, v in fields] + [file_part(n, f"{i}.whl", d) for i, (n, d) in enumerate(files)]
    with tempfile.TemporaryDirectory() as tmp:
        form = parse_form(TrickleBody(encode(parts), step), CT, Path(tmp))
        expected_fields: dict[str, list[str]] = {}
        for n, v in fields:
            expected_fields.setdefault(n, []).append(v)
        assert {k: list(v) for k, v in form.fields.items()} == expected_fields
        got_files = [(f.field_name, f.path.read_bytes(), f.size, f.sha256)
                     for uploaded in form.files.values() for f in uploaded]
        want_files = [(n, d, len(d), hashlib.sha256(d).hexdigest()) for n, d in files]
        assert sorted(got_files) == sorted(want_files)
        form.discard()
        assert os.listdir(tmp) == []


@pytest.mark.slow
def test_large_upload_uses_bounded_memory(tmp_path: Path) -> None:
    total_mib = 200
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, no CR so no delimiter candidates to chase
    expected = hashlib.sha256()
    body_path = tmp_path / "body"
    with open(body_path, "wb") as out:
        out.write(raw_part(b'Content-Disposition: form-data; name=":action"', b"file_upload"))
        out.write(raw_part(b'Content-Disposition: form-data; name="content"; filename="big-1.0.tar.gz"', b"")[:-2])
        for i in range(total_mib):
            chunk = block[i:] + block[:i]  # vary the content between blocks
            out.write(chunk)
            expected.update(chunk)
        out.write(b"\r\n" + CLOSE)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with open(body_path, "rb") as body:
        tracemalloc.start()
        try:
            form = parse_form(body, CT, uploads)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    body_path.unlink()
    content = form.file("content")
    assert form.first(":action") == "file_upload"
    assert content is not None
    assert content.size == total_mib * 1024 * 1024
    assert content.sha256 == expected.hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"
    form.discard()

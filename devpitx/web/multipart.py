"""Parsing of upload form bodies that Twisted has already spooled to a file.

This module owns turning a request body (``multipart/form-data`` or
``application/x-www-form-urlencoded``) into text fields and temporary files with
their digests. It runs in a worker thread over the spooled body, reading it in
fixed-size chunks: a file part is streamed to a temporary file and hashed on the
way, so memory stays bounded whatever the size of the upload. The multipart
state machine itself is python-multipart's callback parser; this module only
reacts to its events and enforces our limits.

Any failure removes every temporary file created so far before the exception
leaves ``parse_form``: the caller either gets a complete ``ParsedForm`` (and
must ``discard()`` it) or nothing to clean up.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote_to_bytes

from python_multipart import MultipartParser, QuerystringParser
from python_multipart.exceptions import FormParserError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks, QuerystringCallbacks

CHUNK_BYTES = 64 * 1024

# RFC 7578 leaves Content-Transfer-Encoding deprecated; no upload client uses
# one. Anything that would need decoding is refused rather than stored encoded.
_IDENTITY_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


class FormError(ValueError):
    """Malformed or oversized form; str(exc) is a readable message for a 400."""


@dataclass(frozen=True)
class UploadedFile:
    field_name: str
    filename: str  # as sent by the client (filename= or RFC 5987 filename*=), unmodified
    path: Path  # temporary file inside tmp_dir holding the part's bytes
    size: int
    sha256: str
    blake2b_256: str  # blake2b with digest_size=32 (twine's blake2_256_digest)
    md5: str


@dataclass(frozen=True)
class ParsedForm:
    fields: Mapping[str, Sequence[str]]
    files: Mapping[str, Sequence[UploadedFile]]

    def first(self, name: str) -> str | None:
        """First value of the non-file field ``name``, or None."""
        values = self.fields.get(name)
        return values[0] if values else None

    def file(self, name: str) -> UploadedFile | None:
        """First file part sent as field ``name``, or None."""
        uploaded = self.files.get(name)
        return uploaded[0] if uploaded else None

    def discard(self) -> None:
        """Remove every temporary file of this form; safe to call more than once."""
        for uploaded in self.files.values():
            for f in uploaded:
                f.path.unlink(missing_ok=True)

    def __enter__(self) -> ParsedForm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def parse_form(
    body: BinaryIO,
    content_type: str,
    tmp_dir: Path,
    *,
    max_field_bytes: int = 4 * 1024 * 1024,
    max_total_field_bytes: int = 32 * 1024 * 1024,
    max_parts: int = 1000,
) -> ParsedForm:
    """Parse a spooled form body; file parts become temporary files in ``tmp_dir``.

    ``content_type`` is the raw Content-Type request header. Raises FormError
    for anything malformed or over a limit; OSError (disk full, ...) passes
    through. Either way no temporary file is left behind.
    """
    media_type, params = _parse_header_params(content_type)
    form = _FormBuilder(tmp_dir, max_field_bytes, max_total_field_bytes, max_parts)
    try:
        body.seek(0)
        if media_type == "multipart/form-data":
            boundary = params.get("boundary", "")
            if not boundary:
                raise FormError("multipart form without boundary")
            _parse_multipart(body, boundary, form)
        elif media_type == "application/x-www-form-urlencoded":
            _parse_urlencoded(body, form)
        else:
            raise FormError(f"unsupported form content type '{media_type}'")
    except FormParserError as exc:
        form.cleanup()
        raise FormError(f"malformed form body: {exc}") from exc
    except BaseException:
        form.cleanup()
        raise
    return form.result()


class _FileSink:
    """One file part being written to its temporary file, hashed on the way."""

    def __init__(self, tmp_dir: Path, field_name: str, filename: str) -> None:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        self.path = Path(name)
        self.field_name = field_name
        self.filename = filename
        self._file = os.fdopen(fd, "wb")
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._blake2b = hashlib.blake2b(digest_size=32)
        # md5 is only compared with what the client claims, never trusted.
        self._md5 = hashlib.md5(usedforsecurity=False)

    def write(self, data: memoryview) -> None:
        self._file.write(data)
        self._sha256.update(data)
        self._blake2b.update(data)
        self._md5.update(data)
        self._size += len(data)

    def close(self) -> None:
        self._file.close()

    def finish(self) -> UploadedFile:
        self.close()
        return UploadedFile(
            field_name=self.field_name,
            filename=self.filename,
            path=self.path,
            size=self._size,
            sha256=self._sha256.hexdigest(),
            blake2b_256=self._blake2b.hexdigest(),
            md5=self._md5.hexdigest(),
        )


class _FormBuilder:
    """Collects fields and files, enforces limits, owns temp files until the end."""

    def __init__(self, tmp_dir: Path, max_field_bytes: int, max_total_field_bytes: int, max_parts: int) -> None:
        self.max_field_bytes = max_field_bytes
        self.max_total_field_bytes = max_total_field_bytes
        self._tmp_dir = tmp_dir
        self._max_parts = max_parts
        self._parts = 0
        self._total_field_bytes = 0
        self._fields: dict[str, list[str]] = {}
        self._files: dict[str, list[UploadedFile]] = {}
        self._created: list[Path] = []
        self._open: _FileSink | None = None

    def count_part(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise FormError(f"too many parts in form (limit {self._max_parts})")

    def count_field_bytes(self, name: str, field_bytes: int, more: int) -> None:
        """Check limits before buffering ``more`` bytes of a field already holding ``field_bytes``."""
        if field_bytes + more > self.max_field_bytes:
            raise FormError(f"field '{name}' too large")
        self._total_field_bytes += more
        if self._total_field_bytes > self.max_total_field_bytes:
            raise FormError(f"form fields too large (limit {self.max_total_field_bytes} bytes in total)")

    def add_field(self, name: str, raw_value: bytes) -> None:
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"field '{name}' is not valid UTF-8") from None
        self._fields.setdefault(name, []).append(value)

    def open_file(self, field_name: str, filename: str) -> _FileSink:
        sink = _FileSink(self._tmp_dir, field_name, filename)
        self._created.append(sink.path)
        self._open = sink
        return sink

    def finish_file(self, sink: _FileSink) -> None:
        uploaded = sink.finish()
        self._open = None
        self._files.setdefault(uploaded.field_name, []).append(uploaded)

    def cleanup(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
        for path in self._created:
            path.unlink(missing_ok=True)

    def result(self) -> ParsedForm:
        return ParsedForm(
            fields=MappingProxyType({k: tuple(v) for k, v in self._fields.items()}),
            files=MappingProxyType({k: tuple(v) for k, v in self._files.items()}),
        )


class _MultipartHandler:
    """Reacts to python-multipart's events for one body."""

    def __init__(self, form: _FormBuilder) -> None:
        self._form = form
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._field_name = ""
        self._field_value = bytearray()
        self._sink: _FileSink | None = None
        self.ended = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._form.count_part()
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        # Header lines are bounded by the parser's max_header_size.
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        # The parser only lets token characters into header names: ASCII.
        name = self._header_name.decode("ascii").lower()
        self._headers[name] = bytes(self._header_value).strip(b" \t")
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        raw = self._headers.get("content-disposition")
        if raw is None:
            raise FormError("form part without Content-Disposition header")
        try:
            disposition = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError("form part with a Content-Disposition header that is not valid UTF-8") from None
        kind, params = _parse_header_params(disposition)
        if kind != "form-data":
            raise FormError(f"form part with Content-Disposition '{kind}', expected 'form-data'")
        name = params.get("name")
        if name is None:
            raise FormError("form part without a field name")
        encoding = self._headers.get("content-transfer-encoding", b"binary").decode("latin-1").strip().lower()
        if encoding not in _IDENTITY_TRANSFER_ENCODINGS:
            raise FormError(f"form part '{name}' has unsupported Content-Transfer-Encoding '{encoding}'")
        # RFC 6266 4.3: the extended form wins when a client sends both.
        filename = _decode_ext_value(params["filename*"]) if "filename*" in params else params.get("filename")
        if filename is None:
            self._field_name = name
            self._field_value = bytearray()
        else:
            self._sink = self._form.open_file(name, filename)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            # A memoryview slice: the 64 KiB chunk is not copied again per part.
            self._sink.write(memoryview(data)[start:end])
            return
        self._form.count_field_bytes(self._field_name, len(self._field_value), end - start)
        self._field_value += data[start:end]

    def _part_end(self) -> None:
        if self._sink is not None:
            self._form.finish_file(self._sink)
            self._sink = None
        else:
            self._form.add_field(self._field_name, bytes(self._field_value))
            self._field_value = bytearray()

    def _end(self) -> None:
        self.ended = True


def _parse_multipart(body: BinaryIO, boundary: str, form: _FormBuilder) -> None:
    try:
        boundary_bytes = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise FormError("multipart boundary is not ASCII") from None
    handler = _MultipartHandler(form)
    parser = MultipartParser(boundary_bytes, handler.callbacks())
    while chunk := body.read(CHUNK_BYTES):
        parser.write(chunk)
        if handler.ended:
            break  # the epilogue after the closing boundary is ignored (RFC 2046)
    parser.finalize()
    # python-multipart's finalize() does not check that the closing boundary
    # was seen; a body cut short must not look like a smaller valid form.
    if not handler.ended:
        raise FormError("form body ends before the closing multipart boundary")


class _UrlencodedHandler:
    def __init__(self, form: _FormBuilder) -> None:
        self._form = form
        self._name = bytearray()
        self._value = bytearray()

    def callbacks(self) -> QuerystringCallbacks:
        return {
            "on_field_start": self._field_start,
            "on_field_name": self._field_name,
            "on_field_data": self._field_data,
            "on_field_end": self._field_end,
        }

    def _field_start(self) -> None:
        self._form.count_part()
        self._name.clear()
        self._value.clear()

    def _check(self, more: int) -> None:
        # Raw (still percent-encoded) size: an upper bound of the decoded size.
        if len(self._name) + len(self._value) + more > self._form.max_field_bytes:
            shown = _unquote_plus(self._name[:200]).decode("utf-8", "replace")
            raise FormError(f"field '{shown}' too large")

    def _field_name(self, data: bytes, start: int, end: int) -> None:
        self._check(end - start)
        self._name += data[start:end]

    def _field_data(self, data: bytes, start: int, end: int) -> None:
        self._check(end - start)
        self._value += data[start:end]

    def _field_end(self) -> None:
        try:
            name = _unquote_plus(self._name).decode("utf-8")
        except UnicodeDecodeError:
            raise FormError("form field name is not valid UTF-8") from None
        self._form.add_field(name, _unquote_plus(self._value))


def _parse_urlencoded(body: BinaryIO, form: _FormBuilder) -> None:
    handler = _UrlencodedHandler(form)
    parser = QuerystringParser(handler.callbacks())
    total = 0
    while chunk := body.read(CHUNK_BYTES):
        total += len(chunk)
        if total > form.max_total_field_bytes:
            raise FormError(f"form fields too large (limit {form.max_total_field_bytes} bytes in total)")
        parser.write(chunk)
    parser.finalize()


def _unquote_plus(raw: bytes | bytearray) -> bytes:
    return unquote_to_bytes(bytes(raw).replace(b"+", b" "))


def _parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; key=value; key="quoted"`` into the lowercased type and params.

    Keys are lowercased; quoted values are unquoted (``\\"`` and ``\\\\``
    escapes); the first occurrence of a key wins.
    """
    head, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while sep and i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        key_end = i
        while key_end < n and rest[key_end] not in "=;":
            key_end += 1
        key = rest[i:key_end].strip().lower()
        i = key_end
        val = ""
        if i < n and rest[i] == "=":
            i += 1
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] == '"':
                val, i = _read_quoted(rest, i + 1)
            else:
                val_end = rest.find(";", i)
                val_end = n if val_end == -1 else val_end
                val, i = rest[i:val_end].strip(), val_end
        if key:
            params.setdefault(key, val)
    return head.strip().lower(), params


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is just before ``i``."""
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        # Only \" and \\ are escapes: browsers send Windows paths with bare
        # backslashes, which must survive unchanged.
        if c == "\\" and i + 1 < n and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise FormError("unterminated quoted string in header parameter")


def _decode_ext_value(value: str) -> str:
    """Decode an RFC 5987 ``charset'language'percent-encoded`` parameter value."""
    charset, sep1, rest = value.partition("'")
    _language, sep2, encoded = rest.partition("'")
    charset = charset.strip().lower()
    if not (sep1 and sep2) or charset not in ("utf-8", "iso-8859-1"):
        raise FormError(f"invalid extended header parameter value '{value}'")
    try:
        return unquote_to_bytes(encoded).decode(charset)
    except UnicodeDecodeError:
        raise FormError(f"invalid extended header parameter value '{value}'") from None

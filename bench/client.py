"""A small keep-alive HTTP client for seeding and the Python-driven measures, 127.0.0.1 only.

Seeding thousands of uploads over fresh connections would measure TCP
set-up rather than the servers, and would take minutes longer; one
``http.client`` connection per ``Session`` is reused for every request.
Every URL is checked to point at 127.0.0.1: a benchmark must never send
traffic anywhere else.
"""
from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOST = "127.0.0.1"
_FILE_CHUNK_BYTES = 1 << 20


class NotLocal(ValueError):
    """A URL that does not point at 127.0.0.1."""


def check_local(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != LOCAL_HOST or parts.port is None:
        raise NotLocal(f"refusing non-local URL {url!r}")
    return parts.hostname, parts.port


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.status} {self.reason}: {self.body[:300]!r}"


class HTTPFailure(RuntimeError):
    """A request that did not get the status the caller needed."""


def basic_auth(user: str, secret: str) -> str:
    """twine-style credentials: user and password, or user and login token."""
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


class Session:
    """One keep-alive connection to one local server."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._host, self._port = check_local(self.base_url)
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request on the kept-alive connection; reconnect once if the server had closed it.

        A retry happens only when the server closed an idle connection before
        answering (RemoteDisconnected on a reused connection), never after a
        response started; streamed bodies are never retried.
        """
        assert path.startswith("/"), path
        all_headers = {"Host": f"{self._host}:{self._port}", **(headers or {})}
        retriable = body is None or isinstance(body, bytes)
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=all_headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2 or not reused or not retriable:
                    raise
                continue
            if resp.will_close:
                self.close()
            return Reply(resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, data)
        raise AssertionError("unreachable")

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def json_request(self, method: str, path: str, payload: Any, auth: str | None = None) -> Reply:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        return self.request(method, path, json.dumps(payload).encode(), headers)


def expect(reply: Reply, statuses: Sequence[int], what: str) -> Reply:
    if reply.status not in statuses:
        raise HTTPFailure(f"{what}: expected {'/'.join(map(str, statuses))}, got {reply.describe()}")
    return reply


# -- multipart upload bodies (legacy PyPI upload protocol, as twine sends it) ----------


@dataclass(frozen=True)
class Multipart:
    """A form body split around the file part, so that big files can be streamed from disk."""

    content_type: str
    head: bytes
    tail: bytes

    def length(self, file_bytes: int) -> int:
        return len(self.head) + file_bytes + len(self.tail)

    def with_content(self, content: bytes) -> bytes:
        return self.head + content + self.tail

    def stream_file(self, path: Path) -> Iterator[bytes]:
        yield self.head
        with open(path, "rb") as f:
            while chunk := f.read(_FILE_CHUNK_BYTES):
                yield chunk
        yield self.tail


def multipart(fields: Sequence[tuple[str, str]], file_field: str, filename: str,
              boundary: str | None = None) -> Multipart:
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
        )
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
        f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    )
    return Multipart(f"multipart/form-data; boundary={boundary}", b"".join(parts),
                     f"\r\n--{boundary}--\r\n".encode())


def upload_fields(name: str, version: str, filetype: str, pyversion: str, sha256: str,
                  requires_python: str = "") -> list[tuple[str, str]]:
    """The form fields twine sends for ``file_upload`` (the subset that matters to a server)."""
    fields = [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", name),
        ("version", version),
        ("filetype", filetype),
        ("pyversion", pyversion),
        ("summary", "devpitx benchmark package"),
        ("sha256_digest", sha256),
    ]
    if requires_python:
        fields.append(("requires_python", requires_python))
    return fields


def wait_until_ready(base_url: str, timeout: float, alive: Any = None) -> float:
    """Poll ``GET /+api`` until it answers 200; return the seconds waited.

    ``alive`` (a callable) lets the caller stop waiting as soon as the server
    process has died. Bounded by ``timeout``.
    """
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise HTTPFailure(f"server at {base_url} exited before answering")
        session = Session(base_url, timeout=5.0)
        try:
            if session.get("/+api", {"Accept": "application/json"}).status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        finally:
            session.close()
        time.sleep(0.01)
    raise HTTPFailure(f"server at {base_url} not ready after {timeout:.0f}s")

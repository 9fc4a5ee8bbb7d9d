"""Serving +f/+e files (http-api.md §3.14 GET/HEAD): streaming, caching headers, conditionals, ranges."""
from __future__ import annotations

import hashlib
import random
import socket
import tempfile
import json
from collections.abc import Callable
from typing import IO, Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse
from treq.testing import StubTreq

from devpitx.auth.acl import Identity
from devpitx.model.projects import http_date
from devpitx.web.files import (
    CHUNK_BYTES, BlobProducer, ByteRange, DirectSocket, RangeNotSatisfiable, content_type_for, parse_range, plain_tcp_socket,
)
from tests.helpers.testserver import BASE, make_test_server
from tests.web.fixtures_records import StoredFile, add_file, delete_file, drive, make_index, use_clock_cooperator

BIG = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 17)      # several chunks, not a multiple of one
CACHE_CONTROL = "max-age=365000000, immutable, public"


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class FileTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        use_clock_cooperator(self, self.clock)
        self.server = make_test_server(self.mktemp(), clock=self.clock)
        self.http = StubTreq(self.server.resource())
        make_index(self.server, "u", "dev")
        self.sdist = add_file(self.server, "u", "dev", "pkg", "1.0", "pkg-1.0.tar.gz", BIG)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        d = cast(Any, self.http).request(method, BASE + path, headers=headers or {}, allow_redirects=False)
        response = drive(self.clock, self.http, d)
        body = drive(self.clock, self.http, response.content())
        return response, body

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        return self.request("GET", path, headers)

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """Status line and headers as sent (the HTTP client hides Content-Length and HEAD details)."""
        protocol = self.server.site().buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: devpitx.test", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        for _ in range(1000):
            self.clock.advance(0)
            if transport.disconnecting:
                break
        head = transport.value().split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        return head[0], {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:])}

    def url(self, stored: StoredFile) -> str:
        return "/" + stored.relpath


class ServeTests(FileTestCase):
    def test_get_streams_the_whole_file_with_headers(self) -> None:
        response, body = self.get(self.url(self.sdist))
        self.assertEqual(response.code, 200)
        self.assertEqual(body, BIG)
        self.assertEqual(response.length, len(BIG))
        self.assertEqual(header(response, "content-type"), "application/x-tar")
        self.assertEqual(header(response, "etag"), f'"{self.sdist.sha256}"')
        self.assertEqual(header(response, "cache-control"), CACHE_CONTROL)
        self.assertEqual(header(response, "accept-ranges"), "bytes")
        self.assertEqual(header(response, "last-modified"), http_date(self.clock.seconds()))
        self.assertEqual(header(response, "x-devpi-api-version"), "2")
        self.assertEqual(header(response, "x-devpi-serial"), str(self.server.store.serial))

    def test_wire_headers(self) -> None:
        # The HTTP client hides some headers (and invents an empty Content-Encoding): look at the wire.
        for method in ("GET", "HEAD"):
            status, headers = self.raw(method, self.url(self.sdist), {"Accept-Encoding": "gzip"})
            self.assertEqual(status, "HTTP/1.1 200 OK")
            self.assertEqual(headers["content-length"], str(len(BIG)))
            self.assertNotIn("content-encoding", headers)
            self.assertNotIn("transfer-encoding", headers)

    def test_head_sends_headers_only(self) -> None:
        response, body = self.request("HEAD", self.url(self.sdist))
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, "etag"), f'"{self.sdist.sha256}"')
        self.assertEqual(header(response, "cache-control"), CACHE_CONTROL)

    def test_content_types(self) -> None:
        cases = {"pkg-2.0.tgz": "application/x-tar", "pkg-2.0.tar.bz2": "application/x-tar",
                 "pkg-2.0.zip": "application/zip", "pkg-2.0-py3-none-any.whl": "application/octet-stream",
                 "pkg-2.0-py3.12.egg": "application/octet-stream", "pkg-2.0.doc.zip": "application/zip",
                 "pkg-2.0.tar.gz.toxresult-20240101000000-0": "application/json"}
        for basename, expected in cases.items():
            rel = "toxresult" if "toxresult" in basename else "releasefile"
            stored = add_file(self.server, "u", "dev", "pkg", "2.0", basename, rel=rel)
            response, body = self.get(self.url(stored))
            self.assertEqual(header(response, "content-type"), expected, basename)
            self.assertEqual(body, stored.content)

    def test_empty_file(self) -> None:
        stored = add_file(self.server, "u", "dev", "pkg", "0.1", "pkg-0.1.zip", b"")
        response, body = self.get(self.url(stored))
        self.assertEqual((response.code, body, response.length), (200, b"", 0))

    def test_core_metadata_of_a_wheel(self) -> None:
        metadata = b"Metadata-Version: 2.1\nName: pkg\nVersion: 2.0\n"
        wheel = add_file(self.server, "u", "dev", "pkg", "2.0", "pkg-2.0-py3-none-any.whl",
                         core_metadata=metadata)
        response, body = self.get(self.url(wheel) + ".metadata")
        self.assertEqual((response.code, body), (200, metadata))
        self.assertEqual(response.length, len(metadata))
        self.assertEqual(header(response, "etag"), f'"{hashlib.sha256(metadata).hexdigest()}"')
        self.assertTrue((header(response, "content-type") or "").startswith("text/plain"))
        response, _ = self.get(self.url(self.sdist) + ".metadata")
        self.assertEqual(response.code, 404)

    def test_releasefilemeta_json(self) -> None:
        response, body = self.get(self.url(self.sdist), {"Accept": "application/json"})
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), "application/json")
        meta = json.loads(body)
        self.assertEqual(meta["type"], "releasefilemeta")
        self.assertEqual(meta["result"], {
            "hash_spec": f"sha256={self.sdist.sha256}", "hashes": {"sha256": self.sdist.sha256},
            "last_modified": http_date(self.clock.seconds()), "project": "pkg", "version": "1.0",
        })

    def test_never_existed_is_404_deleted_is_410(self) -> None:
        response, body = self.get("/u/dev/+f/abc/def/nope-1.0.tar.gz", {"Accept": "application/json"})
        self.assertEqual((response.code, json.loads(body)), (404, {"message": "no such file"}))
        delete_file(self.server, "u", "dev", "pkg", "1.0", self.sdist.relpath)
        response, body = self.get(self.url(self.sdist), {"Accept": "application/json"})
        self.assertEqual((response.code, json.loads(body)),
                         (410, {"message": "file existed, deleted in later serial"}))
        response, body = self.get(self.url(self.sdist))
        self.assertEqual(response.code, 410)
        self.assertIn("text/html", header(response, "content-type") or "")

    def test_e_paths(self) -> None:
        response, _ = self.get("/u/dev/+e/https_upstream.test/pkg-1.0.zip")
        self.assertEqual(response.code, 404)
        relpath = "u/dev/+e/https_upstream.test/pkg-1.0.zip"
        with self.server.store.write() as tx:
            tx.set(f"file/{relpath}", {})
        response, _ = self.get("/" + relpath)
        self.assertEqual(response.code, 404)     # +e never answers 410

    def test_missing_content_is_404(self) -> None:
        stored = add_file(self.server, "u", "dev", "pkg", "3.0", "pkg-3.0.zip", b"never stored", put_blob=False)
        response, body = self.get(self.url(stored), {"Accept": "text/html"})
        self.assertEqual(response.code, 404)
        self.assertIn(b"no such file", body)

    def test_index_gone_is_404(self) -> None:
        with self.server.store.write() as tx:
            tx.delete("index/u/dev")
        response, body = self.get(self.url(self.sdist), {"Accept": "text/html"})
        self.assertEqual(response.code, 404)
        self.assertIn(b"The stage u/dev could not be found.", body)

    def test_read_permission(self) -> None:
        """Everyone may read today; a narrower ACL (plugins, later) is asked for the caller's identity."""
        identity = self.server.identity
        self.patch(identity, "permitted", lambda permission, who, **kw: who.username == "alice")
        response, body = self.get(self.url(self.sdist), {"Accept": "text/html"})
        self.assertEqual(response.code, 403)
        self.assertIn(b"package read forbidden", body)

        async def alice(request: Any) -> Identity:
            return Identity("alice")
        self.patch(identity, "identify", alice)
        response, body = self.get(self.url(self.sdist))
        self.assertEqual((response.code, body), (200, BIG))
        # 404 and 410 are decided before permissions
        response, _ = self.get("/u/dev/+f/abc/def/nope-1.0.tar.gz")
        self.assertEqual(response.code, 404)

    def test_other_methods_are_404_for_now(self) -> None:
        # PATCH yanks (tests/web/test_yank.py), POST uploads a toxresult, DELETE deletes.
        for method in ("PUT", "OPTIONS"):
            response, _ = self.request(method, self.url(self.sdist))
            self.assertEqual(response.code, 404, method)


class ConditionalTests(FileTestCase):
    def test_if_none_match(self) -> None:
        etag = f'"{self.sdist.sha256}"'
        for value in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            response, body = self.get(self.url(self.sdist), {"If-None-Match": value})
            self.assertEqual((response.code, body), (304, b""), value)
            self.assertEqual(header(response, "etag"), etag)
            self.assertEqual(header(response, "cache-control"), CACHE_CONTROL)
            status, headers = self.raw("GET", self.url(self.sdist), {"If-None-Match": value})
            self.assertEqual(status, "HTTP/1.1 304 Not Modified")
            self.assertNotIn("content-length", headers)
        response, body = self.get(self.url(self.sdist), {"If-None-Match": '"nope"'})
        self.assertEqual((response.code, body), (200, BIG))

    def test_if_modified_since(self) -> None:
        now = self.clock.seconds()
        response, body = self.get(self.url(self.sdist), {"If-Modified-Since": http_date(now)})
        self.assertEqual((response.code, body), (304, b""))
        response, body = self.get(self.url(self.sdist), {"If-Modified-Since": http_date(now - 60)})
        self.assertEqual(response.code, 200)
        response, _ = self.get(self.url(self.sdist), {"If-Modified-Since": "yesterday"})
        self.assertEqual(response.code, 200)
        # If-None-Match wins over If-Modified-Since
        response, _ = self.get(self.url(self.sdist), {"If-Modified-Since": http_date(now),
                                                      "If-None-Match": '"nope"'})
        self.assertEqual(response.code, 200)


class RangeTests(FileTestCase):
    def assert_partial(self, value: str, start: int, end: int, extra: dict[str, str] | None = None) -> None:
        response, body = self.get(self.url(self.sdist), {"Range": value, **(extra or {})})
        self.assertEqual(response.code, 206, value)
        self.assertEqual(body, BIG[start:end + 1])
        self.assertEqual(header(response, "content-range"), f"bytes {start}-{end}/{len(BIG)}")
        self.assertEqual(response.length, end - start + 1)
        self.assertEqual(header(response, "content-type"), "application/x-tar")

    def test_single_ranges(self) -> None:
        size = len(BIG)
        self.assert_partial("bytes=0-9", 0, 9)
        self.assert_partial("bytes=100-", 100, size - 1)
        self.assert_partial("bytes=-22", size - 22, size - 1)
        self.assert_partial(f"bytes=-{size * 2}", 0, size - 1)
        self.assert_partial(f"bytes={size - 1}-{size * 5}", size - 1, size - 1)
        self.assert_partial(f"bytes={CHUNK_BYTES - 3}-{CHUNK_BYTES + 3}", CHUNK_BYTES - 3, CHUNK_BYTES + 3)

    def test_head_with_range(self) -> None:
        status, headers = self.raw("HEAD", self.url(self.sdist), {"Range": "bytes=0-9"})
        self.assertEqual((status, headers["content-length"]), ("HTTP/1.1 206 Partial Content", "10"))
        self.assertEqual(headers["content-range"], f"bytes 0-9/{len(BIG)}")

    def test_unsatisfiable(self) -> None:
        for value in (f"bytes={len(BIG)}-", "bytes=-0"):
            response, _ = self.get(self.url(self.sdist), {"Range": value})
            self.assertEqual(response.code, 416, value)
            self.assertEqual(header(response, "content-range"), f"bytes */{len(BIG)}")
            self.assertIsNone(header(response, "cache-control"))

    def test_ignored_ranges_give_the_whole_file(self) -> None:
        for value in ("bytes=0-1,5-9", "bytes=9-1", "items=0-1", "bytes=a-b", "bytes=-", "bytes 0-1"):
            response, body = self.get(self.url(self.sdist), {"Range": value})
            self.assertEqual((response.code, len(body)), (200, len(BIG)), value)

    def test_if_range(self) -> None:
        etag = f'"{self.sdist.sha256}"'
        self.assert_partial("bytes=0-9", 0, 9, {"If-Range": etag})
        self.assert_partial("bytes=0-9", 0, 9, {"If-Range": http_date(self.clock.seconds())})
        for stale in ('"other"', f"W/{etag}", http_date(self.clock.seconds() - 60)):
            response, body = self.get(self.url(self.sdist), {"Range": "bytes=0-9", "If-Range": stale})
            self.assertEqual((response.code, body), (200, BIG), stale)


class ParseRangeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_range("bytes=0-0", 10), ByteRange(0, 0))
        self.assertEqual(parse_range(" Bytes = 2 - 4 ", 10), ByteRange(2, 4))
        self.assertEqual(parse_range("bytes=-3", 10), ByteRange(7, 9))
        self.assertIsNone(parse_range("bytes=0-1, 3-4", 10))
        self.assertIsNone(parse_range("bytes=1", 10))
        self.assertIsNone(parse_range("bytes=+1-2", 10))
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=0-", 0)
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=-5", 0)
        self.assertRaises(RangeNotSatisfiable, parse_range, "bytes=10-12", 10)

    def test_content_type_for_mixed_case(self) -> None:
        self.assertEqual(content_type_for("PKG-1.0.TAR.GZ"), b"application/x-tar")
        self.assertEqual(content_type_for("pkg-1.0.unknown"), b"application/octet-stream")


class FakeRequest:
    """Just enough of a request to drive a BlobProducer by hand.

    Like a TCP transport, it pauses its push producer from inside ``write``
    once more than ``buffer_limit`` bytes wait, and resumes it on :meth:`drain`.
    """

    def __init__(self, buffer_limit: int = 64 * 1024) -> None:
        self.written: list[bytes] = []
        self.pending = 0
        self.buffer_limit = buffer_limit
        self.producer: Any = None
        self.lost = False
        self.uri = b"/u/dev/+f/x"

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.pending += len(data)
        if self.producer is not None and self.pending > self.buffer_limit:
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.pending = 0
        if self.producer is not None:
            self.producer.resumeProducing()

    def loseConnection(self) -> None:
        self.lost = True


def blob_file(content: bytes) -> IO[bytes]:
    """An open file holding ``content`` (the producer reads by file descriptor)."""
    f = tempfile.TemporaryFile()
    f.write(content)
    f.flush()
    return f


class ProducerTests(SynchronousTestCase):
    def test_writes_only_while_the_transport_takes_data(self) -> None:
        request = FakeRequest()
        blob = blob_file(BIG)
        d = BlobProducer(cast(Any, request), blob, 0, len(BIG)).start()
        self.assertEqual(len(request.written), 1)       # paused by the first full buffer
        request.drain()
        self.assertEqual(len(request.written), 2)
        self.assertNoResult(d)

    def test_small_writes_continue_until_the_buffer_is_full(self) -> None:
        request = FakeRequest(buffer_limit=3 * CHUNK_BYTES)
        size = 6 * CHUNK_BYTES
        blob = blob_file(bytes(size))
        d = BlobProducer(cast(Any, request), blob, 0, size).start()
        self.assertEqual(len(request.written), 4)
        self.assertNoResult(d)

    def test_cancel_closes_the_file(self) -> None:
        request = FakeRequest()
        blob = blob_file(BIG)
        d = BlobProducer(cast(Any, request), blob, 0, len(BIG)).start()
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(blob.closed)
        request.drain()                                 # late resumes are harmless
        self.assertEqual(len(request.written), 1)

    def test_stop_producing_closes_the_file(self) -> None:
        request = FakeRequest()
        blob = blob_file(BIG)
        d = BlobProducer(cast(Any, request), blob, 0, len(BIG)).start()
        request.producer.stopProducing()
        request.drain()                                 # late resumes are harmless
        self.assertTrue(blob.closed)
        self.assertEqual(len(request.written), 1)
        self.assertNoResult(d)

    def test_short_blob_drops_the_connection(self) -> None:
        request = FakeRequest()
        blob = blob_file(b"0123456789")
        d = BlobProducer(cast(Any, request), blob, 5, 20).start()
        self.assertIsNone(request.producer)
        self.assertEqual(b"".join(request.written), b"56789")
        self.assertTrue(request.lost)
        self.assertTrue(blob.closed)
        self.assertNoResult(d)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_range_is_written_in_chunks(self) -> None:
        request = FakeRequest()
        blob = blob_file(BIG)
        d = BlobProducer(cast(Any, request), blob, 1, CHUNK_BYTES + 1).start()
        while request.producer is not None:
            request.drain()
        self.assertEqual([len(chunk) for chunk in request.written], [CHUNK_BYTES, 1])
        self.assertEqual(b"".join(request.written), BIG[1:CHUNK_BYTES + 2])
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(blob.closed)


class SocketTransportRequest(FakeRequest):
    """A FakeRequest whose transport buffer drains into a real (non-blocking) socket."""

    def __init__(self, sock: socket.socket, peer_reads: Callable[[], None]) -> None:
        super().__init__()
        self.sock = sock
        self.peer_reads = peer_reads
        self.buffer = bytearray()
        self.paused_by_us = False

    def write(self, data: bytes) -> None:
        self.peer_reads()       # the client keeps reading while the server writes
        self.written.append(data)
        self.buffer += data
        if self.producer is not None and len(self.buffer) > self.buffer_limit:
            self.paused_by_us = True
            self.producer.pauseProducing()

    def flush(self) -> None:
        """Send what the socket takes; resume the producer once everything is out (like doWrite)."""
        while self.buffer:
            try:
                sent = self.sock.send(self.buffer)
            except BlockingIOError:
                return
            del self.buffer[:sent]
        if self.paused_by_us and self.producer is not None:
            self.paused_by_us = False
            self.producer.resumeProducing()


class ZeroCopyTests(SynchronousTestCase):
    def stream(self, pausing_bytes: int) -> tuple[bytes, bytes, int]:
        """Serve a random file through a socket pair: (expected, received, bytes written through Python)."""
        content = random.Random(5).randbytes(3 * 1024 * 1024 + 11)
        start, length = 7, len(content) - 7 - 5
        server_side, client_side = socket.socketpair()
        self.addCleanup(server_side.close)
        self.addCleanup(client_side.close)
        server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        server_side.setblocking(False)
        client_side.setblocking(False)
        received = bytearray()

        def peer_reads() -> None:
            try:
                received.extend(client_side.recv(1 << 20))
            except BlockingIOError:
                pass

        request = SocketTransportRequest(server_side, peer_reads)
        direct = DirectSocket(server_side, pausing_bytes)
        d = BlobProducer(cast(Any, request), blob_file(content), start, length, direct_to=direct).start()
        for _ in range(100_000):
            request.flush()
            peer_reads()
            if len(received) >= length and request.producer is None and not request.buffer:
                break
        self.assertIsNone(self.successResultOf(d))
        return content[start:start + length], bytes(received), sum(map(len, request.written))

    def test_bytes_arrive_in_order_and_most_skip_python(self) -> None:
        expected, received, through_python = self.stream(pausing_bytes=FakeRequest().buffer_limit + 1)
        self.assertEqual(received, expected)
        self.assertLess(through_python, len(expected) // 2)    # the rest went with sendfile(2)

    def test_direct_sends_wait_until_the_transport_has_sent_its_bytes(self) -> None:
        # Writes too small to pause the producer leave bytes in the transport: sendfile(2)
        # must not overtake them.
        expected, received, _ = self.stream(pausing_bytes=1000)
        self.assertEqual(received, expected)

    def test_sockets_of_other_requests_are_not_used(self) -> None:
        self.assertIsNone(plain_tcp_socket(cast(Any, FakeRequest())))

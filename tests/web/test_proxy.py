"""Write proxying on a replica (replication.md §6): writes go to the primary, reads stay local."""
from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from treq.testing import StubTreq

from devpitx.web.proxy import WriteProxy
from devpitx.web.root import make_app
from tests.helpers.testserver import BASE, make_test_server
from tests.web.fixtures_records import drive, use_clock_cooperator

PRIMARY = "http://primary.example:3141"


class FakePrimary(Resource):
    """Records what reaches it and answers with ``self.answer``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[bytes, bytes], bytes] = (
            200, {b"X-Devpi-Serial": b"7", b"Content-Type": b"application/json"}, b'{"result": "ok"}')

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append({
            "method": request.method, "uri": request.uri,
            "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        code, headers, body = self.answer
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class CollectingConsumer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class BodyReadingStub:
    """StubTreq takes bodies as bytes only: read the proxy's body producer first, as treq would stream it."""

    def __init__(self, stub: StubTreq) -> None:
        self.stub = stub

    def request(self, method: str, url: str, *, data: Any = None, **kwargs: Any) -> Deferred[Any]:
        if data is None or isinstance(data, bytes):
            return self.stub.request(method, url, data=data, **kwargs)
        consumer = CollectingConsumer()
        produced = data.startProducing(consumer)
        return produced.addCallback(
            lambda _: self.stub.request(method, url, data=b"".join(consumer.chunks), **kwargs))


class UnreachablePrimary:
    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError
        return fail(ConnectionRefusedError("Connection was refused by other side: 111: Connection refused."))


class ProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        use_clock_cooperator(self, self.clock)
        self.server = make_test_server(self.mktemp(), clock=self.clock)
        self.addCleanup(self.server.store.close)
        self.primary = FakePrimary()
        self.primary_http = StubTreq(self.primary)
        self.waited: list[tuple[int, float]] = []
        self.applied: Deferred[int | None] | None = None
        self.client = self.replica_client(BodyReadingStub(self.primary_http))

    def replica_client(self, http: Any) -> StubTreq:
        def wait_for_serial(serial: int, timeout: float) -> Deferred[int | None]:
            self.waited.append((serial, timeout))
            return self.applied if self.applied is not None else succeed(serial)

        proxy = WriteProxy(PRIMARY, http, self.clock, wait_for_serial, timeout=12.0)
        app = make_app(self.server.router, None, self.server.identity_headers, proxy)
        return StubTreq(app.resource())

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        response = drive(self.clock, self.client, self.client.request(method, BASE + path, **kwargs))
        body = drive(self.clock, self.client, response.content())
        self.primary_http.flush()
        return response, body

    def test_write_is_relayed_with_path_query_headers_and_body(self) -> None:
        response, body = self.send("POST", "/alice/dev/?force=1", data=b"payload bytes",
                                   headers={"Authorization": "Basic YWxpY2U6cHc=", "Connection": "x-hop",
                                            "X-Hop": "1", "Keep-Alive": "300", "X-End-To-End": "2",
                                            "Content-Type": "application/octet-stream"})
        (seen,) = self.primary.seen
        self.assertEqual(seen["method"], b"POST")
        self.assertEqual(seen["uri"], b"/alice/dev/?force=1")
        self.assertEqual(seen["body"], b"payload bytes")
        self.assertEqual(seen["headers"][b"authorization"], [b"Basic YWxpY2U6cHc="])
        self.assertNotIn(b"x-hop", seen["headers"])          # listed in Connection: hop-by-hop
        self.assertNotIn(b"keep-alive", seen["headers"])
        self.assertEqual(seen["headers"][b"x-end-to-end"], [b"2"])
        self.assertEqual(seen["headers"][b"host"], [b"primary.example:3141"])
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"result": "ok"})
        self.assertEqual(response.headers.getRawHeaders("X-Devpi-Proxy"), ["replica"])
        self.assertEqual(response.headers.getRawHeaders("X-Devpi-Serial"), ["7"])

    def test_answer_waits_until_the_primary_serial_is_applied(self) -> None:
        self.applied = Deferred()
        d = self.client.request("PUT", BASE + "/bob", json={"password": "x"})
        for _ in range(50):
            self.clock.advance(0)
            self.client.flush()
            self.primary_http.flush()
        self.assertEqual(self.waited, [(7, 12.0)])
        self.assertNoResult(d)
        self.applied.callback(7)
        response = drive(self.clock, self.client, d)
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders("X-Devpi-Warning"))

    def test_wait_that_times_out_still_answers_with_a_warning(self) -> None:
        self.applied = succeed(None)
        response, _ = self.send("DELETE", "/alice/dev")
        self.assertEqual(response.code, 200)
        self.assertIn("not yet replicated", response.headers.getRawHeaders("X-Devpi-Warning")[0])

    def test_refused_write_is_not_waited_for(self) -> None:
        self.primary.answer = (403, {b"Content-Type": b"application/json", b"X-Devpi-Serial": b"9"},
                               b'{"message": "forbidden"}')
        response, body = self.send("POST", "/alice/dev/", data=b"x")
        self.assertEqual((response.code, json.loads(body)), (403, {"message": "forbidden"}))
        self.assertEqual(self.waited, [])

    def test_redirect_to_the_primary_is_rewritten_to_the_replica(self) -> None:
        self.primary.answer = (302, {b"Location": f"{PRIMARY}/alice/dev/+simple/".encode()}, b"")
        response, _ = self.send("POST", "/alice/dev/", allow_redirects=False)
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders("Location"), [f"{BASE}/alice/dev/+simple/"])

    def test_unreachable_primary_gives_502_with_the_url(self) -> None:
        self.client = self.replica_client(UnreachablePrimary())
        response, body = self.send("POST", "/+login", json={"user": "a", "password": "b"})
        self.assertEqual(response.code, 502)
        message = json.loads(body)["message"]
        self.assertTrue(message.startswith(f"proxy-write-to-primary {PRIMARY}/+login: "), message)

    def test_reads_are_answered_locally(self) -> None:
        response, body = self.send("GET", "/+api", headers={"Accept": "application/json"})
        self.assertEqual(response.code, 200)
        self.assertIn("result", json.loads(body))
        self.assertEqual(self.primary.seen, [])
        self.assertIsNone(response.headers.getRawHeaders("X-Devpi-Proxy"))

"""The web entry point (web/root.py): the access log, the app resource and its error handling."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, LogLevel, eventAsJSON, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from devpitx.storage.keys import user_key
from devpitx.web import root
from devpitx.web.errors import ApiError
from devpitx.web.root import DevpitxSite, make_app
from devpitx.web.routes import Router
from tests.helpers.testserver import BASE, make_test_server, stub_client

CLIENT = IPv4Address("TCP", "127.0.0.5", 40123)
IDENTITY = {b"X-Devpi-Serial": b"7"}
_PLAIN = (str, int, float, type(None))


class SiteCase(SynchronousTestCase):
    """A site over a router with only the handlers a test registers, and its log events."""

    def setUp(self) -> None:
        self.router = Router()
        self.events: list[dict[str, Any]] = []
        self.patch(root, "log", Logger(namespace="devpitx.web",
                                                   observer=cast(ILogObserver, self.events.append)))
        self.now = 1000.0
        tmp = Path(tempfile.mkdtemp(prefix="devpitx-test-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.site = DevpitxSite(make_app(self.router, None, lambda: IDENTITY).resource(),
                                max_body_bytes=10**6, tmp_dir=tmp, identity_headers=lambda: IDENTITY,
                                clock_seconds=lambda: self.now)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, protocol: Any, method: str, path: str) -> None:
        protocol.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: devpitx.test\r\nAccept: application/json\r\n\r\n"
                              .encode())

    def get(self, path: str, method: str = "GET") -> tuple[str, bytes]:
        protocol, transport = self.connect()
        self.send(protocol, method, path)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        return head.decode("latin-1"), body

    def access_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_format") == "{line}"]


class AccessLogTests(SiteCase):
    def test_one_cheap_event_per_request(self) -> None:
        def status(request: IRequest) -> bytes:
            self.now += 0.0123
            return b"hello"

        self.router.add("status.status", status)
        head, body = self.get("/+status?x=1")
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertEqual(body, b"hello")
        self.assertEqual(self.access_lines(), ['127.0.0.5 "GET /+status?x=1" 200 5 12.3ms'])
        (event,) = self.events
        self.assertEqual((event["log_level"], event["log_namespace"]), (LogLevel.info, "devpitx.web"))
        # Only plain values: nothing the JSON observer has to mark unpersistable, no request object.
        self.assertEqual([k for k, v in event.items() if k != "log_level" and not isinstance(v, _PLAIN)], [])
        self.assertEqual(json.loads(eventAsJSON(event))["line"], '127.0.0.5 "GET /+status?x=1" 200 5 12.3ms')

    def test_errors_and_unrouted_paths_are_logged_once_too(self) -> None:
        self.get("/nobody/+nothing")
        self.get("/%ff")
        self.flushLoggedErrors(UnicodeDecodeError)  # Klein logs the undecodable path it refuses
        self.assertEqual([line.split('"')[1] for line in self.access_lines()], ["GET /nobody/+nothing", "GET /%ff"])
        self.assertEqual([line.split()[3] for line in self.access_lines()], ["404", "400"])


class AppResourceTests(SiteCase):
    def test_url_that_is_not_utf8_once_decoded(self) -> None:
        head, body = self.get("/%ff/x")
        self.flushLoggedErrors(UnicodeDecodeError)  # Klein logs the undecodable path it refuses
        self.assertTrue(head.startswith("HTTP/1.1 400"), head)
        self.assertEqual(body, b"Non-UTF-8 encoding in URL.")

    def test_identity_headers_and_content_length(self) -> None:
        self.router.add("status.status", lambda request: b"abc")
        head, _ = self.get("/+status")
        self.assertIn("X-Devpi-Serial: 7", head)
        self.assertIn("Content-Length: 3", head)

    def test_head_sends_no_body(self) -> None:
        self.router.add("status.status", lambda request: b"abc")
        head, body = self.get("/+status", method="HEAD")
        self.assertIn("Content-Length: 3", head)
        self.assertEqual(body, b"")

    def test_api_error_from_a_handler_and_from_its_deferred(self) -> None:
        def fails_now(request: IRequest) -> bytes:
            raise ApiError(409, "conflict now")

        async def fails_later(request: IRequest) -> bytes:
            await Deferred.fromCoroutine(_noop())
            raise ApiError(409, "conflict later")

        self.router.add("status.status", fails_now)
        self.router.add("api.api", fails_later)
        for path, message in (("/+status", "conflict now"), ("/+api", "conflict later")):
            head, body = self.get(path)
            self.assertTrue(head.startswith("HTTP/1.1 409"), head)
            self.assertEqual(json.loads(body), {"message": message})

    def test_unexpected_error_is_500_and_logged(self) -> None:
        def broken(request: IRequest) -> bytes:
            raise RuntimeError("boom")

        self.router.add("status.status", broken)
        head, body = self.get("/+status")
        self.assertTrue(head.startswith("HTTP/1.1 500"), head)
        self.assertEqual(json.loads(body)["message"], "internal server error")
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, RuntimeError)

    def test_handler_that_finishes_later(self) -> None:
        pending: Deferred[bytes] = Deferred()
        self.router.add("status.status", lambda request: pending)
        protocol, transport = self.connect()
        self.send(protocol, "GET", "/+status")
        self.assertEqual(transport.value(), b"")
        pending.callback(b"late")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nlate"))
        self.assertEqual(len(self.access_lines()), 1)

    def test_client_going_away_cancels_the_handler(self) -> None:
        cancelled: list[bool] = []
        pending: Deferred[bytes] = Deferred(lambda d: cancelled.append(True))

        async def waits(request: IRequest) -> bytes:
            return await pending

        self.router.add("status.status", waits)
        protocol, transport = self.connect()
        self.send(protocol, "GET", "/+status")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(cancelled, [True])
        self.assertEqual(transport.value(), b"")
        # A cancelled handler is not an error worth logging.
        self.assertEqual([e for e in self.events if "log_failure" in e], [])


async def _noop() -> None:
    return None


class IdentityHeaderTests(SynchronousTestCase):
    def test_every_response_carries_the_current_serial(self) -> None:
        directory = tempfile.mkdtemp(prefix="devpitx-test-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        server = make_test_server(directory)
        self.addCleanup(server.store.close)
        http = stub_client(server)

        def serial_header() -> tuple[str, str]:
            response = self.successResultOf(cast(Any, http).get(BASE + "/+api", headers={"Accept": "application/json"}))
            self.successResultOf(response.content())
            return (response.headers.getRawHeaders("x-devpi-serial")[0],
                    response.headers.getRawHeaders("x-devpi-uuid")[0])

        before, uuid = serial_header()
        self.assertEqual((before, uuid), (str(server.store.serial), server.node.uuid))
        self.assertEqual(serial_header(), (before, uuid))
        with server.store.write() as tx:
            tx.set(user_key("someone"), {"username": "someone"})
        self.assertEqual(serial_header(), (str(int(before) + 1), uuid))

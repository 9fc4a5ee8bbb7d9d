"""The primary's changelog endpoints (replication.md §2.3, §3; the devpitx JSON wire format).

In process: StubTreq against the real resource, a task.Clock for the long poll,
journal files on disk as the reference for byte-exact bodies.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.http import Request
from twisted.web.iweb import IResponse

from devpitx.auth.tokens import REPLICA_TOKEN_SECONDS, ReplicaTokens
from devpitx.runtime import RunBlocking
from devpitx.server import Server
from devpitx.storage.keys import user_key
from devpitx.tls import (
    CLIENT_CERTIFICATE_REQUIRED_MESSAGE,
    KeyPair,
    ReplicaTLSPolicy,
    server_tls_options,
    trust_root,
)
from devpitx.web import changelog
from devpitx.web.changelog import (
    LIST_MAX_BYTES,
    LONG_POLL_SECONDS,
    NOT_JSON_MESSAGE,
    STREAM_TYPE,
    ChangelogStream,
    Routes,
    collect_entry_list,
    read_entry_batch,
)
from devpitx.web.root import DevpitxSite
from tests.helpers.testserver import (
    BASE,
    TEST_REPLICA_KEY,
    basic_auth,
    make_test_server,
    stub_client,
)
from tests.helpers.tls_certs import (
    CertificateAuthority,
    Issued,
    Recorder,
    tls_connection,
)

REPLICA_UUID = "7c1e0c2fd9a64b0a8b8f4f1e6c1d2a3b"
STREAM_ACCEPT = f"{STREAM_TYPE}, application/json; q=0.9"
DEVPI_SERVER_ACCEPT = "application/x-devpi-replica-changes, application/octet-stream; q=0.9"


def temp_dir(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="devpitx-test-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class PrimaryTestCase(SynchronousTestCase):
    role = "primary"

    def setUp(self) -> None:
        self.clock = Clock()
        self.server: Server = make_test_server(temp_dir(self), clock=self.clock, role=self.role)
        self.addCleanup(self.server.store.close)
        self.http: Any = stub_client(self.server)     # StubTreq's methods are generated: untyped
        self.tokens = ReplicaTokens(TEST_REPLICA_KEY)

    def replica_headers(self, *, uuid: str = REPLICA_UUID, accept: str | None = STREAM_ACCEPT,
                        expected: str | None = None, token: str | None = None) -> dict[str, str]:
        """What a devpitx replica sends (replication.md §2.2); ``expected`` None: our uuid."""
        expected_id = self.server.node.uuid if expected is None else expected
        headers = {
            "X-Devpi-Replica-Uuid": uuid,
            "X-Devpi-Expected-Primary-Id": expected_id,
            "X-Devpi-Expected-Master-Id": expected_id,
            "Authorization": f"Bearer {token if token is not None else self.tokens.issue(uuid, self.clock.seconds())}",
        }
        if accept is not None:
            headers["Accept"] = accept
        return headers

    def start(self, path: str, headers: dict[str, str]) -> Deferred[Any]:
        d: Deferred[Any] = self.http.get(BASE + path, headers=headers)
        return d

    def fetch(self, path: str, headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        response = self.successResultOf(self.start(path, self.replica_headers() if headers is None else headers))
        return response, self.successResultOf(response.content())

    def finish(self, d: Deferred[Any]) -> tuple[Any, bytes]:
        self.http.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def error(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        response, body = self.fetch(path, headers)
        self.assertEqual(header(response, "content-type"), "application/json")
        return response.code, json.loads(body)["message"]

    def commit(self, count: int = 1, size: int = 10) -> None:
        for _ in range(count):
            with self.server.store.write() as tx:
                tx.set(user_key(f"user{self.server.store.serial + 1}"), {"pwhash": "x" * size})

    def journal_bytes(self, serial: int) -> bytes:
        return self.server.store.journal.path_for(serial).read_bytes()

    def status(self) -> dict[str, Any]:
        response = self.successResultOf(self.http.get(BASE + "/+status", headers={"Accept": "application/json"}))
        result: dict[str, Any] = json.loads(self.successResultOf(response.content()))["result"]
        return result


class RefusedOutsidePrimaryTests(PrimaryTestCase):
    role = "standalone"

    def test_standalone_refuses_replication(self) -> None:
        for path in ("/+changelog/0", "/+changelog/0-"):
            self.assertEqual(self.error(path, self.replica_headers()),
                             (403, "Replication protocol disabled"))
            # Before any other check: even a request without any replica header.
            self.assertEqual(self.error(path, {}), (403, "Replication protocol disabled"))


class RefusedOnReplicaTests(RefusedOutsidePrimaryTests):
    role = "replica"

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_test_server(temp_dir(self), clock=self.clock, role="replica",
                                       primary_url="http://primary.test")
        self.addCleanup(self.server.store.close)
        self.http = stub_client(self.server)
        self.tokens = ReplicaTokens(TEST_REPLICA_KEY)


class CheckTests(PrimaryTestCase):
    def test_expected_primary_id_is_required(self) -> None:
        headers = self.replica_headers()
        del headers["X-Devpi-Expected-Primary-Id"], headers["X-Devpi-Expected-Master-Id"]
        code, message = self.error("/+changelog/0", headers)
        self.assertEqual(code, 400)
        self.assertIn("X-Devpi-Expected-Primary-Id", message)

    def test_either_expected_header_suffices_and_may_be_empty(self) -> None:
        for dropped in ("X-Devpi-Expected-Primary-Id", "X-Devpi-Expected-Master-Id"):
            for expected in (self.server.node.uuid, ""):
                headers = self.replica_headers(expected=expected)
                del headers[dropped]
                response, _ = self.fetch("/+changelog/0", headers)
                self.assertEqual(response.code, 200, (dropped, expected))

    def test_other_primary_uuid_is_refused(self) -> None:
        other = "0" * 32
        self.assertEqual(self.error("/+changelog/0", self.replica_headers(expected=other)),
                         (400, f"expected {self.server.node.uuid} as primary_uuid, replica sent {other}"))
        headers = self.replica_headers()
        headers["X-Devpi-Expected-Primary-Id"] = other      # the primary header wins over the legacy one
        self.assertEqual(self.error("/+changelog/0-", headers)[0], 400)

    def test_uuid_check_comes_before_the_token_check(self) -> None:
        self.assertEqual(self.error("/+changelog/0", self.replica_headers(expected="0" * 32, token="junk"))[0], 400)

    def test_token_is_required(self) -> None:
        headers = self.replica_headers()
        del headers["Authorization"]
        self.assertEqual(self.error("/+changelog/0", headers), (403, "Authorization required."))
        headers = self.replica_headers()
        del headers["X-Devpi-Replica-Uuid"]         # a Bearer token alone is nobody's
        self.assertEqual(self.error("/+changelog/0-", headers), (403, "Authorization required."))

    def test_a_user_is_not_a_replica(self) -> None:
        headers = self.replica_headers()
        headers.update(basic_auth("root", "rootpw"))
        self.assertEqual(self.error("/+changelog/0", headers), (403, "Authorization required."))

    def test_fresh_token_is_accepted_until_it_expires(self) -> None:
        headers = self.replica_headers()
        self.clock.advance(REPLICA_TOKEN_SECONDS - 0.6)
        self.assertEqual(self.fetch("/+changelog/0", headers)[0].code, 200)
        self.clock.advance(1.0)
        self.assertEqual(self.error("/+changelog/0", headers), (403, "Authorization expired."))

    def test_token_of_another_replica(self) -> None:
        token = self.tokens.issue("f" * 32, self.clock.seconds())
        self.assertEqual(self.error("/+changelog/0", self.replica_headers(token=token)),
                         (403, "Wrong authorization value."))

    def test_malformed_tokens(self) -> None:
        foreign = ReplicaTokens(b"another secret key").issue(REPLICA_UUID, self.clock.seconds())
        for token in ("junk", foreign, self.tokens.issue(REPLICA_UUID, self.clock.seconds()) + "x"):
            self.assertEqual(self.error("/+changelog/0", self.replica_headers(token=token)),
                             (403, "Authorization malformed."), token)

    def test_devpi_server_replicas_are_told_why(self) -> None:
        for accept in (DEVPI_SERVER_ACCEPT, None, "text/html", f"{STREAM_TYPE}; q=0"):
            self.assertEqual(self.error("/+changelog/0-", self.replica_headers(accept=accept)),
                             (406, NOT_JSON_MESSAGE), accept)

    def test_only_the_next_serial_can_be_awaited(self) -> None:
        beyond = self.server.store.serial + 2
        for path in (f"/+changelog/{beyond}", f"/+changelog/{beyond}-", "/+changelog/" + "9" * 5000):
            self.assertEqual(self.error(path, self.replica_headers()), (404, "can only wait for next serial"))


class ClientCertificateTests(PrimaryTestCase):
    """With --ssl-client-ca, only TLS connections that presented a certificate of that CA may
    read the changelog (DESIGN.md §6); the check follows the role check."""

    pki: ClassVar[dict[str, Any]] = {}

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_test_server(temp_dir(self), clock=self.clock, role=self.role,
                                       ssl_client_ca=Path("/etc/devpitx/replica-ca.pem"))
        self.addCleanup(self.server.store.close)
        self.http = stub_client(self.server)
        self.tokens = ReplicaTokens(TEST_REPLICA_KEY)
        if not self.pki:
            ca = CertificateAuthority("replication CA")
            self.pki.update(ca=ca, server=ca.issue("primary", ip_addresses=["127.0.0.1"]),
                            replica=ca.issue("replica", client=True))

    def over_tls(self, path: str, headers: dict[str, str], client: Issued | None) -> tuple[int, bytes]:
        """One request through a real in-memory TLS connection to the server's Site."""
        server_cert, ca = self.pki["server"], self.pki["ca"]
        options = server_tls_options(KeyPair([server_cert.certificate], server_cert.key), [ca.certificate])
        policy = ReplicaTLSPolicy("https://127.0.0.1:443", trust=trust_root([ca.certificate]),
                                  client=KeyPair([client.certificate], client.key) if client else None,
                                  fallback=BrowserLikePolicyForHTTPS())
        site = DevpitxSite(self.server.resource(), max_body_bytes=1024, tmp_dir=self.server.store.blobs.tmp_dir,
                           identity_headers=self.server.identity_headers, clock_seconds=self.clock.seconds,
                           reactor=self.clock)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers.items())]
        client_side = Recorder(("\r\n".join(lines) + "\r\n\r\n").encode())
        tls_connection(options, policy.creatorForNetloc(b"127.0.0.1", 443), site, client_side)
        status_line, _, rest = client_side.received.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]

    def test_plain_connections_are_refused(self) -> None:
        for path in ("/+changelog/0", "/+changelog/0-"):
            self.assertEqual(self.error(path, self.replica_headers()), (403, CLIENT_CERTIFICATE_REQUIRED_MESSAGE))

    def test_certificate_check_comes_right_after_the_role_check(self) -> None:
        # Before the uuid and token checks: a request with no replica header at all.
        self.assertEqual(self.error("/+changelog/0", {}), (403, CLIENT_CERTIFICATE_REQUIRED_MESSAGE))

    def test_replica_certificate_is_let_through(self) -> None:
        code, body = self.over_tls("/+changelog/0", self.replica_headers(), self.pki["replica"])
        self.assertEqual(code, 200)
        self.assertEqual(body, self.journal_bytes(0))

    def test_tls_without_certificate_is_refused(self) -> None:
        code, body = self.over_tls("/+changelog/0", self.replica_headers(), None)
        self.assertEqual((code, json.loads(body)["message"]), (403, CLIENT_CERTIFICATE_REQUIRED_MESSAGE))
        # Other endpoints do not need a certificate.
        self.assertEqual(self.over_tls("/+api", {"Accept": "application/json"}, None)[0], 200)

    def test_the_token_is_still_checked_behind_the_certificate(self) -> None:
        code, body = self.over_tls("/+changelog/0", self.replica_headers(token="junk"), self.pki["replica"])
        self.assertEqual(code, 403)
        self.assertNotEqual(json.loads(body)["message"], CLIENT_CERTIFICATE_REQUIRED_MESSAGE)


class StandaloneWithClientCaTests(PrimaryTestCase):
    role = "standalone"

    def setUp(self) -> None:
        super().setUp()
        self.server = make_test_server(temp_dir(self), clock=self.clock, role=self.role,
                                       ssl_client_ca=Path("/etc/devpitx/replica-ca.pem"))
        self.addCleanup(self.server.store.close)
        self.http = stub_client(self.server)

    def test_role_check_comes_first(self) -> None:
        self.assertEqual(self.error("/+changelog/0", {}), (403, "Replication protocol disabled"))


class SingleEntryTests(PrimaryTestCase):
    def test_entry_as_stored(self) -> None:
        self.commit(3)
        for serial in range(self.server.store.serial + 1):
            response, body = self.fetch(f"/+changelog/{serial}")
            self.assertEqual(response.code, 200)
            self.assertEqual(body, self.journal_bytes(serial))
            self.assertEqual(json.loads(body)["serial"], serial)
            self.assertEqual(header(response, "content-type"), "application/json")
            self.assertEqual(header(response, "x-devpi-serial"), str(self.server.store.serial))
            self.assertEqual(header(response, "x-devpi-uuid"), self.server.node.uuid)
            self.assertEqual(header(response, "x-devpi-primary-uuid"), self.server.node.uuid)

    def test_long_poll_fires_on_commit(self) -> None:
        next_serial = self.server.store.serial + 1
        d = self.start(f"/+changelog/{next_serial}", self.replica_headers())
        self.assertNoResult(d)
        self.clock.advance(LONG_POLL_SECONDS - 1)
        self.http.flush()
        self.assertNoResult(d)
        self.commit()
        response, body = self.finish(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.journal_bytes(next_serial))
        self.assertEqual(header(response, "x-devpi-serial"), str(next_serial))

    def test_long_poll_gives_up_with_202(self) -> None:
        current = self.server.store.serial
        d = self.start(f"/+changelog/{current + 1}", self.replica_headers())
        self.clock.advance(LONG_POLL_SECONDS)
        response, body = self.finish(d)
        self.assertEqual(response.code, 202)
        self.assertEqual(body, b"")
        self.assertEqual(header(response, "x-devpi-serial"), str(current))

    def test_initial_fetch_waits_one_second(self) -> None:
        d = self.start(f"/+changelog/{self.server.store.serial + 1}?initial_fetch", self.replica_headers())
        self.clock.advance(0.5)
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertEqual(self.finish(d)[0].code, 202)


class ManyEntriesTests(PrimaryTestCase):
    def expected_stream(self, first: int, last: int) -> bytes:
        return b"".join(self.journal_bytes(serial) + b"\n" for serial in range(first, last + 1))

    def test_stream_of_many_entries_is_the_journal(self) -> None:
        batch_entries = 4
        self.patch(changelog, "STREAM_BATCH_ENTRIES", batch_entries)
        self.commit(3 * batch_entries + 2)       # several batches, the last one partial
        last = self.server.store.serial
        for first in (0, 1, batch_entries + 1, last):
            response, body = self.fetch(f"/+changelog/{first}-")
            self.assertEqual(response.code, 200)
            self.assertEqual(header(response, "content-type"), STREAM_TYPE)
            self.assertEqual(header(response, "x-devpi-serial"), str(last))
            self.assertEqual(body, self.expected_stream(first, last), first)
        lines = body.split(b"\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual([json.loads(line)["serial"] for line in lines[:-1]], [last])

    def test_stream_long_poll(self) -> None:
        first = self.server.store.serial + 1
        d = self.start(f"/+changelog/{first}-", self.replica_headers())
        self.assertNoResult(d)
        self.commit()
        response, body = self.finish(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.expected_stream(first, first))
        d = self.start(f"/+changelog/{first + 1}-?initial_fetch", self.replica_headers())
        self.clock.advance(1)
        response, body = self.finish(d)
        self.assertEqual((response.code, body), (202, b""))

    def test_stream_ends_at_the_serial_current_when_it_started(self) -> None:
        self.commit(5)
        last = self.server.store.serial
        reads: list[tuple[Any, ...]] = []
        handler: Any = self.server.router.handler_for("changelog.multi")
        routes = handler.__self__
        assert isinstance(routes, Routes)
        routes._run_disk = deferred_runner(reads)
        d = self.start("/+changelog/0-", self.replica_headers())
        self.assertEqual(len(reads), 1)         # the first batch is being read ...
        self.commit(3)                          # ... while more is committed
        run_pending(reads)
        response, body = self.finish(d)
        self.assertEqual(header(response, "x-devpi-serial"), str(last))
        self.assertEqual(body, self.expected_stream(0, last))

    def test_json_list_for_replicas_without_streaming(self) -> None:
        self.commit(4)
        last = self.server.store.serial
        response, body = self.fetch("/+changelog/2-", self.replica_headers(accept="application/json"))
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), "application/json")
        self.assertEqual(header(response, "x-devpi-serial"), str(last))
        self.assertEqual(body, b"[" + b",".join(self.journal_bytes(s) for s in range(2, last + 1)) + b"]")
        self.assertEqual([entry["serial"] for entry in json.loads(body)], list(range(2, last + 1)))

    def test_json_list_is_cut_after_five_mib(self) -> None:
        first = self.server.store.serial + 1
        entry_size = LIST_MAX_BYTES // 4
        self.commit(6, size=entry_size)
        response, body = self.fetch(f"/+changelog/{first}-", self.replica_headers(accept="application/json"))
        serials = [entry["serial"] for entry in json.loads(body)]
        # Four entries are just over 4 x 1.25 MiB = 5 MiB: the fourth is the last one sent.
        self.assertEqual(serials, [first, first + 1, first + 2, first + 3])
        self.assertEqual(header(response, "x-devpi-serial"), str(first + 5))


class PollingReplicasTests(PrimaryTestCase):
    def test_status_shows_polling_replicas(self) -> None:
        self.assertEqual(self.status()["polling_replicas"], {})
        next_serial = self.server.store.serial + 1
        headers = self.replica_headers()
        headers["X-Real-Ip"] = "192.0.2.7"
        headers["X-Devpi-Replica-Outside-Url"] = "https://replica.test/devpi"
        started_at = self.clock.seconds()
        d = self.start(f"/+changelog/{next_serial}-", headers)
        self.assertEqual(self.status()["polling_replicas"], {REPLICA_UUID: {
            "remote-ip": "192.0.2.7", "serial": next_serial - 1, "in-request": True, "is-streaming": True,
            "last-request": started_at, "outside-url": "https://replica.test/devpi"}})
        self.clock.advance(3)
        self.commit()
        self.assertEqual(self.finish(d)[0].code, 200)
        polled = self.status()["polling_replicas"][REPLICA_UUID]
        self.assertEqual((polled["in-request"], polled["serial"], polled["last-request"]),
                         (False, next_serial, started_at + 3))

    def test_peer_address_and_list_format(self) -> None:
        self.fetch("/+changelog/0-", self.replica_headers(accept="application/json"))
        polled = self.status()["polling_replicas"][REPLICA_UUID]
        self.assertEqual((polled["is-streaming"], polled["serial"], polled["outside-url"]), (False, -1, None))
        self.assertTrue(polled["remote-ip"])

    def test_refused_requests_are_not_recorded(self) -> None:
        self.error("/+changelog/0", self.replica_headers(token="junk"))
        self.error("/+changelog/0-", self.replica_headers(accept=DEVPI_SERVER_ACCEPT))
        self.assertEqual(self.status()["polling_replicas"], {})


def deferred_runner(calls: list[tuple[Any, ...]]) -> RunBlocking:
    """A RunBlocking that runs nothing until ``run_pending``: the disk takes its time."""
    def run(fn: Any, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        calls.append((d, fn, args, kwargs))
        return d
    return run


def run_pending(calls: list[tuple[Any, ...]]) -> None:
    while calls:
        d, fn, args, kwargs = calls.pop(0)
        d.callback(fn(*args, **kwargs))


# -- the pieces, without HTTP ----------------------------------------------------------------------
class FakeConsumer:
    """The request side of a stream: records writes, pauses its producer when ``full``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.registered_streaming: bool | None = None
        self.unregistered = False
        self.lost = False
        self.full_after_each_write = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.registered_streaming = streaming

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.full_after_each_write:
            self.producer.pauseProducing()

    def loseConnection(self) -> None:
        self.lost = True


ENTRIES = [json.dumps({"serial": serial, "changes": {}}).encode() for serial in range(10)]


def read_entry(serial: int) -> bytes:
    return ENTRIES[serial]


class ChangelogStreamTests(SynchronousTestCase):
    def stream(self, consumer: FakeConsumer, run: RunBlocking, first: int = 0, last: int = 9,
               **kwargs: Any) -> ChangelogStream:
        return ChangelogStream(cast(Request, consumer), run, read_entry, first, last, **kwargs)

    def test_writes_each_entry_with_a_newline_then_finishes(self) -> None:
        from devpitx.runtime import run_inline
        consumer = FakeConsumer()
        sent: list[int] = []
        d = self.stream(consumer, run_inline, 2, 7, on_sent=sent.append, batch_entries=2).start()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.written, [ENTRIES[s] + b"\n" for s in range(2, 8)])
        self.assertEqual(sent, list(range(2, 8)))
        self.assertTrue(consumer.registered_streaming)
        self.assertTrue(consumer.unregistered)

    def test_respects_flow_control(self) -> None:
        calls: list[tuple[Any, ...]] = []
        consumer = FakeConsumer()
        consumer.full_after_each_write = True
        d = self.stream(consumer, deferred_runner(calls), batch_entries=1, batch_bytes=2 * len(ENTRIES[0]) - 1).start()
        run_pending(calls)
        # Paused after the first write: no second write, and reading stopped two entries ahead.
        self.assertEqual(consumer.written, [ENTRIES[0] + b"\n"])
        self.assertEqual(calls, [])
        for serial in range(1, 10):
            consumer.producer.resumeProducing()
            run_pending(calls)
            self.assertEqual(len(consumer.written), serial + 1)
        self.assertEqual(b"".join(consumer.written), b"".join(e + b"\n" for e in ENTRIES))
        self.successResultOf(d)

    def test_waits_for_the_disk(self) -> None:
        calls: list[tuple[Any, ...]] = []
        consumer = FakeConsumer()
        d = self.stream(consumer, deferred_runner(calls), batch_entries=3).start()
        self.assertEqual((consumer.written, len(calls)), ([], 1))
        self.assertNoResult(d)
        run_pending(calls)
        self.assertEqual(len(consumer.written), 10)
        self.successResultOf(d)

    def test_client_gone_stops_the_stream(self) -> None:
        calls: list[tuple[Any, ...]] = []
        consumer = FakeConsumer()
        d = self.stream(consumer, deferred_runner(calls), batch_entries=3).start()
        d.cancel()
        from twisted.internet.defer import CancelledError
        self.failureResultOf(d, CancelledError)
        run_pending(calls)
        self.assertEqual(consumer.written, [])
        consumer2 = FakeConsumer()
        stream = self.stream(consumer2, deferred_runner(calls), batch_entries=3)
        stream.start()
        stream.stopProducing()
        run_pending(calls)
        self.assertEqual(consumer2.written, [])

    def test_read_failure_drops_the_connection_unfinished(self) -> None:
        from devpitx.runtime import run_inline
        consumer = FakeConsumer()
        # Serial 10 does not exist: the batch reading 8..10 fails after some entries went out.
        d = self.stream(consumer, run_inline, 0, 10, batch_entries=4, batch_bytes=4 * len(ENTRIES[0])).start()
        self.assertNoResult(d)
        self.assertTrue(consumer.lost)
        self.assertTrue(consumer.unregistered)
        self.assertLess(len(consumer.written), 10)
        self.assertEqual(consumer.written, [e + b"\n" for e in ENTRIES[:len(consumer.written)]])
        self.assertEqual(len(self.flushLoggedErrors(IndexError)), 1)


class EntryBatchTests(SynchronousTestCase):
    def test_list_stops_after_the_entry_over_the_size_limit(self) -> None:
        size = len(ENTRIES[0])
        body = collect_entry_list(read_entry, 0, 9, lambda: 0.0, max_bytes=2 * size)
        self.assertEqual(json.loads(body), [json.loads(e) for e in ENTRIES[:3]])
        self.assertEqual(body, b"[" + b",".join(ENTRIES[:3]) + b"]")

    def test_list_stops_after_the_time_limit(self) -> None:
        ticks = iter(range(100))
        body = collect_entry_list(read_entry, 0, 9, lambda: float(next(ticks)), max_seconds=2.5)
        self.assertEqual(len(json.loads(body)), 3)      # read at t=1, 2, 3: over 2.5 s after the third

    def test_list_has_at_least_one_entry(self) -> None:
        body = collect_entry_list(read_entry, 4, 9, lambda: 0.0, max_bytes=0)
        self.assertEqual(body, b"[" + ENTRIES[4] + b"]")
        self.assertEqual(collect_entry_list(read_entry, 4, 6, lambda: 0.0), b"[" + b",".join(ENTRIES[4:7]) + b"]")

    def test_batches(self) -> None:
        size = len(ENTRIES[0])
        self.assertEqual(read_entry_batch(read_entry, 0, 9, 3, 10**6), ENTRIES[0:3])
        self.assertEqual(read_entry_batch(read_entry, 8, 9, 3, 10**6), ENTRIES[8:10])
        self.assertEqual(read_entry_batch(read_entry, 0, 9, 10, 2 * size), ENTRIES[0:2])
        self.assertEqual(read_entry_batch(read_entry, 5, 9, 10, 0), ENTRIES[5:6])

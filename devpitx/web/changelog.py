"""``/+changelog/<serial>[-]``: the primary's replication feed (replication.md §2.3, §3).

Between devpitx nodes the change records are JSON: the journal entry of each
serial exactly as stored on disk (storage/journal.py), so a replica can keep
the primary's journal byte for byte.

* ``/+changelog/{s}``: one entry, ``application/json``.
* ``/+changelog/{s}-`` with ``application/x-devpitx-changes+jsonl`` accepted:
  every entry from ``s`` to the serial current when the answer starts, each
  followed by ``\\n``, streamed by :class:`ChangelogStream`.
* ``/+changelog/{s}-`` with only ``application/json`` accepted (a replica with
  ``--no-replica-streaming``): a JSON array of entries from ``s``, cut after
  5 MiB or 18.75 s.
* anything else (a devpi-server replica wants its binary format): 406.

Waiting rule: ``s`` beyond the next serial is 404; the next serial is a long
poll (a Deferred on the store's SerialWaiter, 30 s, 1 s for ``initial_fetch``)
ending in 202 when nothing was committed.

Only a server running with role ``primary`` answers, and only to requests
carrying a replica's bearer token (auth.md §9); devpi-server would also accept
requests without one, devpitx does not. With ``--ssl-client-ca`` the
connection must also have presented a client certificate signed by that CA
(checked right after the role, DESIGN.md §6).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from zope.interface import implementer

from devpitx.runtime import RunBlocking
from devpitx.tls import CLIENT_CERTIFICATE_REQUIRED_MESSAGE, peer_certificate
from devpitx.web.errors import ApiError
from devpitx.web.identity import REPLICA_UUID_HEADER
from devpitx.web.negotiate import accept_header, header, parse_accept

if TYPE_CHECKING:
    from devpitx.server import Server

log = Logger()

STREAM_TYPE = "application/x-devpitx-changes+jsonl"
LIST_TYPE = "application/json"
LONG_POLL_SECONDS = 30.0
INITIAL_FETCH_POLL_SECONDS = 1.0      # a replica catching up should not sit out a long poll first
LIST_MAX_BYTES = 5 * 1024 * 1024
LIST_MAX_SECONDS = 18.75
# Journal entries read from disk per thread hop while streaming: enough to keep the
# socket busy while the next batch is read, little enough to hold two batches per stream.
STREAM_BATCH_ENTRIES = 256
STREAM_BATCH_BYTES = 1024 * 1024
NOT_JSON_MESSAGE = f"devpitx primaries send JSON change records ({STREAM_TYPE})"

ReadEntry = Callable[[int], bytes]


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store
        self._run_disk = server.run_disk
        self._identity = server.identity
        self._polling = server.polling_replicas
        self._seconds = server.clock.seconds

    def install(self, router: Any) -> None:
        router.add("changelog.single", self.single)
        router.add("changelog.multi", self.multi)

    async def single(self, request: IRequest, serial: str) -> bytes | None:
        replica_uuid = self._check_replica(request)
        return await self._answer(request, replica_uuid, _serial(serial), many=False, streaming=False)

    async def multi(self, request: IRequest, serial: str) -> bytes | None:
        replica_uuid = self._check_replica(request)
        streaming = _wants_stream(request)
        return await self._answer(request, replica_uuid, _serial(serial), many=True, streaming=streaming)

    # -- checks (replication.md §2.3, in this order) ---------------------------------------------
    def _check_replica(self, request: IRequest) -> str:
        """The replica uuid of a request allowed to read the changelog, else ``ApiError``."""
        node = self._server.node
        if node.role != "primary":
            raise ApiError(403, "Replication protocol disabled")
        if self._server.replica_certificate_required and peer_certificate(request) is None:
            raise ApiError(403, CLIENT_CERTIFICATE_REQUIRED_MESSAGE)
        expected = header(request, b"x-devpi-expected-primary-id")
        if expected is None:
            expected = header(request, b"x-devpi-expected-master-id")
        if expected is None:
            # Required, but empty is fine: a replica that never talked to us has no uuid to expect.
            raise ApiError(400, "replica sent no X-Devpi-Expected-Primary-Id or X-Devpi-Expected-Master-Id header")
        if expected and expected != node.uuid:
            raise ApiError(400, f"expected {node.uuid} as primary_uuid, replica sent {expected}")
        if self._identity.replica_identity(request) is None:
            raise ApiError(403, "Authorization required.")
        return header(request, REPLICA_UUID_HEADER) or ""

    # -- answers -----------------------------------------------------------------------------
    async def _answer(self, request: IRequest, replica_uuid: str, start: int, *, many: bool,
                      streaming: bool) -> bytes | None:
        next_serial = self._store.serial + 1
        if start > next_serial:
            raise ApiError(404, "can only wait for next serial")
        self._polling.request_started(replica_uuid, remote_ip=_remote_ip(request), requested_serial=start,
                                      is_streaming=streaming,
                                      outside_url=header(request, b"x-devpi-replica-outside-url"))
        try:
            if start == next_serial:
                timeout = INITIAL_FETCH_POLL_SECONDS if _initial_fetch(request) else LONG_POLL_SECONDS
                if await self._store.waiter.wait_for_serial(start, timeout) is None:
                    _set_serial(request, self._store.serial)
                    request.setResponseCode(202)
                    return b""
            # The answer covers the entries up to the serial current now; X-Devpi-Serial says which.
            last = self._store.serial
            _set_serial(request, last)
            read_entry = self._store.journal.read_bytes
            if not many:
                body = await self._run_disk(read_entry, start)
                request.setHeader(b"content-type", LIST_TYPE.encode())
                return body
            if not streaming:
                body = await self._run_disk(collect_entry_list, read_entry, start, last, self._seconds)
                request.setHeader(b"content-type", LIST_TYPE.encode())
                return body
            request.setHeader(b"content-type", STREAM_TYPE.encode())
            # Buffering proxies in front of us must pass entries on as they come.
            request.setHeader(b"x-accel-buffering", b"no")
            stream = ChangelogStream(cast(Request, request), self._run_disk, read_entry, start, last,
                                     on_sent=lambda serial: self._polling.streamed(replica_uuid, serial),
                                     batch_entries=STREAM_BATCH_ENTRIES, batch_bytes=STREAM_BATCH_BYTES)
            await stream.start()
            return None
        finally:
            self._polling.request_ended(replica_uuid)


def _serial(digits: str) -> int:
    # More digits than any serial could have: beyond the next serial (and int() of thousands
    # of digits is refused or slow).
    if len(digits) > 18:
        raise ApiError(404, "can only wait for next serial")
    return int(digits)


def _wants_stream(request: IRequest) -> bool:
    """True for the stream, False for the list; ``ApiError`` 406 for neither (a devpi-server replica)."""
    accept = accept_header(request) or ""
    offered = {media: q for media, q in parse_accept(accept)}
    if offered.get(STREAM_TYPE, 0.0) > 0:
        return True
    if offered.get(LIST_TYPE, 0.0) > 0:
        return False
    raise ApiError(406, NOT_JSON_MESSAGE)


def _initial_fetch(request: IRequest) -> bool:
    _, _, query = request.uri.partition(b"?")
    return b"initial_fetch" in query


def _remote_ip(request: IRequest) -> str:
    real_ip = header(request, b"x-real-ip")
    if real_ip:
        return real_ip
    return str(getattr(request.getClientAddress(), "host", ""))


def _set_serial(request: IRequest, serial: int) -> None:
    request.setHeader(b"X-Devpi-Serial", str(serial).encode())


# -- bodies (run in the disk pool) ---------------------------------------------------------------
def collect_entry_list(read_entry: ReadEntry, first: int, last: int, seconds: Callable[[], float],
                       max_bytes: int = LIST_MAX_BYTES, max_seconds: float = LIST_MAX_SECONDS) -> bytes:
    """``[entry, entry, ...]`` from ``first`` on, stopping after ``last``, after the entry that
    takes the total over ``max_bytes`` or once ``max_seconds`` went by (at least one entry)."""
    parts: list[bytes] = []
    size = 0
    started = seconds()
    for serial in range(first, last + 1):
        data = read_entry(serial)
        parts.append(data)
        size += len(data)
        if size > max_bytes or seconds() - started > max_seconds:
            break
    return b"[" + b",".join(parts) + b"]"


def read_entry_batch(read_entry: ReadEntry, first: int, last: int, max_entries: int = STREAM_BATCH_ENTRIES,
                     max_bytes: int = STREAM_BATCH_BYTES) -> list[bytes]:
    """Entries ``first``.. (at most ``last``): at least one, then while within both limits."""
    batch: list[bytes] = []
    size = 0
    serial = first
    while serial <= last and len(batch) < max_entries and (not batch or size < max_bytes):
        data = read_entry(serial)
        batch.append(data)
        size += len(data)
        serial += 1
    return batch


# -- the stream ----------------------------------------------------------------------------------
@implementer(IPushProducer)
class ChangelogStream:
    """Writes journal entries ``first``..``last`` (each plus ``\\n``) while the transport takes them.

    A push producer like files.BlobProducer: :meth:`pauseProducing` (called by
    the transport from inside ``write`` once its buffer is full) stops the
    writing until :meth:`resumeProducing`. Entries are read in batches in the
    disk pool; the next batch is read while the previous one is written, so at
    most about two batches are held per stream.

    :meth:`start` returns a Deferred that fires when the last entry was
    written; cancelling it (the client went away) stops everything. A failed
    journal read drops the connection instead of finishing the body, so the
    replica never mistakes a cut stream for a complete one.
    """

    def __init__(self, request: Request, run_disk: RunBlocking, read_entry: ReadEntry, first: int, last: int,
                 *, on_sent: Callable[[int], None] = lambda serial: None,
                 batch_entries: int = STREAM_BATCH_ENTRIES, batch_bytes: int = STREAM_BATCH_BYTES) -> None:
        self._request = request
        self._run_disk = run_disk
        self._read_entry = read_entry
        self._next_to_read = first
        self._next_to_send = first
        self._last = last
        self._on_sent = on_sent
        self._batch_entries = batch_entries
        self._batch_bytes = batch_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._reading: Deferred[list[bytes]] | None = None
        self._paused = False
        self._pumping = False
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _d: self._stop())

    def start(self) -> Deferred[None]:
        self._request.registerProducer(self, True)
        self._pump()
        return self._done

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stop()

    def _pump(self) -> None:
        if self._pumping:
            return      # re-entered from write() or a batch that was read synchronously
        self._pumping = True
        try:
            while not self._stopped:
                if self._reading is None and self._next_to_read <= self._last \
                        and self._queued_bytes < self._batch_bytes:
                    self._read_next_batch()
                    continue        # the batch may have arrived synchronously
                if self._next_to_send > self._last:
                    self._finish()      # everything is with the transport, paused or not
                    return
                if self._paused or not self._queue:
                    return      # resumeProducing or the disk calls again
                data = self._queue.popleft()
                self._queued_bytes -= len(data)
                serial = self._next_to_send
                self._next_to_send += 1
                self._request.write(data + b"\n")     # may pause us before it returns
                self._on_sent(serial)
        finally:
            self._pumping = False

    def _read_next_batch(self) -> None:
        d = self._run_disk(read_entry_batch, self._read_entry, self._next_to_read, self._last,
                           self._batch_entries, self._batch_bytes)
        self._reading = d
        d.addCallbacks(self._got_batch, self._read_failed)

    def _got_batch(self, batch: list[bytes]) -> None:
        self._reading = None
        if self._stopped:
            return
        if not batch:
            self._read_failed(Failure(RuntimeError(f"no journal entry at serial {self._next_to_read}")))
            return
        self._next_to_read += len(batch)
        self._queue.extend(batch)
        self._queued_bytes += sum(len(data) for data in batch)
        self._pump()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = None
        if self._stopped:
            return
        log.failure("reading journal entries from serial {serial} for a changelog stream", failure,
                    serial=self._next_to_read)
        self._stop()
        self._request.unregisterProducer()
        # Never finish the body: the replica must see a broken response, not a short one.
        self._request.loseConnection()

    def _finish(self) -> None:
        self._stopped = True
        self._request.unregisterProducer()
        self._done.callback(None)

    def _stop(self) -> None:
        self._stopped = True
        self._queue.clear()
        self._queued_bytes = 0

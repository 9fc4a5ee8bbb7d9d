"""The replica's metadata loop (replication.md §5.1): follow the primary's journal, entry by entry.

The loop long-polls ``{primary}/+changelog/{local + 1}-``; the primary holds
the request until that serial exists (or 30 s pass: 202, ask again at once),
then streams every entry from there as JSON lines. Each line is applied the
moment it is complete (``Store.apply_replicated``: same serial, same bytes),
so a commit on the primary reaches the replica one network round trip
later, and a catch-up of thousands of entries makes progress that survives a
dropped connection.

Failures (transport errors, unusable answers, entries that do not follow)
are logged and retried from the next missing serial after RETRY_SECONDS.
The primary's uuid is recorded on the first answer; an answer from a primary
with another uuid is fatal (exit code 3): the replica belongs to a different
primary and waiting will not heal that.

Applying is synchronous on the reactor thread. A line that arrives alone is
committed on its own, like a local commit; the lines that arrived together
(a catch-up) are committed as a group of up to GROUP_LINES entries made
durable by one filesystem sync (``Store.apply_replicated_group``), instead of
two fsyncs per entry. A long catch-up gives the reactor a turn every
APPLY_SLICE_SECONDS, and the body is paused while unapplied lines pile up.
"""
from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from devpitx.mirror.upstream import BodyTooLarge, describe_error, discard_body, first_header, media_type, read_body
from devpitx.replica.primary_client import (
    LIST_TYPE,
    STREAM_TYPE,
    PrimaryClient,
    PrimaryUnreachable,
)
from devpitx.replica.status import ReplicationStatus
from devpitx.runtime import RunBlocking
from devpitx.storage.journal import Entry
from devpitx.storage.store import ReplicationRefused, Store, StoreBroken

RETRY_SECONDS = 5.0
UUID_RETRY_SECONDS = 50.0
# No byte of a changelog body for this long: the connection is dead.
BODY_IDLE_SECONDS = 37.5
MAX_LINE_BYTES = 256 * 1024 * 1024
MAX_LIST_BYTES = 512 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
# Pause the body while this many complete lines wait to be applied; resume at LOW_WATER.
HIGH_WATER_LINES = 256
LOW_WATER_LINES = 32
APPLY_SLICE_SECONDS = 0.02
# At most this many entries share one filesystem sync; bounds the reactor's time per group.
GROUP_LINES = 128

EXIT_OTHER_PRIMARY = 3
EXIT_STORE_BROKEN = 1

FatalCallback = Callable[[int, str], None]


class ChangelogError(Exception):
    """An answer the replica cannot use; retried after RETRY_SECONDS."""


class _Fatal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_entry(data: bytes) -> Entry:
    """A journal entry from its JSON text (one stream line); ChangelogError if it is none."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ChangelogError(f"unreadable change record: {exc}") from None
    return entry_from_json(raw)


def entry_from_json(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise ChangelogError("change record is not an object")
    serial, changes, blobs = raw.get("serial"), raw.get("changes"), raw.get("blobs", [])
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise ChangelogError(f"change record without a serial: {serial!r}")
    if not isinstance(changes, dict) or not isinstance(blobs, list):
        raise ChangelogError(f"change record {serial} lacks 'changes' or 'blobs'")
    return Entry(serial=serial, at=raw.get("at"), changes=changes, blobs=tuple(blobs))  # type: ignore[arg-type]


class ChangeLines(Protocol):
    """Splits a changelog body into lines as it arrives; :meth:`next_line` hands them out in order.

    Backpressure: while HIGH_WATER_LINES lines wait, the body is paused.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max_line_bytes = max_line_bytes
        self._partial = bytearray()
        self._lines: deque[bytes] = deque()
        self._waiter: Deferred[bytes | None] | None = None
        self._ended = False          # no more lines will come (complete, failed or aborted)
        self._lost = False           # the body's connection is gone
        self._failure: Failure | None = None
        self._paused = False

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start:newline]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = data[start:newline]
            if line.strip():
                self._lines.append(line)
            start = newline + 1
        self._partial += data[start:]
        if len(self._partial) > self._max_line_bytes:
            self._end(Failure(ChangelogError(f"change record longer than {self._max_line_bytes} bytes")))
            self.abort()
        elif len(self._lines) >= HIGH_WATER_LINES and not self._paused and self.transport is not None:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._lost = True
        if self._ended:
            return
        if self._partial.strip():
            failure = Failure(ChangelogError(f"changelog body ended inside a record ({reason.getErrorMessage()})"))
            self._end(failure)
        elif reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: no length and the connection closed, after a whole line:
            # every record received is complete, and the next poll continues after the last.
            self._end(None)
        else:
            problem = describe_error(cast(BaseException, reason.value))
            self._end(Failure(ChangelogError(f"changelog body broke off: {problem}")))
        self._wake()

    def _end(self, failure: Failure | None) -> None:
        self._ended = True
        self._failure = failure
        self._partial.clear()

    def next_line(self) -> Deferred[bytes | None]:
        """The next complete line, or None at the end of a complete body; fails if it broke off."""
        if self._lines:
            line = self._lines.popleft()
            if self._paused and len(self._lines) <= LOW_WATER_LINES and self.transport is not None:
                self._paused = False
                cast(IPushProducer, self.transport).resumeProducing()
            return succeed(line)
        if self._ended:
            return fail(self._failure) if self._failure is not None else succeed(None)
        d: Deferred[bytes | None] = Deferred(self._cancelled)
        self._waiter = d
        return d

    def ready_lines(self, limit: int) -> list[bytes]:
        """Up to ``limit`` complete lines that are already here, without waiting."""
        taken: list[bytes] = []
        while self._lines and len(taken) < limit:
            taken.append(self._lines.popleft())
        if self._paused and len(self._lines) <= LOW_WATER_LINES and self.transport is not None:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()
        return taken

    def _cancelled(self, d: Deferred[bytes | None]) -> None:
        if self._waiter is d:
            self._waiter = None
        self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or not (self._lines or self._ended):
            return
        self._waiter = None
        self.next_line().chainDeferred(waiter)

    def abort(self) -> None:
        """Drop the connection (an error, a stop, or an idle body); no more lines are handed out."""
        if not self._ended:
            self._end(Failure(ChangelogError("changelog body abandoned")))
            self._lines.clear()
        if self.transport is not None and not self._lost:
            self._lost = True
            cast(IPushProducer, self.transport).stopProducing()


class ChangelogPuller:
    """Runs the loop of §5.1 until :meth:`stop`; a :class:`ReplicaService` owns it."""

    log = Logger()

    def __init__(self, store: Store, client: PrimaryClient, status: ReplicationStatus, *,
                 clock: IReactorTime, run_blocking: RunBlocking, streaming: bool,
                 record_primary_uuid: Callable[[str], None], on_fatal: FatalCallback,
                 on_in_sync: Callable[[], None] | None = None) -> None:
        self._store = store
        self._client = client
        self._status = status
        self._clock = clock
        self._run_blocking = run_blocking
        self._streaming = streaming
        self._record_primary_uuid = record_primary_uuid
        self._on_fatal = on_fatal
        self._on_in_sync = on_in_sync
        self._initial = True
        self.running = False

    async def run(self) -> None:
        """The loop; returns after :meth:`stop` or a fatal error. Cancel it to stop at once."""
        self.running = True
        while self.running:
            try:
                delay = await self.poll_once()
            except CancelledError:
                raise
            except _Fatal as exc:
                self.log.critical("replication stopped: {message}", message=exc.message)
                self.running = False
                self._on_fatal(exc.code, exc.message)
                return
            except (ChangelogError, PrimaryUnreachable, ReplicationRefused, TimeoutError, ResponseFailed,
                    ConnectionLost) as exc:
                if not self.running:
                    return
                self.log.error("replication from {primary} failed: {error}; retrying in {delay:g} s",
                               primary=self._client.primary_url, error=describe_error(exc), delay=RETRY_SECONDS)
                delay = RETRY_SECONDS
            except Exception:
                if not self.running:
                    return
                self.log.failure("replication from {primary} failed; retrying in {delay:g} s",
                                 primary=self._client.primary_url, delay=RETRY_SECONDS)
                delay = RETRY_SECONDS
            if self.running and delay > 0:
                await deferLater(self._clock, delay)

    def stop(self) -> None:
        self.running = False

    async def poll_once(self) -> float:
        """One changelog request and its answer; returns the seconds to wait before the next."""
        start = self._store.serial + 1
        url = self._client.changelog_url(start, initial=self._initial)
        self._status.contacted()
        response = await self._client.open_changelog(start, initial=self._initial, streaming=self._streaming)
        if not self.running:
            discard_body(response)
            return 0.0
        if response.code not in (200, 202):
            message = await _error_text(response)
            raise ChangelogError(f"{url} answered {response.code}: {message}")
        remote_serial = _serial_header(response)
        if remote_serial is None:
            discard_body(response)
            raise ChangelogError(f"{url} answered without a usable X-Devpi-Serial header")
        primary_uuid = _primary_uuid(response)
        if primary_uuid is None:
            discard_body(response)
            self.log.error("{url} answered without a consistent primary uuid; retrying in {delay:g} s",
                           url=url, delay=UUID_RETRY_SECONDS)
            return UUID_RETRY_SECONDS
        known = self._client.node.primary_uuid
        if known and primary_uuid != known:
            discard_body(response)
            raise _Fatal(EXIT_OTHER_PRIMARY, f"primary at {self._client.primary_url} has uuid {primary_uuid}, "
                                             f"this replica follows {known}")
        self._status.answered(remote_serial)
        if not known:
            self._record_primary_uuid(primary_uuid)
            self.log.info("recorded primary uuid {uuid}", uuid=primary_uuid)
        if response.code == 202:
            await read_body(response, MAX_ERROR_BODY_BYTES)
            self._answered()
            return 0.0
        kind = media_type(response)
        if kind == STREAM_TYPE:
            applied = await self._apply_stream(response)
        elif kind == LIST_TYPE:
            applied = await self._apply_list(response)
        else:
            discard_body(response)
            raise ChangelogError(f"{url} answered with content type {kind!r}")
        self._answered()
        if not applied:
            raise ChangelogError(f"{url} answered 200 without change records")
        return 0.0

    def _answered(self) -> None:
        self._initial = False
        if self._status.check_metadata_in_sync() and self._on_in_sync is not None:
            self._on_in_sync()

    async def _apply_lines(self, lines: list[bytes]) -> int:
        return await self._apply_parsed(lines, parse_entry, raw=True)

    async def _apply_parsed(self, records: list[Any], parse: Callable[[Any], Entry], *, raw: bool) -> int:
        """Parse and commit ``records``; the ones before an unreadable record are committed first."""
        group: list[tuple[Entry, bytes | None]] = []
        try:
            for record in records:
                group.append((parse(record), record if raw else None))
        finally:
            if group:
                await self._apply(group)
        return len(group)

    async def _apply(self, group: list[tuple[Entry, bytes | None]]) -> None:
        """Commit consecutive entries (one, or a group sharing one sync)."""
        before = self._store.serial
        try:
            await self._store.apply_replicated_group(group, self._run_blocking)
        except StoreBroken as exc:
            raise _Fatal(EXIT_STORE_BROKEN, f"the store needs a restart: {exc}") from exc
        finally:
            if self._store.serial > before:
                self._status.applied(self._store.serial)
        self.log.debug("applied serials {first}..{last} from {primary}", first=group[0][0].serial,
                       last=group[-1][0].serial, primary=self._client.primary_url)

    async def _apply_stream(self, response: IResponse) -> int:
        lines = ChangeLines()
        response.deliverBody(lines)
        applied = 0
        slice_started = time.perf_counter()
        try:
            while True:
                d = lines.next_line()
                if not d.called:
                    d.addTimeout(BODY_IDLE_SECONDS, self._clock)
                line = await d
                if line is None:
                    return applied
                if not self.running:
                    lines.abort()
                    return applied
                applied += await self._apply_lines([line, *lines.ready_lines(GROUP_LINES - 1)])
                if time.perf_counter() - slice_started > APPLY_SLICE_SECONDS:
                    await deferLater(self._clock, 0)     # requests get their turn during a catch-up
                    slice_started = time.perf_counter()
        except BaseException:
            lines.abort()
            raise

    async def _apply_list(self, response: IResponse) -> int:
        """``--no-replica-streaming``: one JSON array (the primary stops after ~5 MiB)."""
        reading = read_body(response, MAX_LIST_BYTES)
        reading.addTimeout(BODY_IDLE_SECONDS, self._clock)
        try:
            body = await reading
        except BodyTooLarge as exc:
            raise ChangelogError(str(exc)) from None
        try:
            records = await self._run_blocking(json.loads, body)
        except ValueError as exc:
            raise ChangelogError(f"unreadable change records: {exc}") from None
        if not isinstance(records, list):
            raise ChangelogError("change records are not a list")
        applied = 0
        slice_started = time.perf_counter()
        for start in range(0, len(records), GROUP_LINES):
            if not self.running:
                break
            applied += await self._apply_parsed(records[start:start + GROUP_LINES], entry_from_json, raw=False)
            if time.perf_counter() - slice_started > APPLY_SLICE_SECONDS:
                await deferLater(self._clock, 0)
                slice_started = time.perf_counter()
        return applied


def _serial_header(response: IResponse) -> int | None:
    value = first_header(response, b"x-devpi-serial")
    try:
        serial = int(value) if value is not None else None
    except ValueError:
        return None
    return serial if serial is not None and serial >= -1 else None


def _primary_uuid(response: IResponse) -> str | None:
    """X-Devpi-Primary-Uuid (or the legacy Master spelling); None if absent or contradictory."""
    primary = first_header(response, b"x-devpi-primary-uuid") or None
    master = first_header(response, b"x-devpi-master-uuid") or None
    if primary and master and primary != master:
        return None
    return primary or master


async def _error_text(response: IResponse) -> str:
    try:
        body = await read_body(response, MAX_ERROR_BODY_BYTES)
    except Exception:
        return "(no readable body)"
    try:
        message = json.loads(body).get("message")
        if isinstance(message, str):
            return message
    except (ValueError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace")



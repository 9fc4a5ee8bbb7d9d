"""File replication (replication.md §5.2, §5.3): fetch the content that replicated file entries name.

Metadata arrives first (the puller); the blobs its file entries name follow
here, without serials of their own. Every applied change of a ``file/`` key
is considered (a store listener): skipped per ``--file-replication-skip-indexes``,
and until the replica has been in sync once, also when it belongs to a
mirror or a deleted index or the queue holds INITIAL_QUEUE_LIMIT entries
already — the initial queue pass after the first sync catches those up.
Queued entries are ordered: non-mirror index types first (alphabetically),
then mirrors, then deleted indexes; newest serial first within each.

At most ``threads`` downloads run at once (``BlobFetcher``), and up to
ENTRIES_PER_THREAD times as many entries are in progress, so that entries
whose content waits for the shared filesystem sync of its group (see
``filefetch``) do not keep the next downloads from starting. For each entry:
nothing to do if it
is gone or has no content on the primary (no ``last_modified``) or its blobs
are here; else ``filefetch.BlobFetcher`` obtains each missing blob (search
path, then the primary; the store adopts it and links it under ``+files/``).
302 and 410 (and 404/502 for mirror files) mean there is nothing to
replicate; other failures are recorded in the replication errors and retried
after 11 s, each further failure waiting 1.5 times longer, at most an hour.

:meth:`FileReplicator.fetch_now` is the web layer's way to get a file a
client asks for before the queue reached it.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpitx.replica.filefetch import (
    METADATA_SUFFIX,
    BlobFetcher,
    FileReplicationSettings,
    presence_of,
    wanted_blobs,
)
from devpitx.replica.primary_client import PrimaryClient
from devpitx.replica.status import ReplicationStatus
from devpitx.runtime import RunBlocking, release_free_memory
from devpitx.storage.keys import file_key, index_key
from devpitx.storage.store import Store, link_digests

FIRST_RETRY_SECONDS = 11.0
RETRY_FACTOR = 1.5
MAX_RETRY_SECONDS = 3600.0
INITIAL_QUEUE_LIMIT = 50_000
# File entries whose blobs the initial pass checks per trip to the disk thread.
INITIAL_PASS_BATCH = 500
# Entries in progress per download slot: the others wait for their group's sync, which takes
# tens of milliseconds on a busy disk. Bounds the bodies held in memory meanwhile (each at
# most filefetch.SPILL_BYTES; larger ones wait in tmp/).
ENTRIES_PER_THREAD = 16

__all__ = ["FileFetchFailed", "FileReplicationSettings", "FileReplicator"]


class FileFetchFailed(Exception):
    """An on-demand fetch found no content: ``code``/``message`` are the web answer (§5.3: 502)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(order=True)
class _Queued:
    priority: tuple[int, str, int]
    seq: int
    relpath: str = field(compare=False)


class FileReplicator:
    """The queue, the retry queue and the downloads of one replica."""

    log = Logger()

    def __init__(self, store: Store, client: PrimaryClient, status: ReplicationStatus, *,
                 clock: IReactorTime, run_disk: RunBlocking, settings: FileReplicationSettings) -> None:
        self._store = store
        self._client = client
        self._status = status
        self._clock = clock
        self._run_disk = run_disk
        self._settings = settings
        self._seq = itertools.count()
        self._queue: list[_Queued] = []
        self._queued: dict[str, _Queued] = {}              # relpath -> its live heap item
        self._serials: dict[str, int] = {}                 # relpath -> serial of its latest change
        self._retry: list[tuple[float, int, str]] = []     # (due, seq, relpath) heap
        self._retry_due: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._retry_call: IDelayedCall | None = None
        self._pump_call: IDelayedCall | None = None
        self._active: dict[str, Deferred[None]] = {}       # relpath -> its running replication
        self._tasks: set[Deferred[Any]] = set()
        self._fetcher = BlobFetcher(store, client, clock=clock, run_disk=run_disk, settings=settings)
        self._initial_pass_started = False
        self._logged_stored_files = 0
        self.initial_pass_done = False
        self.running = False

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._pump()

    def stop(self) -> Deferred[Any]:
        """Stop downloading; fires when every running download was abandoned."""
        self.running = False
        for call in (self._retry_call, self._pump_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._pump_call = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return DeferredList([*tasks, self._fetcher.stop()], consumeErrors=True)

    @property
    def queue_size(self) -> int:
        return len(self._queued)

    @property
    def retry_size(self) -> int:
        return len(self._retry_due)

    # -- feeding the queue -----------------------------------------------------------------------
    def changed(self, serial: int, changes: Mapping[str, Any]) -> None:
        """Store listener: consider every file entry a replicated commit changed."""
        for key in changes:
            if key.startswith("file/"):
                self.consider(key[len("file/"):], serial)
        self._note_if_in_sync()     # a deletion may have emptied the queues

    def consider(self, relpath: str, serial: int) -> None:
        """Queue ``relpath`` if its content may be needed (the rules of §5.2)."""
        entry = self._store.get(file_key(relpath))
        if not entry:
            # Deleted (None) or tombstoned ({}): the store already removed its +files links.
            self._forget(relpath)
            return
        user, index = _user_index(relpath)
        index_type = self._index_type(user, index)
        if self._skipped(user, index, index_type):
            self._forget(relpath)
            return
        if not self._status.metadata_synced_once and (
                index_type in (None, "mirror") or len(self._queued) >= INITIAL_QUEUE_LIMIT):
            return   # the initial queue pass takes care of it
        if not entry.get("last_modified"):
            self._forget(relpath)   # never had content on the primary (§5.2 step 2)
            return
        self._serials[relpath] = serial
        self._push(relpath, _priority(index_type, serial))

    def _push(self, relpath: str, priority: tuple[int, str, int]) -> None:
        if relpath in self._retry_due:
            del self._retry_due[relpath]         # a new change is worth trying at once
        item = _Queued(priority, next(self._seq), relpath)
        self._queued[relpath] = item
        heapq.heappush(self._queue, item)
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        """Start downloads on the next reactor turn: not inside the commit that queued them, and
        after a whole batch of entries is queued, so the priorities decide what goes first."""
        if self._pump_call is None and self.running:
            self._pump_call = self._clock.callLater(0, self._pump)

    def _forget(self, relpath: str) -> None:
        self._queued.pop(relpath, None)
        self._retry_due.pop(relpath, None)
        self._attempts.pop(relpath, None)
        self._serials.pop(relpath, None)
        self._status.clear_error(relpath)

    def _index_type(self, user: str, index: str) -> str | None:
        config = self._store.get(index_key(user, index))
        if not isinstance(config, dict):
            return None
        kind = config.get("type")
        return kind if isinstance(kind, str) else "stage"

    def _skipped(self, user: str, index: str, index_type: str | None) -> bool:
        skip = self._settings.skip_indexes
        return bool(skip) and ("all" in skip or f"{user}/{index}" in skip
                               or (index_type is not None and index_type in skip))

    def metadata_in_sync(self) -> None:
        """The puller reached the primary's serial; the first time, start the initial queue pass."""
        if self._initial_pass_started or not self.running:
            return
        self._initial_pass_started = True
        self._track(Deferred.fromCoroutine(self._initial_pass()))

    async def _initial_pass(self) -> None:
        relpaths = self._store.file_relpaths()
        queued = 0
        for start in range(0, len(relpaths), INITIAL_PASS_BATCH):
            checks: list[tuple[str, str | None, str | None]] = []
            for relpath in relpaths[start:start + INITIAL_PASS_BATCH]:
                entry = self._store.get(file_key(relpath))
                content, metadata = link_digests(entry)
                if isinstance(content, str):
                    checks.append((relpath, content, metadata if isinstance(metadata, str) else None))
            results = await self._run_disk(presence_of, self._store.blobs, checks)
            if not self.running:
                return
            for relpath, missing, unlinked in results:
                for sha256 in unlinked:
                    self._store.link_blob(sha256)
                if missing and relpath not in self._queued and relpath not in self._active:
                    self.consider(relpath, -1)
                    queued += relpath in self._queued
        self.log.info("initial file replication pass: {queued} of {total} file entries queued",
                      queued=queued, total=len(relpaths))
        self.initial_pass_done = True
        self._status.init_queue_finished()
        self._note_if_in_sync()

    # -- the workers ---------------------------------------------------------------------------------
    def _pump(self) -> None:
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        while self.running and self._queue and len(self._active) < self._settings.threads * ENTRIES_PER_THREAD:
            item = heapq.heappop(self._queue)
            if self._queued.get(item.relpath) is not item:
                continue   # superseded by a later push, or forgotten
            if item.relpath in self._active:
                # Being replicated right now: look again once that finished.
                self._active[item.relpath].addBoth(self._requeue, item)
                continue
            del self._queued[item.relpath]
            task = Deferred.fromCoroutine(self._replicate(item.relpath))
            self._active[item.relpath] = task
            task.addBoth(self._finished, item.relpath)
            self._track(task)
        self._note_if_in_sync()

    def _requeue(self, _result: object, item: _Queued) -> None:
        if self._queued.get(item.relpath) is item:
            heapq.heappush(self._queue, item)
            self._schedule_pump()

    def _finished(self, result: Any, relpath: str) -> Any:
        self._active.pop(relpath, None)
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.log.failure("replicating {relpath} failed", result, relpath=relpath)
            self._failed(relpath, self._client.file_url(relpath), f"internal error: {result.getErrorMessage()}")
        self._schedule_pump()   # not from inside the finished download's callbacks
        return None

    def _track(self, task: Deferred[Any]) -> None:
        self._tasks.add(task)
        task.addBoth(self._untrack, task)
        task.addErrback(self._log_unexpected)

    def _untrack(self, result: Any, task: Deferred[Any]) -> Any:
        self._tasks.discard(task)
        return result

    def _log_unexpected(self, failure: Failure) -> None:
        if not failure.check(CancelledError) and self.running:
            self.log.failure("file replication task failed", failure)

    def _note_if_in_sync(self) -> None:
        if self.initial_pass_done and not self._queued and not self._retry_due and not self._active:
            self._status.files_in_sync()
            if self._fetcher.stored_files != self._logged_stored_files:
                self._logged_stored_files = self._fetcher.stored_files
                self._run_disk(release_free_memory)      # the end of a burst; it walks the whole heap
                self.log.info("files in sync: {files} files ({bytes} bytes) downloaded from the primary "
                              "since the start", files=self._fetcher.stored_files, bytes=self._fetcher.stored_bytes)

    async def _replicate(self, relpath: str) -> None:
        entry = self._store.get(file_key(relpath))
        if not entry or not entry.get("last_modified"):
            self._forget(relpath)
            return
        user, index = _user_index(relpath)
        for wanted in wanted_blobs(relpath, entry, self._index_type(user, index)):
            if self._store.blobs.has(wanted.sha256):
                continue
            outcome = await self._fetcher.obtain(wanted, follow_redirects=False)
            if outcome.kind == "failed":
                self._failed(relpath, outcome.url, outcome.message)
                return
        self._attempts.pop(relpath, None)
        self._status.clear_error(relpath)

    def _failed(self, relpath: str, url: str, message: str) -> None:
        if not self.running:
            return
        self._status.record_error(relpath, url, message)
        attempts = self._attempts.get(relpath, 0) + 1
        self._attempts[relpath] = attempts
        delay = min(FIRST_RETRY_SECONDS * RETRY_FACTOR ** (attempts - 1), MAX_RETRY_SECONDS)
        due = self._clock.seconds() + delay
        self.log.warn("file replication of {relpath} failed ({message}); retry {attempt} in {delay:g} s",
                      relpath=relpath, message=message, attempt=attempts, delay=delay)
        self._retry_due[relpath] = due
        heapq.heappush(self._retry, (due, next(self._seq), relpath))
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        while self._retry and self._retry_due.get(self._retry[0][2]) != self._retry[0][0]:
            heapq.heappop(self._retry)   # stale: retried, requeued or forgotten since
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._retry and self.running:
            delay = max(0.0, self._retry[0][0] - self._clock.seconds())
            self._retry_call = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_call = None
        now = self._clock.seconds()
        while self._retry and self._retry[0][0] <= now:
            due, _seq, relpath = heapq.heappop(self._retry)
            if self._retry_due.get(relpath) != due:
                continue
            del self._retry_due[relpath]
            entry = self._store.get(file_key(relpath))
            if not entry:
                self._forget(relpath)
                continue
            user, index = _user_index(relpath)
            self._push(relpath, _priority(self._index_type(user, index), self._serials.get(relpath, -1)))
        self._schedule_retry()
        self._note_if_in_sync()

    # -- on demand (§5.3) ----------------------------------------------------------------------------
    async def fetch_now(self, relpath: str) -> None:
        """Make the content of ``relpath`` (a file entry's relpath or its ``.metadata``) present.

        Returns once the blob is stored (at once if it is here already, or if
        there is no entry with content to fetch); raises FileFetchFailed(502,
        "<url>: received <code> from primary") when the primary does not give it.
        """
        entry_relpath = relpath
        entry = self._store.get(file_key(relpath))
        if entry is None and relpath.endswith(METADATA_SUFFIX):
            entry_relpath = relpath[:-len(METADATA_SUFFIX)]
            entry = self._store.get(file_key(entry_relpath))
        if not entry:
            return
        user, index = _user_index(entry_relpath)
        for wanted in wanted_blobs(entry_relpath, entry, self._index_type(user, index)):
            if wanted.url_relpath != relpath or self._store.blobs.has(wanted.sha256):
                continue
            outcome = await self._fetcher.obtain(wanted, follow_redirects=True)
            if not outcome.stored:
                raise FileFetchFailed(502, outcome.message or f"{outcome.url}: not available from primary")


def _user_index(relpath: str) -> tuple[str, str]:
    user, index, *_rest = relpath.split("/") + ["", ""]
    return user, index


def _priority(index_type: str | None, serial: int) -> tuple[int, str, int]:
    """Non-mirror types first (alphabetically), then mirrors, then deleted indexes; newest first."""
    if index_type is None:
        return (2, "", -serial)
    if index_type == "mirror":
        return (1, "", -serial)
    return (0, index_type, -serial)

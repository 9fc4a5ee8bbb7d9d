"""Store: the server directory's journal, state, blobs and lock, opened once per process.

Commit order (DESIGN.md §2), the contract every crash test checks:
  1. blobs named by the entry are already durable (BlobStore.adopt, before the txn);
  2. the journal entry is written to a temporary file, fsynced, linked to its
     final name and the directory fsynced: from here on the serial exists;
  3. in-memory state is updated and waiters fire;
  4. state files are replaced atomically, ``+files/`` links updated, ``state/.serial``
     written — by the StateFlusher, inline or (in the server) in its own thread.
A crash before 2 leaves the previous serial; a crash after 2 is completed by
replay on the next open.

On a replica (``replica=True``) the serials are the primary's: ``write`` is
refused and only :meth:`Store.apply_replicated` commits, appending the
primary's journal entries with their own serials through steps 2-4 above.
Their blobs arrive later (file replication): an entry whose blob is missing
simply has no ``+files/`` link until :meth:`Store.adopt_replicated_blobs`
stores the blob, without a serial of its own.

Opening reads ``cache/state-snapshot.json`` (all keys at some serial, written
at close and every SNAPSHOT_EVERY commits) instead of walking thousands of
key files, then replays the journal after it. The snapshot is derived data:
without it the key files are read.
"""
from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpitx.storage.atomic import atomic_write, make_dirs, sync_filesystem
from devpitx.storage.blobs import BlobStore
from devpitx.storage.flusher import StateFlusher
from devpitx.storage.journal import Entry, Journal, JournalCorrupt
from devpitx.storage.keys import relpath_of_file_key
from devpitx.storage.serials import SerialWaiter
from devpitx.storage.state import StateFileUnreadable, StateTree
from devpitx.storage.txn import WriteTxn

if TYPE_CHECKING:
    from devpitx.runtime import RunBlocking

CommitListener = Callable[[int, Mapping[str, Any]], None]
Checkpoint = Callable[[str], None]

# Names of the points between commit steps where tests inject failures.
COMMIT_STEPS = ("before-journal", "after-journal", "after-state", "after-files")
SNAPSHOT_FILE = "state-snapshot.json"
SNAPSHOT_FORMAT = 1
SNAPSHOT_EVERY = 2000
# State batches with more keys than this are made durable by one filesystem sync.
FSYNC_EACH_UP_TO_KEYS = 16


class StoreLocked(Exception):
    """Another process has this server directory open."""


class StoreBroken(Exception):
    """A commit failed after its journal entry became durable; the process must restart."""


class ReplicaReadOnly(Exception):
    """A local write on a replica: its serials are the primary's, a local commit would fork them."""


class ReplicationRefused(ValueError):
    """A replicated entry that cannot be applied (not the next serial, malformed); nothing changed."""


def _no_checkpoint(step: str) -> None:
    return None


class Store:
    log = Logger()

    def __init__(self, serverdir: Path, clock: IReactorTime, *, checkpoint: Checkpoint = _no_checkpoint,
                 background_flush: bool = False, replica: bool = False) -> None:
        self.serverdir = serverdir
        # Settable after opening (the role is known once .nodeinfo is read): True refuses write().
        self.replica = replica
        self._clock = clock
        self._checkpoint = checkpoint
        self._lock_file: TextIO | None = None
        self._listeners: list[CommitListener] = []
        self._in_txn = False
        self._broken: str | None = None
        self.last_commit_at: float | None = None
        self._background_flush = background_flush
        self._flusher: StateFlusher | None = None
        self._snapshot_serial = -1
        self._snapshot_queued = False
        # sha256 -> file keys whose +files links need that blob; built on first use (replicas).
        self._digest_index: dict[str, set[str]] | None = None
        self.journal: Journal
        self.state: StateTree
        self.blobs: BlobStore
        self.waiter: SerialWaiter

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, serverdir: Path, clock: IReactorTime, *, checkpoint: Checkpoint = _no_checkpoint,
             background_flush: bool = False, replica: bool = False) -> Store:
        """Lock the directory, drop leftovers of interrupted work and replay the journal.

        ``background_flush``: write state files in a thread after each commit
        (the server) instead of before the commit returns (tests, admin commands).
        ``replica``: refuse ``write()``; only ``apply_replicated`` commits.
        """
        store = cls(serverdir, clock, checkpoint=checkpoint, background_flush=background_flush,
                    replica=replica)
        make_dirs(serverdir)
        store._lock()
        try:
            store.journal = Journal(serverdir / "journal", torn_tail_possible=replica)
            store.journal.remove_stray_tmp_files()
            store.blobs = BlobStore(serverdir / "blobs", serverdir / "+files", serverdir / "tmp")
            store.blobs.clear_tmp()
            store._recover()
        except BaseException:
            store.close()
            raise
        store._flusher = StateFlusher(store._write_batch, threaded=background_flush)
        store.waiter = SerialWaiter(clock, store.serial)
        return store

    def _lock(self) -> None:
        lock_file = open(self.serverdir / ".lock", "a")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreLocked(f"another devpitx process is using {self.serverdir}") from None
        self._lock_file = lock_file

    def close(self) -> None:
        """Finish writing state files, leave a snapshot for a fast next start, release the lock."""
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
            if not self._broken and self.serial > self._snapshot_serial:
                with self.log.failuresHandled("writing the state snapshot"):
                    self._write_snapshot(self.serial, self.state.snapshot_items())
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def flush(self) -> None:
        """Block until state files reflect every commit so far (tests, fsck-before-exit)."""
        if self._flusher is not None:
            self._flusher.drain()

    def _recover(self) -> None:
        state_root = self.serverdir / "state"
        snapshot = self._read_snapshot()
        if snapshot is not None:
            snapshot_serial, items = snapshot
            self.state = StateTree.from_items(state_root, snapshot_serial, items)
            self._snapshot_serial = snapshot_serial
        else:
            try:
                self.state = StateTree.load(state_root)
            except StateFileUnreadable as exc:
                # Big batches are written unsynced, then synced before state/.serial moves: a
                # power loss in between can leave a key file empty. The journal has it all.
                self.log.warn("{problem}; rebuilding state/ from the journal", problem=str(exc))
                self.state = StateTree.empty(state_root)
        disk_serial = self.state.disk_serial
        if disk_serial > self.journal.last_serial:
            raise JournalCorrupt(f"state is at serial {disk_serial} but the journal ends at {self.journal.last_serial}")
        # Entries after the in-memory serial are applied to memory; entries after
        # state/.serial are (re)written to the key files, merged into one batch.
        unwritten: dict[str, Any] = {}
        replayed = 0
        read_up_to = start = min(self.state.serial, disk_serial)
        try:
            for entry in self.journal.entries(start + 1):
                if entry.serial > self.state.serial:
                    self.state.apply_in_memory(entry.changes)
                    self.state.serial = entry.serial
                    replayed += 1
                if entry.serial > disk_serial:
                    unwritten.update(entry.changes)
                read_up_to = entry.serial
        except JournalCorrupt as exc:
            self._cut_torn_tail(exc, read_up_to, max(self.state.serial, disk_serial))
        if unwritten:
            self._write_batch(unwritten, self.journal.last_serial)
        if replayed:
            self.log.info("replayed {count} journal entries up to serial {serial}", count=replayed, serial=self.serial)
        if self.journal.last_serial >= 0:
            self.last_commit_at = self.journal.read(self.journal.last_serial).at

    def _cut_torn_tail(self, unreadable: JournalCorrupt, readable_up_to: int, relied_on_up_to: int) -> None:
        """Drop the entries after ``readable_up_to`` if they are a torn replicated group, else raise.

        Only a replica writes groups that can tear (``apply_replicated_group``),
        and a torn entry was never relied on: state files and snapshots only
        follow durable entries. Anything else unreadable is corruption.
        """
        if not self.replica or readable_up_to < relied_on_up_to:
            raise unreadable
        last = self.journal.last_serial
        removed = self.journal.truncate_after(readable_up_to)
        self.log.warn("dropped journal entries {first}..{last} that were not durable when the replica "
                      "stopped ({count} files); the primary sends them again",
                      first=readable_up_to + 1, last=last, count=len(removed))

    def _read_snapshot(self) -> tuple[int, list[list[Any]]] | None:
        path = self.serverdir / "cache" / SNAPSHOT_FILE
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            self.log.warn("ignoring unreadable state snapshot {path}", path=str(path))
            return None
        if not isinstance(raw, dict) or raw.get("format") != SNAPSHOT_FORMAT:
            return None
        serial = raw.get("serial")
        if not isinstance(serial, int) or serial > self.journal.last_serial:
            self.log.warn("ignoring state snapshot at serial {serial}: the journal ends at {last}",
                          serial=serial, last=self.journal.last_serial)
            return None
        return serial, raw["items"]

    def _write_queued_snapshot(self, serial: int, items: list[tuple[str, Any]]) -> None:
        try:
            self._write_snapshot(serial, items)
        finally:
            self._snapshot_queued = False

    def _write_snapshot(self, serial: int, items: list[tuple[str, Any]]) -> None:
        data = json.dumps({"format": SNAPSHOT_FORMAT, "serial": serial, "items": items},
                          separators=(",", ":"), ensure_ascii=False).encode()
        cache = self.serverdir / "cache"
        make_dirs(cache)
        atomic_write(cache / SNAPSHOT_FILE, data)
        self._snapshot_serial = serial

    # -- reads ----------------------------------------------------------------------------
    @property
    def serial(self) -> int:
        return self.state.serial

    def now(self) -> float:
        return self._clock.seconds()

    def get(self, key: str) -> Any | None:
        return self.state.get(key)

    def children(self, prefix: str) -> Iterable[str]:
        return self.state.children(prefix)

    def keys_below(self, prefix: str) -> Iterator[str]:
        return self.state.keys_below(prefix)

    def add_listener(self, listener: CommitListener) -> None:
        """Called after each commit with (serial, changes); for derived caches."""
        self._listeners.append(listener)

    def remove_listener(self, listener: CommitListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def file_relpaths(self) -> list[str]:
        """The relpath of every file entry (tombstones included), as of now."""
        return [relpath_of_file_key(key) for key, _value in self.state.items() if key.startswith("file/")]

    # -- writes ---------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        if self.replica:
            raise ReplicaReadOnly("this server is a replica: its data changes only through replication "
                                  "from the primary")
        if self._broken:
            raise StoreBroken(self._broken)
        if self._in_txn:
            raise RuntimeError("nested write transaction")
        self._in_txn = True
        try:
            tx = WriteTxn(self)
            yield tx
            self._commit(tx)
        finally:
            self._in_txn = False
        tx.run_after_commit(tx.serial if tx.serial is not None else self.serial)

    def _commit(self, tx: WriteTxn) -> None:
        changes = tx.effective_changes()
        if not changes:
            tx.serial = self.serial
            return
        self._check_applicable(changes)
        entry = Entry(serial=self.journal.last_serial + 1, at=tx.at, changes=changes, blobs=tuple(tx.blobs))
        self._publish(entry)
        tx.serial = entry.serial

    def apply_replicated(self, entry: Entry, raw: bytes | None = None) -> None:
        """Commit the primary's journal entry ``entry`` with its own serial, time and blobs.

        ``raw``: the entry's bytes as the primary stored them (the stream's
        line), written verbatim so the journal is a byte-for-byte copy; it
        must be the encoding ``entry`` was parsed from. ``entry.serial`` must
        be exactly the next serial: anything else raises ReplicationRefused
        and changes nothing (replicating it would fork the history). Blobs
        the entry names need not be here yet.
        """
        self._check_replication_possible()
        self._check_replicable(entry, self.journal.last_serial + 1)
        self._publish(entry, raw)

    async def apply_replicated_group(self, group: Sequence[tuple[Entry, bytes | None]],
                                     run_blocking: RunBlocking) -> None:
        """``apply_replicated`` for consecutive entries, made durable together by one filesystem sync.

        A catch-up of thousands of entries would otherwise pay two fsyncs per
        entry. The entries are written without syncing, the filesystem is
        synced once by ``run_blocking`` (a thread: the sync also flushes
        whatever else is dirty, such as replicated files), and only then does
        the store apply them (memory, waiters, listeners, state files):
        nothing outside the journal ever depends on an entry that is not
        durable. A crash before the sync leaves a torn tail that the next open
        of the replica cuts off (the primary sends those entries again). A
        group of one is an ordinary durable commit.

        The entries up to the first one that is refused are committed; then
        ReplicationRefused is raised for it. One group at a time.
        """
        self._check_replication_possible()
        accepted: list[tuple[Entry, bytes | None]] = []
        refused: ReplicationRefused | None = None
        for entry, raw in group:
            try:
                self._check_replicable(entry, self.journal.last_serial + 1 + len(accepted))
            except ReplicationRefused as exc:
                refused = exc
                break
            accepted.append((entry, raw))
        if len(accepted) == 1:
            self._publish(*accepted[0])
        elif accepted:
            await self._publish_group([entry for entry, _raw in accepted], [raw for _entry, raw in accepted],
                                      run_blocking)
        if refused is not None:
            raise refused

    async def _publish_group(self, entries: list[Entry], raws: list[bytes | None],
                             run_blocking: RunBlocking) -> None:
        self._in_txn = True     # nothing else commits until the group is applied
        try:
            self._checkpoint("before-journal")
            first = entries[0].serial
            try:
                for entry, raw in zip(entries, raws, strict=True):
                    self.journal.append(entry, raw, durable=False)
                await run_blocking(self.journal.sync)
            except BaseException as exc:
                if self.journal.path_for(first).exists():
                    # Published but not confirmed durable: only a restart can tell.
                    self._broken = f"replicated serials from {first} failed after publishing"
                    if not isinstance(exc, GeneratorExit):     # a discarded coroutine must just end
                        raise StoreBroken(self._broken) from None
                raise
        finally:
            self._in_txn = False
        for entry in entries:
            self._apply_published(entry)

    def _check_replication_possible(self) -> None:
        if self._broken:
            raise StoreBroken(self._broken)
        if self._in_txn:
            raise RuntimeError("replicated entry applied while another commit is in progress")

    def _check_replicable(self, entry: Entry, expected: int) -> None:
        """ReplicationRefused unless ``entry`` is serial ``expected`` and could be applied."""
        if entry.serial != expected:
            raise ReplicationRefused(f"replicated serial {entry.serial} is not the next serial {expected}")
        problem = _malformed(entry)
        if problem:
            raise ReplicationRefused(f"replicated serial {entry.serial}: {problem}")
        try:
            self._check_applicable(entry.changes)
        except ValueError as exc:
            raise ReplicationRefused(f"replicated serial {entry.serial}: {exc}") from None

    def _publish(self, entry: Entry, raw: bytes | None = None) -> None:
        """Steps 2-4 of the commit order for ``entry``, the next serial, already checked applicable."""
        self._checkpoint("before-journal")
        try:
            self.journal.append(entry, raw)
        except BaseException:
            if self.journal.path_for(entry.serial).exists():
                # Published but not confirmed durable: only a restart can tell.
                self._broken = f"commit of serial {entry.serial} failed after publishing"
                raise StoreBroken(self._broken) from None
            raise
        self._apply_published(entry)

    def _apply_published(self, entry: Entry) -> None:
        """Steps 3-4 for ``entry``, whose journal entry is durable."""
        changes = entry.changes
        try:
            self._checkpoint("after-journal")
            self._update_digest_index(entry.changes)
            self.state.apply_in_memory(entry.changes)
            self.state.serial = entry.serial
            assert self._flusher is not None
            self._flusher.submit(entry.changes, entry.serial)
        except BaseException as exc:
            self._broken = f"commit of serial {entry.serial} failed after the journal entry: {exc!r}"
            raise StoreBroken(self._broken) from exc
        if entry.serial - self._snapshot_serial >= SNAPSHOT_EVERY and not self._snapshot_queued:
            # One snapshot queued at a time: in a fast catch-up the flusher is behind, and
            # each queued copy of the state would stay in memory until it is written.
            serial, items = entry.serial, self.state.snapshot_items()
            self._snapshot_serial = serial
            self._snapshot_queued = True
            self._flusher.submit_job(lambda: self._write_queued_snapshot(serial, items))
        self.last_commit_at = entry.at
        self.waiter.committed(entry.serial)
        for listener in self._listeners:
            listener(entry.serial, changes)

    # -- blobs that arrive after their entries (replicas) -------------------------------------
    async def adopt_replicated_blobs(self, items: Sequence[tuple[bytes | Path, str]],
                                     run_blocking: RunBlocking) -> list[list[str]]:
        """Store downloaded, verified contents (bytes, or files in tmp/ that are consumed) as the
        blobs of the given sha256 (no serial), with one filesystem sync
        (``BlobStore.adopt_replicated``), and link them.

        The caller vouches for each sha256 (it hashed the content). Returns, for
        each item, the relpaths of the current file entries whose ``+files/``
        links now point at it (``<relpath>.metadata`` for core metadata).
        """
        await run_blocking(self.blobs.adopt_replicated, items)
        return [self.link_blob(sha256, stored=True) for _content, sha256 in items]

    def link_blob(self, sha256: str, *, stored: bool = False) -> list[str]:
        """Create the ``+files/`` links of every current file entry that names blob ``sha256``
        (none while the blob is not stored); returns their relpaths.

        The links are made by the state flusher's thread, from the keys'
        values as they are when it gets there: a commit of the same key
        before or after syncs the same links from the same or a newer value,
        so the last value always wins. Replay after a crash only covers
        journal entries; a blob adopted just before a crash is linked again
        by the next file replication pass.
        """
        if self._broken:
            raise StoreBroken(self._broken)
        keys = sorted(self._digest_keys().get(sha256, ()))
        if not keys or not (stored or self.blobs.has(sha256)):     # stored: the caller just stored it
            return []
        assert self._flusher is not None
        self._flusher.submit_job(lambda: self._sync_file_links_of(keys))
        linked = []
        for key in keys:
            relpath = relpath_of_file_key(key)
            content, metadata = link_digests(self.state.get(key))
            if content == sha256:
                linked.append(relpath)
            if metadata == sha256:
                linked.append(relpath + ".metadata")
        return linked

    def _digest_keys(self) -> dict[str, set[str]]:
        if self._digest_index is None:
            index: dict[str, set[str]] = {}
            for key, value in self.state.items():
                if key.startswith("file/"):
                    for digest in link_digests(value):
                        if isinstance(digest, str):
                            index.setdefault(digest, set()).add(key)
            self._digest_index = index
        return self._digest_index

    def _update_digest_index(self, changes: Mapping[str, Any]) -> None:
        index = self._digest_index
        if index is None:
            return  # nobody asked yet: built from the state when first needed
        for key, value in changes.items():
            if not key.startswith("file/"):
                continue
            for digest in link_digests(self.state.get(key)):
                if isinstance(digest, str) and digest in index:
                    index[digest].discard(key)
                    if not index[digest]:
                        del index[digest]
            for digest in link_digests(value):
                if isinstance(digest, str):
                    index.setdefault(digest, set()).add(key)

    def _write_batch(self, changes: Mapping[str, Any], serial: int) -> None:
        """Make state/ and +files/ reflect ``changes``, the merged changes of all entries up to
        ``serial`` not yet written (idempotent; runs in the flusher's thread in the server).

        A big batch (a catch-up, a replay) skips the fsync of each key file
        and makes them all durable with one filesystem sync before
        ``state/.serial`` moves: thousands of fsyncs would keep the disk busy
        for seconds, and until ``.serial`` moves replay rewrites every key anyway.
        """
        one_sync = len(changes) > FSYNC_EACH_UP_TO_KEYS
        self.state.persist(changes, durable=not one_sync)
        self._checkpoint("after-state")
        for key, value in changes.items():
            if key.startswith("file/"):
                self._sync_file_link(relpath_of_file_key(key), value, durable=not one_sync)
        self._checkpoint("after-files")
        if one_sync:
            sync_filesystem(self.state.root)
        self.state.write_serial(serial)

    def _check_applicable(self, changes: Mapping[str, Any]) -> None:
        """Refuse (ValueError) a change ``_apply`` could not carry out, before it is published.

        Failing while applying comes after the commit point, and replay would
        fail the same way on every later open: such an entry must never reach
        the journal.
        """
        for key, value in changes.items():
            if key.startswith("file/"):
                relpath = relpath_of_file_key(key)
                self.blobs.relpath_path(relpath)  # raises for an unsafe relpath
                for digest in link_digests(value):
                    if digest is not None:
                        if not isinstance(digest, str):
                            raise ValueError(f"file entry {relpath}: digest {digest!r} is not a string")
                        self.blobs.path_for(digest)  # raises for a malformed digest

    def _sync_file_links_of(self, keys: Iterable[str]) -> None:
        # Not fsynced: links lost in a crash are found and made again by the file
        # replication pass after the next start (the only caller is link_blob).
        for key in keys:
            self._sync_file_link(relpath_of_file_key(key), self.state.get(key), durable=False)

    def _sync_file_link(self, relpath: str, entry: Any, *, durable: bool = True) -> None:
        """``+files/<relpath>`` (and ``<relpath>.metadata``) exist iff the entry has content."""
        sha256, metadata_sha256 = link_digests(entry)
        if sha256 and self.blobs.has(sha256):
            self.blobs.link_relpath(relpath, sha256, durable=durable)
        else:
            self.blobs.unlink_relpath(relpath, durable=durable)
        if metadata_sha256 and self.blobs.has(metadata_sha256):
            self.blobs.link_relpath(relpath + ".metadata", metadata_sha256, durable=durable)
        else:
            self.blobs.unlink_relpath(relpath + ".metadata", durable=durable)


def _malformed(entry: Entry) -> str | None:
    """Why a replicated entry is not a journal entry this store could have written, or None."""
    if isinstance(entry.at, bool) or not isinstance(entry.at, (int, float)):
        return f"'at' is not a number: {entry.at!r}"
    if not isinstance(entry.changes, dict) or not all(isinstance(k, str) and k for k in entry.changes):
        return "'changes' is not an object of keys"
    if not all(isinstance(b, str) for b in entry.blobs):
        return "'blobs' is not a list of digests"
    return None


def link_digests(entry: Any) -> tuple[Any, Any]:
    """The blobs a file entry links under ``+files/``: (content, core metadata) sha256 or None.

    Content counts once it is stored (``last_modified`` set); ``<relpath>.metadata``
    is linked whenever the entry names a core-metadata blob. Values are as
    recorded, not validated (``Store`` refuses malformed ones before commit).
    """
    if not isinstance(entry, dict):
        return None, None
    hashes = entry.get("hashes")
    content = hashes.get("sha256") if isinstance(hashes, dict) and entry.get("last_modified") else None
    core = entry.get("+core_metadata")
    metadata = core.get("sha256") if isinstance(core, dict) else None
    return content or None, metadata or None

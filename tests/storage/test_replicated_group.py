"""Replicated entries committed in groups that share one filesystem sync.

``Store.apply_replicated_group`` writes a group of the primary's entries
without syncing, syncs the filesystem once, and only then applies them. A
crash before that sync can leave a torn tail (entries empty, cut short or
missing); opening a replica cuts it off, because nothing was built on it and
the primary sends it again. A primary never writes groups: the same damage
in its journal is corruption and stops the open.
"""
from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpitx.runtime import run_inline
from devpitx.storage import store as store_module
from devpitx.storage.journal import Entry, JournalCorrupt
from devpitx.storage.store import ReplicationRefused, Store, StoreBroken
from tests.storage.test_replicated import result_of

PRIMARY_SERIALS = 40


@pytest.fixture(scope="module")
def primary_entries(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A primary's journal of PRIMARY_SERIALS entries, each changing a few keys."""
    store = Store.open(tmp_path_factory.mktemp("primary") / "srv", Clock())
    try:
        for n in range(PRIMARY_SERIALS):
            with store.write() as tx:
                tx.set(f"user/u{n}", {"username": f"u{n}", "n": n})
                tx.set(f"version/alice/dev/pkg/{n}", {"name": "pkg", "version": str(n)})
                if n % 5 == 4:
                    tx.delete(f"user/u{n - 1}")
        return [store.journal.read_bytes(serial) for serial in range(store.serial + 1)]
    finally:
        store.close()


def open_replica(serverdir: Path, **kwargs: Any) -> Store:
    return Store.open(serverdir, Clock(), replica=True, **kwargs)


def group_of(raws: list[bytes]) -> list[tuple[Entry, bytes | None]]:
    return [(Entry.from_bytes(raw), raw) for raw in raws]


def apply_group(store: Store, raws: list[bytes], run_blocking: Any = run_inline) -> Deferred[None]:
    return Deferred.fromCoroutine(store.apply_replicated_group(group_of(raws), run_blocking))


def values_after(primary_entries: list[bytes], last: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for raw in primary_entries[:last + 1]:
        for key, value in Entry.from_bytes(raw).changes.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
    return values


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Store]:
    store = open_replica(tmp_path / "replica")
    yield store
    store.close()


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every filesystem sync of the store's journal, in order."""
    calls: list[str] = []
    real = store_module.Journal.sync

    def counted(journal: Any) -> None:
        calls.append("sync")
        real(journal)

    monkeypatch.setattr(store_module.Journal, "sync", counted)
    return calls


def test_a_group_is_committed_like_the_same_entries_one_by_one(
        replica: Store, primary_entries: list[bytes], syncs: list[str], tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    replica.add_listener(lambda serial, changes: events.append(("listener", serial)))
    replica.waiter.wait_for_serial(PRIMARY_SERIALS - 1, 30).addCallback(lambda s: events.append(("waiter", s)))
    result_of(apply_group(replica, primary_entries[:25]))
    result_of(apply_group(replica, primary_entries[25:]))
    assert syncs == ["sync", "sync"]
    assert replica.serial == PRIMARY_SERIALS - 1
    for serial, raw in enumerate(primary_entries):
        assert replica.journal.read_bytes(serial) == raw
    assert [e for e in events if e[0] == "listener"] == [("listener", s) for s in range(PRIMARY_SERIALS)]
    assert ("waiter", PRIMARY_SERIALS - 1) in events
    assert dict(replica.state.items()) == values_after(primary_entries, PRIMARY_SERIALS - 1)
    assert (replica.serverdir / "state" / ".serial").read_text() == str(PRIMARY_SERIALS - 1)

    one_by_one = open_replica(tmp_path / "one-by-one")
    try:
        for raw in primary_entries:
            one_by_one.apply_replicated(Entry.from_bytes(raw), raw)
        assert dict(one_by_one.state.items()) == dict(replica.state.items())
    finally:
        one_by_one.close()


def test_a_group_of_one_is_an_ordinary_durable_commit(replica: Store, primary_entries: list[bytes],
                                                      syncs: list[str]) -> None:
    result_of(apply_group(replica, primary_entries[:1]))
    assert syncs == []          # fsynced on its own, as apply_replicated does
    assert replica.serial == 0


def test_nothing_is_applied_before_the_sync_has_finished(replica: Store, primary_entries: list[bytes]) -> None:
    held: list[Deferred[Any]] = []
    calls: list[Callable[[], Any]] = []

    def held_sync(fn: Callable[[], Any]) -> Deferred[Any]:
        calls.append(fn)
        d: Deferred[Any] = Deferred()
        held.append(d)
        return d

    fired: list[int] = []
    replica.waiter.wait_for_serial(9, 30).addCallback(fired.append)
    applying = apply_group(replica, primary_entries[:10], held_sync)
    assert not applying.called
    # Written to the journal, but not yet durable: nothing may depend on them.
    assert replica.journal.last_serial == 9
    assert replica.serial == -1 and replica.get("user/u0") is None and fired == []
    assert not (replica.serverdir / "state" / "user").exists()
    with pytest.raises(RuntimeError, match="another commit"):
        replica.apply_replicated(Entry.from_bytes(primary_entries[10]), primary_entries[10])
    calls[0]()
    held[0].callback(None)
    result_of(applying)
    assert replica.serial == 9 and fired == [9]
    assert replica.get("user/u0") == {"username": "u0", "n": 0}


def test_the_entries_before_a_refused_one_are_committed(replica: Store, primary_entries: list[bytes]) -> None:
    group = group_of(primary_entries[:6])
    group[4] = (Entry(serial=4, at="yesterday", changes={}, blobs=()), None)  # type: ignore[arg-type]
    with pytest.raises(ReplicationRefused, match="serial 4: 'at'"):
        result_of(Deferred.fromCoroutine(replica.apply_replicated_group(group, run_inline)))
    assert replica.serial == 3 and replica.journal.last_serial == 3
    assert not replica.journal.path_for(4).exists() and not replica.journal.path_for(5).exists()
    result_of(apply_group(replica, primary_entries[4:]))
    assert replica.serial == PRIMARY_SERIALS - 1


def test_a_group_that_does_not_follow_changes_nothing(replica: Store, primary_entries: list[bytes]) -> None:
    result_of(apply_group(replica, primary_entries[:3]))
    with pytest.raises(ReplicationRefused, match="not the next serial 3"):
        result_of(apply_group(replica, primary_entries[4:8]))
    assert replica.serial == 2 and replica.journal.last_serial == 2


def test_a_failed_sync_breaks_the_store_and_reopening_keeps_a_prefix(
        tmp_path: Path, primary_entries: list[bytes]) -> None:
    serverdir = tmp_path / "replica"
    store = open_replica(serverdir)
    try:
        result_of(apply_group(store, primary_entries[:5]))

        def failing_sync(fn: Callable[[], Any]) -> Deferred[Any]:
            raise OSError(errno.EIO, "injected failure")

        with pytest.raises(StoreBroken, match="from 5"):
            result_of(apply_group(store, primary_entries[5:20], failing_sync))
        assert store.serial == 4
        with pytest.raises(StoreBroken):
            store.apply_replicated(Entry.from_bytes(primary_entries[5]), primary_entries[5])
    finally:
        store.close()
    reopened = open_replica(serverdir)
    try:
        # The files reached the kernel, so all of them survive this (process) failure.
        assert reopened.serial == 19
        assert dict(reopened.state.items()) == values_after(primary_entries, 19)
        result_of(apply_group(reopened, primary_entries[20:]))
        assert reopened.serial == PRIMARY_SERIALS - 1
    finally:
        reopened.close()


def _replica_with_lost_tail(serverdir: Path, primary_entries: list[bytes],
                            damage: Callable[[Store], None]) -> None:
    """Serials 0-9 durable and flushed, 10-29 written as a group whose sync never happened."""
    store = open_replica(serverdir)
    try:
        result_of(apply_group(store, primary_entries[:10]))
        store.flush()

        def power_cut(fn: Callable[[], Any]) -> Deferred[Any]:
            damage(store)
            return Deferred()       # never finishes: the process is gone

        apply_group(store, primary_entries[10:30], power_cut)
        assert store.serial == 9
    finally:
        _close_without_snapshot(store)


def _empty(serials: range) -> Callable[[Store], None]:
    def damage(store: Store) -> None:
        for serial in serials:
            store.journal.path_for(serial).write_bytes(b"")
    return damage


def _cut_short(serial: int) -> Callable[[Store], None]:
    def damage(store: Store) -> None:
        path = store.journal.path_for(serial)
        path.write_bytes(path.read_bytes()[:17])
    return damage


def _missing(serials: range) -> Callable[[Store], None]:
    def damage(store: Store) -> None:
        for serial in serials:
            store.journal.path_for(serial).unlink()
    return damage


@pytest.mark.parametrize("damage, survivors", [
    (_empty(range(25, 30)), 24),             # the end of the group lost its data
    (_cut_short(17), 16),                    # one entry half written, later ones complete
    (_missing(range(12, 14)), 11),           # links lost in the middle: a gap before the end
    (_empty(range(10, 30)), 9),              # nothing of the group survived
])
def test_reopening_a_replica_cuts_off_a_torn_tail(tmp_path: Path, primary_entries: list[bytes],
                                                  damage: Callable[[Store], None], survivors: int) -> None:
    serverdir = tmp_path / "replica"
    _replica_with_lost_tail(serverdir, primary_entries, damage)
    reopened = open_replica(serverdir)
    try:
        assert reopened.serial == reopened.journal.last_serial == survivors
        assert dict(reopened.state.items()) == values_after(primary_entries, survivors)
        assert not any(reopened.journal.path_for(s).exists() for s in range(survivors + 1, 30))
        # The primary sends the rest again.
        result_of(apply_group(reopened, primary_entries[survivors + 1:]))
        assert reopened.serial == PRIMARY_SERIALS - 1
        assert dict(reopened.state.items()) == values_after(primary_entries, PRIMARY_SERIALS - 1)
    finally:
        reopened.close()
    again = open_replica(serverdir)
    try:
        assert again.serial == PRIMARY_SERIALS - 1
    finally:
        again.close()


def test_a_primary_with_the_same_damage_refuses_to_open(tmp_path: Path, primary_entries: list[bytes]) -> None:
    serverdir = tmp_path / "replica"
    _replica_with_lost_tail(serverdir, primary_entries, _empty(range(25, 30)))
    with pytest.raises(JournalCorrupt, match="serial 25|entry 25"):
        Store.open(serverdir, Clock())
    assert serverdir.joinpath("journal").exists()
    assert open_replica(serverdir).serial == 24     # still recoverable as the replica it is


def _close_without_snapshot(store: Store) -> None:
    store.flush()
    store._flusher.stop()       # type: ignore[union-attr]
    store._flusher = None       # as if the process died: no snapshot at close
    store.close()


def test_damage_below_what_state_files_rely_on_is_corruption_even_on_a_replica(
        tmp_path: Path, primary_entries: list[bytes]) -> None:
    serverdir = tmp_path / "replica"
    store = open_replica(serverdir)
    result_of(apply_group(store, primary_entries[:13]))
    store.close()                                   # snapshot at serial 12
    store = open_replica(serverdir)
    result_of(apply_group(store, primary_entries[13:20]))
    _close_without_snapshot(store)                  # state/.serial at 19
    victim = store.journal.path_for(15)
    victim.write_bytes(b"")
    # Replay from the snapshot reads entry 15, whose changes state/ already holds.
    with pytest.raises(JournalCorrupt, match="15"):
        open_replica(serverdir)
    assert victim.exists() and store.journal.path_for(19).exists()


def test_big_state_batches_are_made_durable_by_one_sync_before_the_serial_moves(
        tmp_path: Path, primary_entries: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_sync = store_module.sync_filesystem
    monkeypatch.setattr(store_module, "sync_filesystem", lambda path: (order.append("sync"), real_sync(path)))
    store = Store.open(tmp_path / "srv", Clock())
    try:
        real_write_serial = store.state.write_serial
        monkeypatch.setattr(store.state, "write_serial",
                            lambda serial: (order.append(f"serial {serial}"), real_write_serial(serial)))
        with store.write() as tx:                   # a few keys: fsynced one by one
            tx.set("user/a", {"n": 1})
        assert order == ["serial 0"]
        order.clear()
        with store.write() as tx:                   # many keys: one sync, then the serial
            for n in range(store_module.FSYNC_EACH_UP_TO_KEYS + 1):
                tx.set(f"user/b{n}", {"n": n})
        assert order == ["sync", "serial 1"]
        for n in (0, store_module.FSYNC_EACH_UP_TO_KEYS):
            record = json.loads((store.serverdir / "state" / "user" / f"b{n}.json").read_bytes())
            assert record == {"key": f"user/b{n}", "value": {"n": n}}
        assert list((store.serverdir / "state" / ".tmp").iterdir()) == []
    finally:
        store.close()


def test_replicated_blobs_get_their_names_only_after_the_contents_are_synced(
        replica: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from devpitx.storage import blobs as blobs_module
    contents = [b"first content", b"second content", b"first content"]     # a repeat too
    digests = [hashlib.sha256(c).hexdigest() for c in contents]
    downloaded = replica.blobs.tmp_dir / "downloaded"
    downloaded.write_bytes(b"third content")
    third = hashlib.sha256(b"third content").hexdigest()
    seen_at_sync: list[bool] = []
    real_sync = blobs_module.sync_filesystem

    def sync(path: Path) -> None:
        seen_at_sync.extend(replica.blobs.has(d) for d in [*digests, third])
        real_sync(path)

    monkeypatch.setattr(blobs_module, "sync_filesystem", sync)
    items: list[tuple[bytes | Path, str]] = [*zip(contents, digests), (downloaded, third)]
    replica.blobs.adopt_replicated(items)
    assert seen_at_sync == [False] * 4
    for content, digest in zip([*contents, b"third content"], [*digests, third]):
        assert replica.blobs.path_for(digest).read_bytes() == content
    assert not downloaded.exists() and list(replica.blobs.tmp_dir.iterdir()) == []
    with pytest.raises(ValueError, match="sha256"):
        replica.blobs.adopt_replicated([(b"x", "not-a-digest")])
    assert list(replica.blobs.tmp_dir.iterdir()) == []


def test_one_state_snapshot_is_queued_at_a_time(tmp_path: Path, primary_entries: list[bytes],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SNAPSHOT_EVERY", 5)
    store = open_replica(tmp_path / "replica")
    try:
        queued: list[Callable[[], None]] = []
        assert store._flusher is not None
        monkeypatch.setattr(store._flusher, "submit_job", queued.append)    # a flusher that is behind
        result_of(apply_group(store, primary_entries[:20]))
        assert len(queued) == 1         # due at serials 4, 9, 14 and 19: the first is still queued
        queued.pop()()
        snapshot = json.loads((store.serverdir / "cache" / "state-snapshot.json").read_bytes())
        assert snapshot["serial"] == 4
        result_of(apply_group(store, primary_entries[20:30]))
        assert len(queued) == 1         # written, so the next one is queued
        queued.pop()()
        snapshot = json.loads((store.serverdir / "cache" / "state-snapshot.json").read_bytes())
        assert snapshot["serial"] == 20
    finally:
        store.close()


def test_an_empty_state_file_is_rebuilt_from_the_journal(tmp_path: Path, primary_entries: list[bytes]) -> None:
    # A big state batch is synced once before state/.serial moves; a power loss before that
    # sync can leave key files empty even though state/.serial is older than the batch.
    serverdir = tmp_path / "replica"
    store = open_replica(serverdir)
    result_of(apply_group(store, primary_entries))
    _close_without_snapshot(store)                  # opening reads the key files
    key_file = serverdir / "state" / "user" / "u7.json"
    assert json.loads(key_file.read_bytes())["key"] == "user/u7"
    key_file.write_bytes(b"")
    (serverdir / "state" / "version" / "alice" / "dev" / "pkg" / "3.json").write_bytes(b'{"value": 1}')
    reopened = open_replica(serverdir)
    try:
        assert dict(reopened.state.items()) == values_after(primary_entries, PRIMARY_SERIALS - 1)
        assert json.loads(key_file.read_bytes()) == {"key": "user/u7", "value": {"username": "u7", "n": 7}}
    finally:
        reopened.close()

"""Store support for replicas: the primary's entries applied with their serials, blobs adopted later.

The entries come from a real primary directory (the history and the commit
of test_crash.py), read back from its journal as the changelog serves them.
A replica applies them with ``apply_replicated``; its journal must then be
a byte-for-byte copy, and everything a local commit guarantees (listeners,
waiters, state files, crash safety at every step) holds for it too.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpitx.runtime import run_inline
from devpitx.storage.journal import Entry
from devpitx.storage.keys import file_key
from devpitx.storage.store import (
    ReplicaReadOnly,
    ReplicationRefused,
    Store,
    StoreBroken,
)
from tests.storage.test_crash import (
    AFTER,
    BEFORE,
    BEFORE_SERIAL,
    NEW_CONTENT,
    NEW_METADATA,
    NEW_METADATA_SHA,
    NEW_RELPATH,
    NEW_SHA,
    OLD_CONTENT,
    OUTCOMES,
    TARGETS,
    Injector,
    assert_reopens_to,
    raise_during,
    assert_same_values,
    blob_path,
    build_history,
    commit_under_test,
    files_links,
    no_disk_flush,  # noqa: F401  (a fixture, found by name)
    tmp_files,
)

EXPECTED = {"before": BEFORE, "after": AFTER}


@pytest.fixture(scope="module")
def primary_entries(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The journal of a primary: the crash tests' history, then their commit under test."""
    serverdir = tmp_path_factory.mktemp("primary") / "srv"
    build_history(serverdir)
    store = Store.open(serverdir, Clock())
    try:
        commit_under_test(store)
        return [store.journal.read_bytes(serial) for serial in range(store.serial + 1)]
    finally:
        store.close()


def open_replica(serverdir: Path, **kwargs: Any) -> Store:
    return Store.open(serverdir, kwargs.pop("clock", Clock()), replica=True, **kwargs)


def apply(store: Store, raw: bytes) -> None:
    store.apply_replicated(Entry.from_bytes(raw), raw)


def put_all_blobs(store: Store) -> None:
    for content in (OLD_CONTENT, NEW_CONTENT, NEW_METADATA):
        store.blobs.put_bytes(content)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Store]:
    store = open_replica(tmp_path / "replica")
    yield store
    store.close()


# -- applying -----------------------------------------------------------------------------------


def test_replica_journal_is_a_byte_copy_with_the_primarys_serials(replica: Store,
                                                                   primary_entries: list[bytes]) -> None:
    events: list[tuple[str, int | None, Any]] = []
    replica.add_listener(lambda serial, changes: events.append(("listener", serial, sorted(changes))))
    def fired(serial: int | None) -> None:
        events.append(("waiter", serial, None))

    replica.waiter.wait_for_serial(len(primary_entries) - 1, 30).addCallback(fired)
    for raw in primary_entries:
        apply(replica, raw)
    assert replica.serial == len(primary_entries) - 1
    for serial, raw in enumerate(primary_entries):
        assert replica.journal.read_bytes(serial) == raw
    assert_same_values(dict(replica.state.items()), AFTER)
    last = Entry.from_bytes(primary_entries[-1])
    assert replica.last_commit_at == last.at
    assert [e for e in events if e[0] == "listener"] == [
        ("listener", serial, sorted(Entry.from_bytes(raw).changes)) for serial, raw in enumerate(primary_entries)]
    assert ("waiter", last.serial, None) in events
    assert (replica.serverdir / "state" / ".serial").read_text() == str(last.serial)


def test_entries_that_do_not_follow_are_refused_without_a_trace(replica: Store,
                                                                primary_entries: list[bytes]) -> None:
    apply(replica, primary_entries[0])
    before_files = sorted(p.name for p in replica.journal.root.glob("*/*/*.json"))
    state_before = dict(replica.state.items())
    for raw in (primary_entries[0], primary_entries[2]):     # a repeat, and a gap
        with pytest.raises(ReplicationRefused, match="not the next serial 1"):
            apply(replica, raw)
    malformed = Entry(serial=1, at="yesterday", changes={}, blobs=())  # type: ignore[arg-type]
    with pytest.raises(ReplicationRefused, match="'at'"):
        replica.apply_replicated(malformed)
    unsafe = Entry(serial=1, at=1.0, changes={file_key("a/../b"): {"hashes": {"sha256": NEW_SHA}}}, blobs=())
    with pytest.raises(ReplicationRefused, match="unsafe relpath"):
        replica.apply_replicated(unsafe)
    assert replica.serial == 0
    assert sorted(p.name for p in replica.journal.root.glob("*/*/*.json")) == before_files
    assert_same_values(dict(replica.state.items()), state_before)
    apply(replica, primary_entries[1])     # and the right one still goes in
    assert replica.serial == 1


def test_a_replica_store_refuses_local_writes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "srv", Clock())
    try:
        with store.write() as tx:
            tx.set("user/a", {"n": 1})
        store.replica = True                      # the role is known after opening
        with pytest.raises(ReplicaReadOnly, match="replica"):
            with store.write() as tx:
                tx.set("user/b", {"n": 2})
        assert store.serial == 0 and store.get("user/b") is None
    finally:
        store.close()


def test_replicated_entries_survive_reopening_and_replay(tmp_path: Path, primary_entries: list[bytes]) -> None:
    serverdir = tmp_path / "replica"
    store = open_replica(serverdir)
    try:
        put_all_blobs(store)
        for raw in primary_entries:
            apply(store, raw)
    finally:
        store.close()
    (serverdir / "cache" / "state-snapshot.json").unlink()
    (serverdir / "state" / ".serial").write_text("0")      # as if the flusher lagged behind
    assert_reopens_to(serverdir, AFTER)


# -- blobs arriving after their entries -----------------------------------------------------------------


def test_entries_without_their_blob_have_no_link_until_it_is_adopted(replica: Store,
                                                                       primary_entries: list[bytes]) -> None:
    for raw in primary_entries:
        apply(replica, raw)
    assert files_links(replica.serverdir) == {}
    serial = replica.serial
    tmp = replica.blobs.tmp_dir / "download"
    tmp.write_bytes(NEW_CONTENT)
    assert _run(replica.adopt_replicated_blobs([(tmp, NEW_SHA)], run_inline))[0] == [NEW_RELPATH]
    assert sorted(files_links(replica.serverdir)) == [NEW_RELPATH]
    assert os.path.samefile(replica.blobs.relpath_path(NEW_RELPATH), blob_path(replica.serverdir, NEW_SHA))
    assert not tmp.exists()
    metadata_tmp = replica.blobs.tmp_dir / "metadata"
    metadata_tmp.write_bytes(NEW_METADATA)
    assert _run(replica.adopt_replicated_blobs([(metadata_tmp, NEW_METADATA_SHA)], run_inline))[0] == [
        NEW_RELPATH + ".metadata"]
    assert sorted(files_links(replica.serverdir)) == [NEW_RELPATH, NEW_RELPATH + ".metadata"]
    assert replica.serial == serial                                  # no serial for blobs
    assert len(list(replica.journal.root.glob("*/*/*.json"))) == serial + 1


def test_adopting_links_every_live_entry_naming_the_blob(replica: Store) -> None:
    content = b"shared content"
    sha = hashlib.sha256(content).hexdigest()
    entry = {"hashes": {"sha256": sha}, "last_modified": "Fri, 12 Sep 2014 13:18:55 GMT"}
    dev, prod, gone = (f"u/{name}/+f/{sha[:3]}/{sha[3:16]}/p-1.zip" for name in ("dev", "prod", "old"))
    replica.apply_replicated(Entry(0, 1.0, {file_key(dev): entry, file_key(prod): entry, file_key(gone): entry}, ()))
    assert replica.link_blob(sha) == []      # not here yet; builds the digest index the next commits update
    replica.apply_replicated(Entry(1, 2.0, {file_key(gone): {}}, ()))            # tombstoned
    replica.apply_replicated(Entry(2, 3.0, {file_key(prod): {**entry, "last_modified": None}}, ()))  # no content
    tmp = replica.blobs.tmp_dir / "download"
    tmp.write_bytes(content)
    assert _run(replica.adopt_replicated_blobs([(tmp, sha)], run_inline))[0] == [dev]
    assert sorted(files_links(replica.serverdir)) == [dev]
    # Content arriving for prod later (a new serial) links it: the blob is here now.
    replica.apply_replicated(Entry(3, 4.0, {file_key(prod): entry}, (sha,)))
    assert sorted(files_links(replica.serverdir)) == [dev, prod]


def test_links_of_adopted_blobs_go_through_the_background_flusher(tmp_path: Path,
                                                                 primary_entries: list[bytes]) -> None:
    store = open_replica(tmp_path / "replica", background_flush=True)
    try:
        for raw in primary_entries:
            apply(store, raw)
        tmp = store.blobs.tmp_dir / "download"
        tmp.write_bytes(NEW_CONTENT)
        assert _run(store.adopt_replicated_blobs([(tmp, NEW_SHA)], run_inline))[0] == [NEW_RELPATH]
        store.flush()
        assert sorted(files_links(store.serverdir)) == [NEW_RELPATH]
        # A later commit of the key wins over the re-submitted value: no stale link.
        store.apply_replicated(Entry(store.serial + 1, 9.0, {file_key(NEW_RELPATH): {}}, ()))
        store.flush()
        assert files_links(store.serverdir) == {}
    finally:
        store.close()


def test_stage_external_copies_or_hard_links(tmp_path: Path, replica: Store) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside content")
    copied = replica.blobs.stage_external(outside, hard_link=False)
    linked = replica.blobs.stage_external(outside, hard_link=True)
    assert copied.read_bytes() == linked.read_bytes() == b"outside content"
    assert not os.path.samefile(copied, outside)
    assert os.path.samefile(linked, outside)
    assert copied.parent == linked.parent == replica.blobs.tmp_dir
    with pytest.raises(FileNotFoundError):
        replica.blobs.stage_external(tmp_path / "missing", hard_link=False)
    assert sorted(p.name for p in replica.blobs.tmp_dir.iterdir()) == sorted([copied.name, linked.name])


def _run(coro: Any) -> Any:
    return result_of(Deferred.fromCoroutine(coro))


def result_of(d: Deferred[Any]) -> Any:
    """The result of ``d``, which must have fired already (everything here runs inline)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not finish synchronously"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


# -- crash safety: the guarantees of test_crash.py for replicated commits ------------------------


def _replica_before(serverdir: Path, primary_entries: list[bytes]) -> None:
    store = open_replica(serverdir)
    try:
        put_all_blobs(store)      # fsck and the link checks want every blob; their absence is tested above
        for raw in primary_entries[:BEFORE_SERIAL + 1]:
            apply(store, raw)
    finally:
        store.close()


def _raise_injected() -> None:
    raise OSError(errno.EIO, "injected failure")


def _run_raising(serverdir: Path, target: str, nth: int, monkeypatch: pytest.MonkeyPatch,
                 primary_entries: list[bytes]) -> tuple[Store, str] | None:
    _replica_before(serverdir, primary_entries)
    injector = Injector(target, nth, _raise_injected)
    store = open_replica(serverdir, checkpoint=injector.hit)
    return raise_during(store, lambda s: apply(s, primary_entries[BEFORE_SERIAL + 1]), injector, monkeypatch)


_CRASHED, _COMPLETED, _ERROR = 17, 18, 19


def _run_crashing(serverdir: Path, target: str, nth: int, primary_entries: list[bytes]) -> bool:
    _replica_before(serverdir, primary_entries)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        code = _ERROR
        try:
            injector = Injector(target, nth, lambda: os._exit(_CRASHED))
            injector.install(lambda obj, name, value: setattr(obj, name, value))
            store = open_replica(serverdir, checkpoint=injector.hit)
            injector.armed = True
            apply(store, primary_entries[BEFORE_SERIAL + 1])
            code = _COMPLETED
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (_CRASHED, _COMPLETED), f"child failed with {code}"
    return code == _CRASHED


@pytest.mark.usefixtures("no_disk_flush")
@pytest.mark.parametrize("target", TARGETS)
def test_replicated_commit_fails_anywhere_and_reopens_to_before_or_after(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primary_entries: list[bytes]
) -> None:
    outcomes = set()
    for nth in itertools.count(1):
        raised = _run_raising(tmp_path / f"raise-{nth}", target, nth, monkeypatch, primary_entries)
        if raised is None:
            assert not _run_crashing(tmp_path / f"crash-{nth}", target, nth, primary_entries)
            break
        store, outcome = raised
        try:
            if outcome == "before":
                # Nothing happened: the same entry applies now.
                assert store.serial == BEFORE_SERIAL
                apply(store, primary_entries[BEFORE_SERIAL + 1])
            else:
                with pytest.raises(StoreBroken):
                    apply(store, primary_entries[BEFORE_SERIAL + 1])
        finally:
            store.close()
        outcomes.add(outcome)
        assert_reopens_to(tmp_path / f"raise-{nth}", AFTER)
        assert _run_crashing(tmp_path / f"crash-{nth}", target, nth, primary_entries)
        assert_reopens_to(tmp_path / f"crash-{nth}", EXPECTED[outcome])
        # Whatever survived is the primary's history: the journal is a prefix of it.
        reopened = open_replica(tmp_path / f"crash-{nth}")
        try:
            for serial in range(reopened.serial + 1):
                assert reopened.journal.read_bytes(serial) == primary_entries[serial]
        finally:
            reopened.close()
    assert outcomes == OUTCOMES[target]


def downloaded(store: Store, kind: str) -> bytes | Path:
    """NEW_CONTENT as file replication hands it to the store: in memory, or a file in tmp/."""
    if kind == "bytes":
        return NEW_CONTENT
    path = store.blobs.tmp_dir / "download"
    path.write_bytes(NEW_CONTENT)
    return path


# What a failure of each primitive can hit: a downloaded file in tmp/ is adopted without a
# write, and nothing is fsynced (one filesystem sync; its failure is tested below).
ADOPT_FAILURES = [("link", "file"), ("replace", "file"), ("link", "bytes"), ("write", "bytes")]


@pytest.mark.usefixtures("no_disk_flush")
@pytest.mark.parametrize("target, kind", ADOPT_FAILURES)
def test_adopting_fails_anywhere_and_the_next_link_pass_completes_it(
    target: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primary_entries: list[bytes]
) -> None:
    for nth in itertools.count(1):
        serverdir = tmp_path / str(nth)
        store = open_replica(serverdir)
        for raw in primary_entries:
            apply(store, raw)
        content = downloaded(store, kind)
        injector = Injector(target, nth, _raise_injected)
        with monkeypatch.context() as patcher:
            injector.install(lambda obj, name, value: patcher.setattr(obj, name, value, raising=False))
            injector.armed = True
            try:
                _run(store.adopt_replicated_blobs([(content, NEW_SHA)], run_inline))
            except (OSError, StoreBroken):
                pass
        store.close()
        if not injector.fired:
            break
        reopened = open_replica(serverdir)
        try:
            links = files_links(serverdir)
            # Never a link to anything but its blob; the blob may or may not have made it.
            for relpath, path in links.items():
                assert relpath == NEW_RELPATH and os.path.samefile(path, blob_path(serverdir, NEW_SHA))
            assert tmp_files(serverdir) == []
            if reopened.blobs.has(NEW_SHA):
                reopened.link_blob(NEW_SHA)         # what the file replication's first pass does
                assert sorted(files_links(serverdir)) == [NEW_RELPATH]
            assert reopened.serial == len(primary_entries) - 1
        finally:
            reopened.close()
    assert nth > 1


@pytest.mark.parametrize("kind", ("file", "bytes"))
def test_a_failed_sync_adopts_nothing(kind: str, replica: Store, primary_entries: list[bytes],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from devpitx.storage import blobs as blobs_module
    for raw in primary_entries:
        apply(replica, raw)
    content = downloaded(replica, kind)

    def failing_sync(path: Path) -> None:
        raise OSError(errno.EIO, "injected failure")

    with monkeypatch.context() as patcher:
        patcher.setattr(blobs_module, "sync_filesystem", failing_sync)
        with pytest.raises(OSError, match="injected"):
            _run(replica.adopt_replicated_blobs([(content, NEW_SHA)], run_inline))
    assert not replica.blobs.has(NEW_SHA)
    assert files_links(replica.serverdir) == {}
    assert list(replica.blobs.tmp_dir.iterdir()) == []
    assert _run(replica.adopt_replicated_blobs([(NEW_CONTENT, NEW_SHA)], run_inline)) == [[NEW_RELPATH]]
    assert sorted(files_links(replica.serverdir)) == [NEW_RELPATH]

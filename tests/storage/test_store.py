"""Store: transactions, serials, reads, the directory lock, and what opening a directory repairs."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.storage.atomic import tmp_name_for
from devpitx.storage.journal import JournalCorrupt
from devpitx.storage.keys import state_relpath
from devpitx.storage.store import Store, StoreLocked


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    store = Store.open(tmp_path / "srv", clock)
    yield store
    store.close()


def commit(store: Store, **changes: Any) -> int:
    with store.write() as tx:
        for key, value in changes.items():
            key = key.replace("__", "/")
            if value is None:
                tx.delete(key)
            else:
                tx.set(key, value)
    assert tx.serial is not None
    return tx.serial


def journal_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.journal.root.glob("*/*/*.json"))


# -- serials ----------------------------------------------------------------------------------


def test_empty_store_has_serial_minus_one(store: Store) -> None:
    assert store.serial == -1
    assert store.last_commit_at is None
    assert store.get("user/a") is None


def test_commits_get_consecutive_serials_from_zero(store: Store, clock: Clock) -> None:
    assert commit(store, user__a={"n": 1}) == 0
    clock.advance(5)
    assert commit(store, user__b={"n": 2}, user__a={"n": 3}) == 1
    assert store.serial == 1
    assert store.last_commit_at == clock.seconds()
    assert journal_files(store) == ["000000000.json", "000000001.json"]
    entry = store.journal.read(1)
    assert entry.changes == {"user/b": {"n": 2}, "user/a": {"n": 3}}
    assert entry.at == clock.seconds()
    assert (store.serverdir / "state" / ".serial").read_text() == "1"


def test_after_commit_callbacks_and_listeners_get_the_serial(store: Store) -> None:
    events: list[tuple[str, int, Any]] = []
    store.add_listener(lambda serial, changes: events.append(("listener", serial, dict(changes))))
    with store.write() as tx:
        tx.set("user/a", {"n": 1})
        tx.delete("user/missing")
        tx.after_commit(lambda serial: events.append(("after", serial, store.get("user/a"))))
    assert events == [("listener", 0, {"user/a": {"n": 1}}), ("after", 0, {"n": 1})]


def test_a_commit_that_changes_nothing_consumes_no_serial(store: Store) -> None:
    commit(store, user__a={"n": 1, "l": [1, 2]})
    calls: list[int] = []
    store.add_listener(lambda serial, changes: calls.append(serial))
    with store.write() as tx:
        tx.set("user/a", {"l": [1, 2], "n": 1})  # equal value
        tx.delete("user/missing")  # deleting what is not there
        tx.set("user/new", {"x": 1})
        tx.delete("user/new")  # created and removed in one transaction
        tx.after_commit(calls.append)
    assert tx.serial == 0
    assert calls == [0]  # after_commit still runs, with the current serial; no listener call
    with store.write() as tx:
        pass
    assert tx.serial == 0
    assert store.serial == 0
    assert journal_files(store) == ["000000000.json"]
    assert commit(store, user__b={}) == 1


@pytest.mark.parametrize(("old", "new"), [(True, 1), (1, True), (0, False), (1, 1.0), ({"a": 1}, {"a": True}), ([0], [False])])
def test_a_different_json_type_is_a_change(store: Store, old: Any, new: Any) -> None:
    commit(store, user__a={"v": old})
    assert commit(store, user__a={"v": new}) == 1
    assert type(store.get("user/a")["v"]) is type(new)  # type: ignore[index]
    assert store.journal.read(1).changes == {"user/a": {"v": new}}


def test_an_exception_in_the_block_discards_everything(store: Store) -> None:
    commit(store, user__a={"n": 1})
    called: list[int] = []
    with pytest.raises(ZeroDivisionError):
        with store.write() as tx:
            tx.set("user/a", {"n": 2})
            tx.set("user/b", {})
            tx.after_commit(called.append)
            1 / 0  # noqa: B018
    assert store.get("user/a") == {"n": 1}
    assert store.get("user/b") is None
    assert store.serial == 0 and called == []
    assert commit(store, user__c={}) == 1  # the store is fine afterwards


def test_nested_transactions_are_refused(store: Store) -> None:
    with store.write() as tx:
        tx.set("user/a", {})
        with pytest.raises(RuntimeError, match="nested"):
            with store.write():
                pass
    assert store.serial == 0
    with store.write() as tx:  # the flag was reset
        tx.set("user/b", {})
    assert store.serial == 1


# -- reads inside and outside transactions -----------------------------------------------------


def test_transaction_reads_see_its_own_writes(store: Store) -> None:
    commit(store, user__a={"n": 1}, user__b={"n": 2})
    with store.write() as tx:
        tx.set("user/a", {"n": 10})
        tx.delete("user/b")
        tx.set("user/c", {"n": 3})
        assert tx.get("user/a") == {"n": 10}
        assert tx.get("user/b") is None and not tx.exists("user/b")
        assert tx.exists("user/c") and tx.exists("user/a")
        assert not tx.exists("user/zzz")
        assert store.get("user/a") == {"n": 1}  # others see the old world until commit
        assert store.get("user/c") is None


def test_values_are_copied_in_and_out(store: Store) -> None:
    value = {"list": [1]}
    with store.write() as tx:
        tx.set("user/a", value)
        value["list"].append(2)  # mutating after set changes nothing
        got = tx.get("user/a")
        assert got is not None
        got["list"].append(3)  # nor does mutating what get returned
    assert store.get("user/a") == {"list": [1]}
    with store.write() as tx:
        got = tx.get("user/a")
        assert got is not None
        got["list"].append(4)
    assert store.get("user/a") == {"list": [1]}
    assert store.serial == 0


def test_set_none_is_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        with store.write() as tx:
            tx.set("user/a", None)
    assert store.serial == -1


def test_children_and_keys_below(store: Store) -> None:
    commit(
        store,
        project__u__i__a={},
        project__u__i__b={},
        project__u__j__c={},
        version__u__i__a__1={},
        version__u__i__a__2={},
    )
    assert set(store.children("project/u")) == {"i", "j"}
    assert set(store.children("project/u/i")) == {"a", "b"}
    assert set(store.children("project/u/i/a")) == set()
    assert set(store.children("nothing")) == set()
    assert sorted(store.keys_below("project")) == ["project/u/i/a", "project/u/i/b", "project/u/j/c"]
    commit(store, project__u__j__c=None, project__u__i__a=None)
    assert set(store.children("project/u")) == {"i"}
    assert set(store.children("project/u/i")) == {"b"}
    assert sorted(store.keys_below("project/u")) == ["project/u/i/b"]
    assert sorted(store.keys_below("version/u/i")) == ["version/u/i/a/1", "version/u/i/a/2"]


def test_a_key_can_also_be_a_prefix(store: Store) -> None:
    commit(store, a={"top": 1}, a__b={"mid": 1}, a__b__c={"leaf": 1})
    assert sorted(store.keys_below("a")) == ["a/b", "a/b/c"]
    commit(store, a__b=None)
    assert set(store.children("a")) == {"b"}  # still a prefix of a/b/c
    assert sorted(store.keys_below("a")) == ["a/b/c"]
    commit(store, a__b__c=None)
    assert set(store.children("a")) == set()
    assert store.get("a") == {"top": 1}


def test_transaction_children_include_pending_changes(store: Store) -> None:
    commit(store, project__u__i__a={}, project__u__i__b={}, version__u__i__b__1={})
    with store.write() as tx:
        tx.set("project/u/i/c", {})
        tx.delete("project/u/i/a")
        assert tx.children("project/u/i") == {"b", "c"}
        tx.delete("version/u/i/b/1")
        assert tx.children("version/u/i") == set()
        assert tx.children("version/u") == set()
        tx.set("version/u/i/d/1", {})
        assert tx.children("version/u") == {"i"}
        assert tx.children("version/u/i") == {"d"}
    assert set(store.children("project/u/i")) == {"b", "c"}
    assert set(store.children("version/u/i")) == {"d"}


# -- persistence ------------------------------------------------------------------------------


def values_of(store: Store) -> Mapping[str, Any]:
    return dict(store.state.items())


def test_reopen_restores_values_serial_and_commit_time(tmp_path: Path, clock: Clock) -> None:
    store = Store.open(tmp_path, clock)
    commit(store, user__a={"u": "ü"}, version__u__i__p__1={"n": [1, None]})
    clock.advance(3)
    commit(store, user__b={}, user__a=None)
    values = dict(values_of(store))
    store.close()
    reopened = Store.open(tmp_path, Clock())
    try:
        assert dict(values_of(reopened)) == values
        assert reopened.serial == 1
        assert reopened.last_commit_at == clock.seconds()
        assert set(reopened.children("version/u/i/p")) == {"1"}
        assert commit(reopened, user__c={}) == 2
    finally:
        reopened.close()


def test_state_files_record_their_key(store: Store) -> None:
    key = "version/u/i/p/" + "v" * 300
    commit(store, **{key.replace("/", "__"): {"x": 1}})
    path = store.serverdir / "state" / state_relpath(key)
    assert path.read_text() == f'{{"key":"{key}","value":{{"x":1}}}}'
    assert len(path.name) < 100


def test_open_replays_entries_the_state_lacks(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={"n": 1})
    commit(store, user__b={"n": 2})
    store.close()
    (tmp_path / "state" / ".serial").write_text("0")  # as if the process died after publishing 1
    (tmp_path / "state" / "user" / "b.json").unlink()
    reopened = Store.open(tmp_path, Clock())
    try:
        assert reopened.get("user/b") == {"n": 2}
        assert (tmp_path / "state" / ".serial").read_text() == "1"
    finally:
        reopened.close()


def test_open_refuses_a_state_ahead_of_the_journal(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={})
    store.close()
    (tmp_path / "state" / ".serial").write_text("5")
    with pytest.raises(JournalCorrupt, match="state is at serial 5"):
        Store.open(tmp_path, Clock())


def test_open_removes_leftovers_of_interrupted_work(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={"n": 1})
    store.close()
    # Key files are written through state/.tmp/, so that is where a crash leaves them.
    state_tmp = tmp_path / "state" / ".tmp" / tmp_name_for(tmp_path / "state" / "user" / "a.json").name
    state_tmp.write_text('{"key": "user/a", "value": {"n": 99')
    serial_tmp = tmp_name_for(tmp_path / "state" / ".serial")
    serial_tmp.write_text("7")
    upload = tmp_path / "tmp" / "upload-123"
    upload.write_bytes(b"partial upload")
    reopened = Store.open(tmp_path, Clock())
    try:
        assert reopened.get("user/a") == {"n": 1}
        assert reopened.serial == 0
    finally:
        reopened.close()
    assert not state_tmp.exists() and not serial_tmp.exists() and not upload.exists()


# -- file entries and +files/ -----------------------------------------------------------------


def test_file_entries_drive_the_files_links(store: Store) -> None:
    one, two = store.blobs.put_bytes(b"one"), store.blobs.put_bytes(b"two")
    link = store.serverdir / "+files" / "u/i/+f/abc/def/p-1.zip"
    live_one = {"hashes": {"sha256": one}, "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    commit(store, **{"file/u/i/+f/abc/def/p-1.zip": live_one})
    assert os.path.samefile(link, store.blobs.path_for(one))
    commit(store, **{"file/u/i/+f/abc/def/p-1.zip": {**live_one, "hashes": {"sha256": two}}})
    assert os.path.samefile(link, store.blobs.path_for(two))
    commit(store, **{"file/u/i/+f/abc/def/p-1.zip": {}})  # deleted: 410 from now on
    assert not link.exists()
    assert store.get("file/u/i/+f/abc/def/p-1.zip") == {}
    assert list((store.serverdir / "+files").iterdir()) == []
    assert store.blobs.has(one) and store.blobs.has(two)


def test_core_metadata_gets_a_metadata_link(store: Store) -> None:
    wheel, metadata = store.blobs.put_bytes(b"wheel"), store.blobs.put_bytes(b"Metadata-Version: 2.1")
    relpath = "u/i/+f/abc/def/p-1-py3-none-any.whl"
    entry = {"hashes": {"sha256": wheel}, "last_modified": "x", "+core_metadata": {"sha256": metadata}}
    commit(store, **{f"file/{relpath}": entry})
    files = store.serverdir / "+files"
    assert os.path.samefile(files / relpath, store.blobs.path_for(wheel))
    assert os.path.samefile(files / f"{relpath}.metadata", store.blobs.path_for(metadata))
    commit(store, **{f"file/{relpath}": {}})
    assert list(files.iterdir()) == []


def test_no_link_without_content(store: Store) -> None:
    missing = "f" * 64
    present = store.blobs.put_bytes(b"present")
    commit(
        store,
        **{
            # a mirror entry known but not downloaded: no last_modified
            "file/root/pypi/+f/aaa/bbb/a.zip": {"hashes": {"sha256": present}},
            # a replica entry whose content has not arrived yet
            "file/root/pypi/+f/ccc/ddd/b.zip": {"hashes": {"sha256": missing}, "last_modified": "x"},
        },
    )
    assert list((store.serverdir / "+files").iterdir()) == []


def test_deleting_a_file_key_removes_its_link(store: Store) -> None:
    sha = store.blobs.put_bytes(b"x")
    commit(store, **{"file/u/i/+f/a/b/x.zip": {"hashes": {"sha256": sha}, "last_modified": "x"}})
    commit(store, **{"file/u/i/+f/a/b/x.zip": None})
    assert list((store.serverdir / "+files").iterdir()) == []


# -- the lock ---------------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_locked(tmp_path: Path) -> None:
    first = Store.open(tmp_path, Clock())
    try:
        with pytest.raises(StoreLocked):
            Store.open(tmp_path, Clock())
        assert commit(first, user__a={}) == 0  # the failed open disturbed nothing
    finally:
        first.close()
    second = Store.open(tmp_path, Clock())  # closing released the lock
    try:
        assert second.serial == 0
    finally:
        second.close()


_OPEN_IN_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from twisted.internet.task import Clock
    from devpitx.storage.store import Store, StoreLocked
    try:
        Store.open(Path(sys.argv[1]), Clock()).close()
    except StoreLocked as exc:
        print("locked:", exc)
    else:
        print("opened")
    """
)


def test_open_from_another_process_is_locked(tmp_path: Path) -> None:
    def open_in_child() -> str:
        result = subprocess.run(
            [sys.executable, "-c", _OPEN_IN_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
        )
        return result.stdout

    store = Store.open(tmp_path, Clock())
    try:
        assert open_in_child() == f"locked: another devpitx process is using {tmp_path}\n"
    finally:
        store.close()
    assert open_in_child() == "opened\n"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("file/u/i/+f/a/b/x.zip", {"hashes": {"sha256": "not-a-digest"}, "last_modified": "x"}),
        ("file/u/i/+f/a/b/x.zip", {"hashes": {"sha256": 42}, "last_modified": "x"}),
        ("file/u/i/+f/a/b/x.whl", {"+core_metadata": {"sha256": "0" * 63}}),
        ("file/u/i/+f/../../etc/x.zip", {"hashes": {"sha256": "0" * 64}, "last_modified": "x"}),
        ("file/u/i//x.zip", {}),
        ("file/u/i/+f/a/b/x\x00.zip", {}),
    ],
)
def test_a_file_entry_that_cannot_be_applied_is_refused_before_the_commit_point(
    tmp_path: Path, key: str, value: Any
) -> None:
    # Failing only while applying would publish an entry that no replay can get past.
    store = Store.open(tmp_path, Clock())
    try:
        commit(store, user__a={})
        with pytest.raises(ValueError):
            with store.write() as tx:
                tx.set("user/b", {})
                tx.set(key, value)
        assert store.serial == 0 and store.get("user/b") is None
        assert commit(store, user__c={}) == 1  # the store is still writable
    finally:
        store.close()
    Store.open(tmp_path, Clock()).close()
    assert not (tmp_path / "etc").exists()

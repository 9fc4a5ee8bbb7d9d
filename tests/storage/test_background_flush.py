"""The server's store: state files written by a background thread, and the start-up snapshot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet.task import Clock

from devpitx.storage.store import SNAPSHOT_FILE, Store
from tests.storage.test_store import commit


def state_file_values(serverdir: Path) -> dict[str, object]:
    values = {}
    for dirpath, _dirs, files in os.walk(serverdir / "state"):
        for name in files:
            if name.endswith(".json"):
                record = json.loads((Path(dirpath) / name).read_bytes())
                values[record["key"]] = record["value"]
    return values


def test_background_flush_writes_state_after_commit(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock(), background_flush=True)
    try:
        for i in range(50):
            commit(store, **{f"project__u__i__p{i}": {"n": i}, "user__u": {"last": i}})
        commit(store, project__u__i__p0=None)
        assert store.serial == 50
        assert store.get("user/u") == {"last": 49}  # memory is current at once
        store.flush()
        values = state_file_values(tmp_path)
        assert values["user/u"] == {"last": 49}
        assert "project/u/i/p0" not in values and values["project/u/i/p49"] == {"n": 49}
        assert (tmp_path / "state" / ".serial").read_text() == "50"
    finally:
        store.close()


def test_file_links_follow_in_the_background(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock(), background_flush=True)
    try:
        sha = store.blobs.put_bytes(b"content")
        with store.write() as tx:
            tx.set("file/u/i/+f/abc/def/x-1.0.tar.gz",
                   {"hashes": {"sha256": sha}, "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
            tx.add_blob(sha)
        store.flush()
        assert (tmp_path / "+files/u/i/+f/abc/def/x-1.0.tar.gz").read_bytes() == b"content"
    finally:
        store.close()


CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from twisted.internet.task import Clock
    from devpitx.storage.store import Store
    store = Store.open(Path(sys.argv[1]), Clock(), background_flush=True)
    write_batch = store._flusher._write_batch
    def slow_write_batch(changes, serial):  # make sure the exit finds work still queued
        time.sleep(0.05)
        write_batch(changes, serial)
    store._flusher._write_batch = slow_write_batch
    for i in range(300):
        with store.write() as tx:
            tx.set(f"version/u/i/p{i % 7}/{i}", {"i": i})
            tx.set("user/u", {"last": i})
            if i % 5 == 0:
                tx.delete(f"version/u/i/p{(i - 5) % 7}/{i - 5}")
    os._exit(0)  # no close(): the flusher thread dies wherever it is
""")


def expected_after_child() -> dict[str, object]:
    model: dict[str, object] = {}
    for i in range(300):
        model[f"version/u/i/p{i % 7}/{i}"] = {"i": i}
        model["user/u"] = {"last": i}
        if i % 5 == 0:
            model.pop(f"version/u/i/p{(i - 5) % 7}/{i - 5}", None)
    return model


def test_process_exit_with_unwritten_state_loses_nothing(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], check=True)
    serial_file = tmp_path / "state" / ".serial"
    assert not serial_file.exists() or int(serial_file.read_text()) < 299  # state really lagged
    store = Store.open(tmp_path, Clock())
    try:
        assert store.serial == 299
        assert dict(store.state.items()) == expected_after_child()
    finally:
        store.close()
    # and the key files were brought up to date by the replay
    assert state_file_values(tmp_path) == expected_after_child()


def test_close_leaves_a_snapshot_that_the_next_open_uses(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock(), background_flush=True)
    commit(store, user__a={"n": 1}, index__a__dev={"type": "stage"})
    store.close()
    snapshot = json.loads((tmp_path / "cache" / SNAPSHOT_FILE).read_bytes())
    assert snapshot["serial"] == 0
    # Prove the snapshot is what is read: key files are not needed any more.
    (tmp_path / "state" / "user" / "a.json").unlink()
    reopened = Store.open(tmp_path, Clock())
    try:
        assert reopened.get("user/a") == {"n": 1}
        assert sorted(reopened.children("index/a")) == ["dev"]
        commit(reopened, user__b={"n": 2})
    finally:
        reopened.close()
    again = Store.open(tmp_path, Clock())
    try:
        assert again.get("user/b") == {"n": 2} and again.serial == 1
    finally:
        again.close()


def test_children_are_right_when_changes_come_before_their_first_use(tmp_path: Path) -> None:
    # The children index of a store loaded from its snapshot is built on first use:
    # commits made before that must be in it, deletions must not.
    store = Store.open(tmp_path, Clock(), background_flush=True)
    commit(store, project__u__i__a={}, project__u__i__b={}, project__u__j__c={})
    store.close()
    reopened = Store.open(tmp_path, Clock())
    try:
        commit(reopened, project__u__i__d={}, project__u__j__c=None)
        assert sorted(reopened.children("project/u")) == ["i"]
        assert sorted(reopened.children("project/u/i")) == ["a", "b", "d"]
        commit(reopened, project__u__k__e={}, project__u__i__a=None)
        assert sorted(reopened.children("project/u")) == ["i", "k"]
        assert sorted(reopened.keys_below("project")) == ["project/u/i/b", "project/u/i/d", "project/u/k/e"]
    finally:
        reopened.close()


def test_snapshot_older_than_journal_is_completed_by_replay(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={"n": 1})
    store.close()
    old_snapshot = (tmp_path / "cache" / SNAPSHOT_FILE).read_bytes()
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={"n": 2})
    commit(store, user__c={"n": 3})
    store.close()
    (tmp_path / "cache" / SNAPSHOT_FILE).write_bytes(old_snapshot)
    reopened = Store.open(tmp_path, Clock())
    try:
        assert reopened.get("user/a") == {"n": 2} and reopened.get("user/c") == {"n": 3}
        assert reopened.serial == 2
    finally:
        reopened.close()


def test_bad_snapshots_are_ignored(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    commit(store, user__a={"n": 1})
    store.close()
    path = tmp_path / "cache" / SNAPSHOT_FILE
    for content in (b"{not json", json.dumps({"format": 1, "serial": 99, "items": []}).encode(),
                    json.dumps({"format": 999, "serial": 0, "items": []}).encode()):
        path.write_bytes(content)
        reopened = Store.open(tmp_path, Clock())
        try:
            assert reopened.get("user/a") == {"n": 1}
        finally:
            reopened.close()

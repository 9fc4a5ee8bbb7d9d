"""The journal: layout, append-only publication, and refusing anything but a contiguous history."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from devpitx.storage.atomic import publish_new, tmp_name_for
from devpitx.storage.journal import Entry, Journal, JournalCorrupt
from devpitx.storage.store import Store


def entry(serial: int, **changes: object) -> Entry:
    return Entry(serial=serial, at=1_700_000_000.5 + serial, changes=dict(changes) or {"k": serial}, blobs=())


def fill(root: Path, count: int) -> Journal:
    journal = Journal(root)
    for serial in range(journal.last_serial + 1, count):
        journal.append(entry(serial))
    return journal


def test_empty_journal_has_serial_minus_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.last_serial == -1
    assert list(journal.entries(0)) == []


def test_entry_round_trips_and_keeps_key_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    original = Entry(serial=0, at=12.25, changes={"z": {"b": 1, "a": [True, None]}, "a": None}, blobs=("ab" * 32,))
    journal.append(original)
    read = Journal(tmp_path).read(0)
    assert read == original
    assert list(read.changes) == ["z", "a"]
    assert list(read.changes["z"]) == ["b", "a"]


def test_layout_has_at_most_a_thousand_entries_per_directory(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.path_for(0) == tmp_path / "000" / "000" / "000000000.json"
    assert journal.path_for(999) == tmp_path / "000" / "000" / "000000999.json"
    assert journal.path_for(1000) == tmp_path / "000" / "001" / "000001000.json"
    assert journal.path_for(1_234_567) == tmp_path / "001" / "234" / "001234567.json"


def test_last_serial_is_found_across_directories(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    # Pretend 0..998 exist: only the tail is looked at when opening.
    journal.path_for(998).parent.mkdir(parents=True)
    journal.path_for(998).write_bytes(entry(998).to_bytes())
    journal.last_serial = 998
    journal.append(entry(999))
    journal.append(entry(1000))
    assert journal.path_for(1000).parent.name == "001"
    assert Journal(tmp_path).last_serial == 1000


def test_an_empty_directory_left_by_an_interrupted_append_is_ignored(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    (tmp_path / "000" / "001").mkdir()
    (tmp_path / "001" / "000").mkdir(parents=True)
    assert Journal(tmp_path).last_serial == 2


def test_append_must_be_the_next_serial(tmp_path: Path) -> None:
    journal = fill(tmp_path, 2)
    with pytest.raises(JournalCorrupt):
        journal.append(entry(3))
    with pytest.raises(JournalCorrupt):
        journal.append(entry(1))
    assert journal.last_serial == 1
    assert not journal.path_for(3).exists()


def test_an_existing_serial_is_never_overwritten(tmp_path: Path) -> None:
    first = fill(tmp_path, 2)
    stale = Journal(tmp_path)  # a second writer that thinks 1 is the last serial ...
    first.append(entry(2, k="first"))
    original = first.path_for(2).read_bytes()
    with pytest.raises(FileExistsError):
        stale.append(entry(2, k="second"))  # ... cannot replace what the first wrote
    assert first.path_for(2).read_bytes() == original
    assert not tmp_name_for(first.path_for(2)).exists()


def test_publish_new_refuses_an_existing_name(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    publish_new(target, b"one")
    with pytest.raises(FileExistsError):
        publish_new(target, b"two")
    assert target.read_bytes() == b"one"
    assert list(tmp_path.iterdir()) == [target]


def test_gap_before_the_last_entry_is_detected_on_open(tmp_path: Path) -> None:
    journal = fill(tmp_path, 5)
    journal.path_for(3).unlink()
    with pytest.raises(JournalCorrupt, match="gap before serial 4"):
        Journal(tmp_path)


def test_gap_across_a_directory_boundary_is_detected_on_open(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.path_for(998).parent.mkdir(parents=True)
    journal.path_for(998).write_bytes(entry(998).to_bytes())
    journal.last_serial = 998
    journal.append(entry(999))
    journal.append(entry(1000))
    journal.path_for(999).unlink()
    with pytest.raises(JournalCorrupt, match="gap"):
        Journal(tmp_path)


def test_gap_in_the_middle_is_reported_when_replaying(tmp_path: Path) -> None:
    journal = fill(tmp_path, 5)
    journal.path_for(1).unlink()
    reopened = Journal(tmp_path)  # the tail looks fine
    with pytest.raises(JournalCorrupt, match="1"):
        list(reopened.entries(0))


def test_store_refuses_to_replay_over_a_gap(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    for n in range(4):
        with store.write() as tx:
            tx.set(f"user/u{n}", {"n": n})
    store.close()
    store.journal.path_for(1).unlink()
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(JournalCorrupt):
        Store.open(tmp_path, Clock())
    # The failed open released the lock: once repaired, the directory opens.
    store.journal.path_for(1).write_bytes(entry(1, **{"user/u1": {"n": 1}}).to_bytes())
    Store.open(tmp_path, Clock()).close()


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'"text"', b'{"serial": 1}', b'{"serial": 1, "at": 0, "changes": {}', b"\xff\xfe"],
)
def test_unreadable_entry_is_corrupt(tmp_path: Path, content: bytes) -> None:
    journal = fill(tmp_path, 3)
    journal.path_for(1).write_bytes(content)
    with pytest.raises(JournalCorrupt, match="entry 1 is unreadable"):
        journal.read(1)
    with pytest.raises(JournalCorrupt):
        list(journal.entries(0))


def test_entry_claiming_another_serial_is_corrupt(tmp_path: Path) -> None:
    journal = fill(tmp_path, 3)
    journal.path_for(1).write_bytes(entry(2).to_bytes())
    with pytest.raises(JournalCorrupt, match="claims serial 2"):
        journal.read(1)


def test_store_refuses_to_open_over_an_unreadable_entry(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    for n in range(3):
        with store.write() as tx:
            tx.set(f"user/u{n}", {"n": n})
    store.close()
    store.journal.path_for(2).write_bytes(b'{"serial": 2, "changes"')
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(JournalCorrupt):
        Store.open(tmp_path, Clock())


def test_reading_a_missing_serial_is_a_key_error(tmp_path: Path) -> None:
    journal = fill(tmp_path, 2)
    with pytest.raises(KeyError):
        journal.read(7)


def test_entries_range(tmp_path: Path) -> None:
    journal = fill(tmp_path, 6)
    assert [e.serial for e in journal.entries(2)] == [2, 3, 4, 5]
    assert [e.serial for e in journal.entries(1, 3)] == [1, 2, 3]
    assert [e.serial for e in journal.entries(4, 99)] == [4, 5]
    assert [e.serial for e in journal.entries(-5, 0)] == [0]


def test_stray_tmp_files_are_removed_and_do_not_count(tmp_path: Path) -> None:
    journal = fill(tmp_path, 3)
    # An append interrupted after writing its temporary file, and one in a fresh directory.
    stray = tmp_name_for(journal.path_for(3))
    stray.write_bytes(entry(3).to_bytes()[:10])
    journal.path_for(1000).parent.mkdir(parents=True)
    stray_far = tmp_name_for(journal.path_for(1000))
    stray_far.write_bytes(b"")
    reopened = Journal(tmp_path)
    assert reopened.last_serial == 2
    assert sorted(reopened.remove_stray_tmp_files()) == sorted([stray, stray_far])
    assert not stray.exists() and not stray_far.exists()
    reopened.append(entry(3))
    assert json.loads(reopened.path_for(3).read_bytes())["serial"] == 3


def test_store_open_removes_stray_journal_tmp_files(tmp_path: Path) -> None:
    store = Store.open(tmp_path, Clock())
    with store.write() as tx:
        tx.set("user/a", {})
    store.close()
    stray = tmp_name_for(store.journal.path_for(1))
    stray.write_bytes(b"half an entr")
    store = Store.open(tmp_path, Clock())
    try:
        assert not stray.exists()
        assert store.serial == 0
        with store.write() as tx:
            tx.set("user/b", {})
        assert tx.serial == 1
    finally:
        store.close()

"""fsck: a healthy directory passes; each kind of damage, made on purpose, is reported."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.storage import nodeinfo
from devpitx.storage.atomic import tmp_name_for
from devpitx.storage.fsck import FsckReport, check
from devpitx.storage.keys import state_relpath
from devpitx.storage.store import Store, StoreLocked

ONE, TWO, MIRRORED = b"one-1.0.tar.gz bytes", b"two-2.0.whl bytes", b"mirrored bytes"
METADATA = b"Metadata-Version: 2.1\nName: two\nVersion: 2.0\n"
SHA_ONE, SHA_TWO, SHA_MIRRORED, SHA_METADATA = (
    hashlib.sha256(c).hexdigest() for c in (ONE, TWO, MIRRORED, METADATA)
)
REL_ONE = f"u/dev/+f/{SHA_ONE[:3]}/{SHA_ONE[3:16]}/one-1.0.tar.gz"
REL_TWO = f"u/dev/+f/{SHA_TWO[:3]}/{SHA_TWO[3:16]}/two-2.0.whl"
REL_GONE = "u/dev/+f/000/0000000000000/gone-1.0.zip"
REL_MIRRORED = f"root/pypi/+f/{SHA_MIRRORED[:3]}/{SHA_MIRRORED[3:16]}/m-1.zip"
REL_NOT_FETCHED = "root/pypi/+f/fff/fffffffffffff/m-2.zip"
LAST_MODIFIED = "Fri, 12 Sep 2014 13:18:55 GMT"


def live(sha256: str, **more: Any) -> dict[str, Any]:
    return {"hash_spec": f"sha256={sha256}", "hashes": {"sha256": sha256, **more}, "last_modified": LAST_MODIFIED}


@pytest.fixture
def serverdir(tmp_path: Path) -> Path:
    """A healthy directory with every kind of record: live, deleted and not-yet-fetched files."""
    path = tmp_path / "srv"
    store = Store.open(path, Clock())
    try:
        for content in (ONE, TWO, MIRRORED, METADATA):
            store.blobs.put_bytes(content)
        with store.write() as tx:
            tx.set("user/u", {"username": "u"})
            tx.set("index/u/dev", {"type": "stage"})
            tx.set(f"file/{REL_GONE}", live(SHA_ONE))
        with store.write() as tx:
            tx.set("version/u/dev/one/1.0", {"name": "one"})
            tx.set(f"file/{REL_ONE}", live(SHA_ONE))
            tx.set(f"file/{REL_TWO}", {**live(SHA_TWO), "+core_metadata": {"sha256": SHA_METADATA}})
            tx.set(f"file/{REL_GONE}", {})
            tx.add_blob(SHA_TWO)
            tx.add_blob(SHA_METADATA)
        with store.write() as tx:
            tx.set(f"file/{REL_MIRRORED}", live(SHA_MIRRORED, md5=hashlib.md5(MIRRORED).hexdigest()))
            tx.set(f"file/{REL_NOT_FETCHED}", {"hashes": {"sha256": "f" * 64}, "url": "https://upstream/m-2.zip"})
            tx.delete("index/u/dev")
    finally:
        store.close()
    return path


def only_problem(report: FsckReport, *fragments: str) -> str:
    assert len(report.problems) == 1, report.problems
    for fragment in fragments:
        assert fragment in report.problems[0]
    return report.problems[0]


def journal_path(serverdir: Path, serial: int) -> Path:
    return serverdir / "journal" / "000" / "000" / f"{serial:09d}.json"


def state_path(serverdir: Path, key: str) -> Path:
    return serverdir / "state" / state_relpath(key)


def blob(serverdir: Path, sha256: str) -> Path:
    return serverdir / "blobs" / "sha256" / sha256[:2] / sha256[2:4] / sha256


# -- healthy ------------------------------------------------------------------------------------


def test_a_healthy_directory_passes(serverdir: Path) -> None:
    messages: list[str] = []
    report = check(serverdir, progress=messages.append)
    assert report.ok
    assert (report.problems, report.notes) == ([], [])
    assert report.serial == 2 and report.entries == 3
    assert report.keys == 7  # user, version, 5 file entries
    assert (report.files, report.links, report.blobs_checked) == (3, 4, 4)  # wheel + its .metadata
    assert (report.missing_blobs, report.bad_checksums) == (0, 0)
    assert messages[:3] == ["checking journal", "checking state", "checking files"]
    assert messages[-1] == "done: 0 problem(s)"


def test_a_new_empty_store_passes(tmp_path: Path) -> None:
    Store.open(tmp_path, Clock()).close()
    report = check(tmp_path)
    assert (report.problems, report.notes, report.serial) == ([], [], -1)


def test_not_a_server_directory(tmp_path: Path) -> None:
    report = check(tmp_path / "nothing")
    only_problem(report, "not a devpitx server directory")
    assert not (tmp_path / "nothing").exists()  # nothing was created


def test_refuses_while_a_server_has_the_directory_open(serverdir: Path) -> None:
    store = Store.open(serverdir, Clock())
    try:
        with pytest.raises(StoreLocked, match="running devpitx server"):
            check(serverdir)
    finally:
        store.close()


def test_a_server_cannot_start_during_the_check(serverdir: Path) -> None:
    outcomes: list[str] = []

    def try_to_open(message: str) -> None:
        if message == "checking state":
            try:
                Store.open(serverdir, Clock()).close()
                outcomes.append("opened")
            except StoreLocked:
                outcomes.append("locked")

    assert check(serverdir, progress=try_to_open).ok
    assert outcomes == ["locked"]
    Store.open(serverdir, Clock()).close()  # released afterwards


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_changes_nothing_even_in_a_damaged_directory(serverdir: Path) -> None:
    tmp_name_for(journal_path(serverdir, 3)).write_bytes(b"half")
    tmp_name_for(state_path(serverdir, "user/u")).write_bytes(b"half")
    (serverdir / "tmp" / "upload-1").write_bytes(b"partial")
    (serverdir / "state" / ".serial").write_text("1")
    before = _tree(serverdir)
    report = check(serverdir)
    assert report.notes and report.ok
    assert _tree(serverdir) == before


# -- the journal ----------------------------------------------------------------------------------


def test_journal_gap(serverdir: Path) -> None:
    journal_path(serverdir, 1).unlink()
    report = check(serverdir)
    assert report.problems == [
        "journal has gaps: serial(s) 1 missing",
        "state and files not checked: the journal cannot be replayed",
    ]


def test_journal_gap_ranges_are_summarised(serverdir: Path) -> None:
    store = Store.open(serverdir, Clock())
    for n in range(6):
        with store.write() as tx:
            tx.set("user/u", {"n": n})
    store.close()
    for serial in (1, 3, 4, 5):
        journal_path(serverdir, serial).unlink()
    assert "serial(s) 1, 3-5 missing" in check(serverdir).problems[0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "does not parse"),
        (b"[]", "does not parse"),
        (b'{"serial": 1, "at": 1}', "does not parse"),
        (b'{"serial": 2, "at": 1, "changes": {}}', "claims serial 2"),
        (b'{"serial": 1, "at": 1, "changes": []}', "'changes' is not an object"),
        (b'{"serial": 1, "at": "noon", "changes": {}}', "'at' is not a number"),
        (b'{"serial": "1", "at": 1, "changes": {}}', "serial is not an integer"),
        (b'{"serial": 1, "at": 1, "changes": {}, "blobs": ["abc"]}', "'blobs' is not a list of sha256 digests"),
    ],
)
def test_unreadable_journal_entry(serverdir: Path, content: bytes, reason: str) -> None:
    journal_path(serverdir, 1).write_bytes(content)
    report = check(serverdir)
    assert len(report.problems) == 2, report.problems
    assert report.problems[0].startswith(f"journal entry 1 is unreadable: {reason}")
    assert report.problems[1] == "state and files not checked: the journal cannot be replayed"
    assert report.entries == 3  # every entry was looked at


def test_stray_journal_tmp_is_a_note(serverdir: Path) -> None:
    tmp_name_for(journal_path(serverdir, 3)).write_bytes(b"half an entry")
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["journal/000/000/.000000003.json.tmp: interrupted write (removed on next start)"]


@pytest.mark.parametrize("name", ["000/000/notes.txt", "000/000/42.json", "000/001/000000002.json", "stray.json"])
def test_unexpected_journal_file(serverdir: Path, name: str) -> None:
    path = serverdir / "journal" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}")
    only_problem(check(serverdir), f"journal/{name}: unexpected file")


# -- state ------------------------------------------------------------------------------------------


def rewrite_state(serverdir: Path, key: str, value: Any) -> None:
    state_path(serverdir, key).write_text(json.dumps({"key": key, "value": value}))


def test_state_value_differs_from_the_journal(serverdir: Path) -> None:
    rewrite_state(serverdir, "user/u", {"username": "mallory"})
    only_problem(check(serverdir), "state differs from the journal for key 'user/u'")


def test_state_lacks_a_key(serverdir: Path) -> None:
    state_path(serverdir, "version/u/dev/one/1.0").unlink()
    only_problem(check(serverdir), "state lacks key 'version/u/dev/one/1.0'")


def test_state_has_a_key_the_journal_does_not(serverdir: Path) -> None:
    for key in ("index/u/dev", "user/nobody"):  # deleted in the journal / never there
        state_path(serverdir, key).parent.mkdir(parents=True, exist_ok=True)
        rewrite_state(serverdir, key, {"x": 1})
    report = check(serverdir)
    assert report.problems == [
        "state has key 'index/u/dev', which the journal does not have",
        "state has key 'user/nobody', which the journal does not have",
    ]


def test_state_file_in_the_wrong_place(serverdir: Path) -> None:
    (serverdir / "state" / "user" / "other.json").write_text(json.dumps({"key": "user/u", "value": {}}))
    only_problem(check(serverdir), "state/user/other.json: holds key 'user/u', which belongs in state/user/u.json")


@pytest.mark.parametrize("content", [b"{", b'{"value": 1}', b'{"key": 5, "value": 1}', b"[]"])
def test_unreadable_state_file(serverdir: Path, content: bytes) -> None:
    state_path(serverdir, "user/u").write_bytes(content)
    report = check(serverdir)
    assert report.problems[0].startswith("state/user/u.json: unreadable")
    assert report.problems[1:] == ["state lacks key 'user/u'"]


def test_unexpected_state_file(serverdir: Path) -> None:
    (serverdir / "state" / "user" / "notes.txt").write_text("hi")
    only_problem(check(serverdir), "state/user/notes.txt: unexpected file")


def test_state_ahead_of_the_journal(serverdir: Path) -> None:
    (serverdir / "state" / ".serial").write_text("9")
    only_problem(check(serverdir), "state/ is at serial 9 but the journal ends at 2")


def test_state_serial_not_a_number(serverdir: Path) -> None:
    (serverdir / "state" / ".serial").write_text("two")
    only_problem(check(serverdir), "state/.serial does not hold a serial")


def test_state_behind_the_journal_is_a_note(serverdir: Path) -> None:
    # A crash after publishing serial 2 and writing only some of its state files.
    (serverdir / "state" / ".serial").write_text("1")
    state_path(serverdir, "index/u/dev").parent.mkdir(parents=True, exist_ok=True)
    rewrite_state(serverdir, "index/u/dev", {"type": "stage"})  # its delete was not applied yet
    state_path(serverdir, f"file/{REL_MIRRORED}").unlink()
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["state/ is at serial 1, the journal at 2 (the next start replays the difference)"]
    # ... but keys the replay will not touch must be right already.
    rewrite_state(serverdir, "user/u", {"username": "mallory"})
    only_problem(check(serverdir), "'user/u'")
    rewrite_state(serverdir, "user/u", {"username": "u"})
    Store.open(serverdir, Clock()).close()  # the replay completes it
    report = check(serverdir)
    assert (report.problems, report.notes) == ([], [])


def test_state_missing_entirely_is_a_note(serverdir: Path) -> None:
    shutil.rmtree(serverdir / "state")
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["state/ is missing (the next start replays the whole journal)"]


def test_state_serial_missing_is_a_note(serverdir: Path) -> None:
    (serverdir / "state" / ".serial").unlink()
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["state/.serial is missing (the next start replays the whole journal)"]


def test_stray_state_tmp_is_a_note(serverdir: Path) -> None:
    tmp_name_for(state_path(serverdir, "user/u")).write_bytes(b"{")
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["state/user/.u.json.tmp: interrupted write (removed on next start)"]


# -- blobs and +files -------------------------------------------------------------------------------


def test_missing_blob(serverdir: Path) -> None:
    blob(serverdir, SHA_TWO).unlink()
    report = check(serverdir)
    only_problem(report, f"file entry {REL_TWO}: content missing (blob {SHA_TWO})")
    assert report.missing_blobs == 1


def test_missing_blob_on_a_replica_is_a_note(serverdir: Path) -> None:
    # A replica applies entries before their files arrive: not a damage.
    nodeinfo.save(serverdir, nodeinfo.NodeInfo(uuid="a" * 32, role="replica", primary_url="http://127.0.0.1:1"))
    blob(serverdir, SHA_TWO).unlink()
    report = check(serverdir)
    assert report.ok, report.problems
    assert report.missing_blobs == 1
    assert any(f"{REL_TWO}: content not replicated yet" in note for note in report.notes)


def test_corrupt_blob_is_found_with_checksums_only(serverdir: Path) -> None:
    with open(blob(serverdir, SHA_ONE), "r+b") as f:  # in place: +files/ shares the inode
        f.write(b"X")
    report = check(serverdir)
    only_problem(report, f"file entry {REL_ONE}: content does not match its sha256 digest")
    assert report.bad_checksums == 1
    report = check(serverdir, checksums=False)
    assert report.ok and report.blobs_checked == 0


def test_other_recorded_digests_are_checked(serverdir: Path) -> None:
    store = Store.open(serverdir, Clock())
    with store.write() as tx:
        tx.set(f"file/{REL_MIRRORED}", live(SHA_MIRRORED, md5="0" * 32))
    store.close()
    only_problem(check(serverdir), f"file entry {REL_MIRRORED}: content does not match its md5 digest")


def test_malformed_sha256_in_a_file_entry(serverdir: Path) -> None:
    # Written around the Store, which would refuse to link such an entry.
    entry = json.loads(journal_path(serverdir, 2).read_bytes())
    entry["changes"][f"file/{REL_NOT_FETCHED}"] = {"hashes": {"sha256": "XYZ"}, "last_modified": LAST_MODIFIED}
    journal_path(serverdir, 2).write_text(json.dumps(entry))
    shutil.rmtree(serverdir / "state")
    only_problem(check(serverdir), f"file entry {REL_NOT_FETCHED}: malformed content sha256 'XYZ'")


def test_missing_link(serverdir: Path) -> None:
    (serverdir / "+files" / REL_ONE).unlink()
    only_problem(check(serverdir), f"+files/{REL_ONE}: link missing")


def test_missing_metadata_link(serverdir: Path) -> None:
    (serverdir / "+files" / f"{REL_TWO}.metadata").unlink()
    only_problem(check(serverdir), f"+files/{REL_TWO}.metadata: link missing")


def test_missing_metadata_blob(serverdir: Path) -> None:
    blob(serverdir, SHA_METADATA).unlink()
    report = check(serverdir)
    only_problem(report, f"file entry {REL_TWO}: core metadata missing (blob {SHA_METADATA})")
    assert report.missing_blobs == 1


def test_corrupt_metadata_blob(serverdir: Path) -> None:
    with open(blob(serverdir, SHA_METADATA), "r+b") as f:
        f.write(b"m")
    only_problem(check(serverdir), f"file entry {REL_TWO}: core metadata does not match its sha256 digest")


def test_metadata_link_to_the_content_instead(serverdir: Path) -> None:
    link = serverdir / "+files" / f"{REL_TWO}.metadata"
    link.unlink()
    os.link(blob(serverdir, SHA_TWO), link)
    only_problem(check(serverdir), f"+files/{REL_TWO}.metadata: not a link to its core metadata")


def test_link_to_the_wrong_content(serverdir: Path) -> None:
    link = serverdir / "+files" / REL_ONE
    link.unlink()
    os.link(blob(serverdir, SHA_TWO), link)
    only_problem(check(serverdir), f"+files/{REL_ONE}: not a link to its content")


def test_a_copy_instead_of_a_link(serverdir: Path) -> None:
    link = serverdir / "+files" / REL_ONE
    link.unlink()
    link.write_bytes(ONE)
    only_problem(check(serverdir), f"+files/{REL_ONE}: not a link to its content")


@pytest.mark.parametrize("relpath", [REL_GONE, REL_NOT_FETCHED, "u/dev/+f/abc/def/never.zip"])
def test_link_without_a_live_entry(serverdir: Path, relpath: str) -> None:
    path = serverdir / "+files" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(blob(serverdir, SHA_ONE), path)
    only_problem(check(serverdir), f"+files/{relpath}: no live file entry")


def test_stray_tmp_under_files_is_a_problem(serverdir: Path) -> None:
    link = serverdir / "+files" / REL_ONE
    os.link(link, tmp_name_for(link))
    only_problem(check(serverdir), "stray temporary file")


def test_unexpected_file_in_blobs(serverdir: Path) -> None:
    misplaced = serverdir / "blobs" / "sha256" / "00" / "00" / SHA_ONE
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(ONE)
    (serverdir / "blobs" / "sha256" / "notes.txt").write_text("hi")
    report = check(serverdir)
    assert sorted(report.problems) == [
        f"blobs/sha256/00/00/{SHA_ONE}: unexpected file",
        "blobs/sha256/notes.txt: unexpected file",
    ]


def test_unreferenced_blobs_are_fine(serverdir: Path) -> None:
    store = Store.open(serverdir, Clock())
    store.blobs.put_bytes(b"uploaded, then the commit failed")
    store.close()
    assert check(serverdir).ok


def test_tmp_dir_leftovers_are_a_note(serverdir: Path) -> None:
    (serverdir / "tmp" / "upload-1").write_bytes(b"partial")
    (serverdir / "tmp" / "upload-2").write_bytes(b"partial")
    report = check(serverdir)
    assert report.ok
    assert report.notes == ["tmp/ holds 2 leftover file(s) of unfinished uploads (removed on next start)"]

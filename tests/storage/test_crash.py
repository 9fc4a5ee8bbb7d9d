"""Crash safety of the commit sequence (DESIGN.md §2): fail anywhere, reopen, lose nothing committed.

Every injection point of one representative commit (a blob stored, then a
multi-key transaction that adds a live file entry, tombstones another and
deletes a key) is tried in two crash models:

* raise: the step raises OSError in-process (as a full disk or an I/O error
  would); the Store is then closed and the directory reopened;
* crash: the same step calls ``os._exit`` in a forked child, so nothing after
  the failure happens, not even ``finally`` clean-ups.

Either way the reopened directory must hold exactly the state before or
exactly the state after the commit (the journal entry decides which), with no
temporary files, ``+files/`` matching the live file entries and
``state/.serial`` equal to the journal's last serial. A real SIGKILL at random
moments and a full replay after deleting ``state/`` complete the picture.

The helpers here are shared with test_state_machine.py.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.storage import atomic, fsck
from devpitx.storage.atomic import TMP_SUFFIX
from devpitx.storage.keys import file_key
from devpitx.storage.store import COMMIT_STEPS, Store, StoreBroken

# -- consistency checks (also used by test_state_machine) -----------------------------------


def live_file_entries(values: Mapping[str, Any]) -> dict[str, str]:
    """``+files/`` relpath -> sha256 for every link the file entries call for.

    Content once stored (``last_modified``), and ``<relpath>.metadata`` for a
    core-metadata blob (PEP 658); all blobs are present in these tests.
    """
    live = {}
    for key, value in values.items():
        if not key.startswith("file/") or not isinstance(value, dict):
            continue
        relpath = key[len("file/"):]
        sha256 = value.get("hashes", {}).get("sha256")
        if sha256 and value.get("last_modified"):
            live[relpath] = sha256
        metadata = value.get("+core_metadata", {}).get("sha256")
        if metadata:
            live[f"{relpath}.metadata"] = metadata
    return live


def tmp_files(serverdir: Path) -> list[str]:
    return sorted(
        str(Path(dirpath, name).relative_to(serverdir))
        for dirpath, _dirs, files in os.walk(serverdir)
        for name in files
        if name.endswith(TMP_SUFFIX)
    )


def files_links(serverdir: Path) -> dict[str, Path]:
    root = serverdir / "+files"
    return {
        Path(dirpath, name).relative_to(root).as_posix(): Path(dirpath, name)
        for dirpath, _dirs, files in os.walk(root)
        for name in files
    }


def blob_path(serverdir: Path, sha256: str) -> Path:
    return serverdir / "blobs" / "sha256" / sha256[:2] / sha256[2:4] / sha256


def replay_journal(serverdir: Path) -> tuple[int, dict[str, Any]]:
    """(last serial, values) from reading the journal files directly, independent of Store."""
    paths = sorted((serverdir / "journal").glob("*/*/*.json"), key=lambda p: int(p.stem))
    values: dict[str, Any] = {}
    for expected_serial, path in enumerate(paths):
        entry = json.loads(path.read_bytes())
        assert int(path.stem) == expected_serial, f"journal not contiguous at {path}"
        assert entry["serial"] == expected_serial
        for key, value in entry["changes"].items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
    return len(paths) - 1, values


def assert_same_values(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        # JSON text, so that 1 and True or 1 and 1.0 count as different values.
        assert json.dumps(actual[key], sort_keys=True) == json.dumps(value, sort_keys=True), key


def assert_links_match(serverdir: Path, values: Mapping[str, Any]) -> None:
    live = live_file_entries(values)
    links = files_links(serverdir)
    assert sorted(links) == sorted(live)
    for relpath, sha256 in live.items():
        assert os.path.samefile(links[relpath], blob_path(serverdir, sha256)), relpath


def assert_reopens_to(serverdir: Path, expected: Mapping[str, Any]) -> None:
    """Reopen ``serverdir`` after a failure and check everything the contract promises."""
    store = Store.open(serverdir, Clock())
    try:
        assert_same_values(dict(store.state.items()), expected)
        assert store.serial == store.journal.last_serial
        assert (serverdir / "state" / ".serial").read_text() == str(store.journal.last_serial)
    finally:
        store.close()
    assert tmp_files(serverdir) == []
    assert_links_match(serverdir, expected)
    last, replayed = replay_journal(serverdir)
    assert last == store.serial
    assert_same_values(replayed, expected)
    report = fsck.check(serverdir)
    assert (report.problems, report.notes) == ([], [])


# -- the commit under test ------------------------------------------------------------------

OLD_CONTENT = b"pkg-1.0 sdist bytes"
NEW_CONTENT = b"pkg-2.0 wheel bytes"
NEW_METADATA = b"Metadata-Version: 2.1\nName: pkg\nVersion: 2.0\n"
OLD_SHA = hashlib.sha256(OLD_CONTENT).hexdigest()
NEW_SHA = hashlib.sha256(NEW_CONTENT).hexdigest()
NEW_METADATA_SHA = hashlib.sha256(NEW_METADATA).hexdigest()
OLD_RELPATH = f"alice/dev/+f/{OLD_SHA[:3]}/{OLD_SHA[3:16]}/pkg-1.0.tar.gz"
NEW_RELPATH = f"alice/dev/+f/{NEW_SHA[:3]}/{NEW_SHA[3:16]}/pkg-2.0-py3-none-any.whl"


def file_entry(sha256: str, version: str) -> dict[str, Any]:
    return {
        "hash_spec": f"sha256={sha256}",
        "hashes": {"sha256": sha256},
        "last_modified": "Fri, 12 Sep 2014 13:18:55 GMT",
        "project": "pkg",
        "version": version,
    }


HISTORY: list[dict[str, Any]] = [
    {"user/alice": {"username": "alice", "pwhash": "x"}, "index/alice/dev": {"type": "stage", "bases": []}},
    {
        "project/alice/dev/pkg": {},
        "version/alice/dev/pkg/1.0": {"name": "pkg", "version": "1.0"},
        file_key(OLD_RELPATH): file_entry(OLD_SHA, "1.0"),
    },
]
BEFORE: dict[str, Any] = {k: v for changes in HISTORY for k, v in changes.items()}
BEFORE_SERIAL = len(HISTORY) - 1
CHANGES: dict[str, Any] = {
    "user/bob": {"username": "bob", "pwhash": "y"},
    "index/alice/dev": {"type": "stage", "bases": ["root/pypi"]},
    "version/alice/dev/pkg/1.0": None,
    "version/alice/dev/pkg/2.0": {"name": "pkg", "version": "2.0"},
    file_key(OLD_RELPATH): {},
    file_key(NEW_RELPATH): {**file_entry(NEW_SHA, "2.0"), "+core_metadata": {"sha256": NEW_METADATA_SHA}},
}
AFTER: dict[str, Any] = {k: v for k, v in {**BEFORE, **CHANGES}.items() if v is not None}
EXPECTED = {"before": BEFORE, "after": AFTER}


def build_history(serverdir: Path) -> None:
    store = Store.open(serverdir, Clock())
    try:
        store.blobs.put_bytes(OLD_CONTENT)
        for changes in HISTORY:
            with store.write() as tx:
                for key, value in changes.items():
                    tx.set(key, value)
        assert store.serial == BEFORE_SERIAL
    finally:
        store.close()


def commit_under_test(store: Store) -> int:
    sha256 = store.blobs.put_bytes(NEW_CONTENT)
    metadata_sha256 = store.blobs.put_bytes(NEW_METADATA)
    with store.write() as tx:
        for key, value in CHANGES.items():
            if value is None:
                tx.delete(key)
            else:
                tx.set(key, value)
        tx.add_blob(sha256)
        tx.add_blob(metadata_sha256)
    assert tx.serial is not None
    return tx.serial


# -- failure injection ------------------------------------------------------------------------

PRIMITIVES = ("fsync", "link", "replace", "write")
TARGETS = (*COMMIT_STEPS, *PRIMITIVES)
# Which side of the commit point failures at each target fall on: each kind of
# primitive is used both before the journal entry exists and after it.
OUTCOMES = {
    "before-journal": {"before"},
    "after-journal": {"after"},
    "after-state": {"after"},
    "after-files": {"after"},
    "fsync": {"before", "after"},
    "link": {"before", "after"},
    "replace": {"after"},
    "write": {"before", "after"},
}

Patch = Callable[[object, str, object], None]


class _FailingWrites:
    """A file object whose ``write`` reports to the injector (and may write half, then fail)."""

    def __init__(self, file: Any, injector: Injector) -> None:
        self._file = file
        self._injector = injector

    def write(self, data: bytes) -> int:
        self._injector.hit("write", partial=lambda: self._file.write(data[: len(data) // 2]))
        return int(self._file.write(data))

    def __enter__(self) -> _FailingWrites:
        self._file.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._file.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class Injector:
    """Counts calls of each target while armed and fails the ``nth`` call of ``target``."""

    def __init__(self, target: str, nth: int, fail: Callable[[], None]) -> None:
        self.target = target
        self.nth = nth
        self._fail = fail
        self.armed = False
        self.fired = False
        self.calls: dict[str, int] = {}

    def hit(self, name: str, partial: Callable[[], object] | None = None) -> None:
        if not self.armed:
            return
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.target and self.calls[name] == self.nth:
            self.fired = True
            self.armed = False  # clean-up code after the failure runs unhindered
            if partial is not None:
                partial()
            self._fail()

    def install(self, patch: Patch) -> None:
        for name in ("fsync", "link", "replace"):
            real = getattr(os, name)

            def wrapper(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                self.hit(_name)
                return _real(*args, **kwargs)

            patch(os, name, wrapper)
        real_open, real_fdopen = open, os.fdopen
        # atomic.py writes journal and state files with open(); blobs.py writes with os.fdopen().
        patch(atomic, "open", lambda *a, **k: _FailingWrites(real_open(*a, **k), self))
        patch(os, "fdopen", lambda *a, **k: _FailingWrites(real_fdopen(*a, **k), self))


def _raise_injected() -> None:
    raise OSError(errno.EIO, "injected failure")


def run_raising(
    serverdir: Path, target: str, nth: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Store, str] | None:
    """Run the commit with the ``nth`` call of ``target`` raising; (open store, outcome) or None.

    None means the commit makes fewer than ``nth`` such calls. The outcome is
    "after" when the Store reported StoreBroken (its journal entry exists),
    "before" when the injected error itself came out.
    """
    build_history(serverdir)
    injector = Injector(target, nth, _raise_injected)
    store = Store.open(serverdir, Clock(), checkpoint=injector.hit)
    return raise_during(store, commit_under_test, injector, monkeypatch)


def raise_during(store: Store, commit: Callable[[Store], object], injector: Injector,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str] | None:
    """Run ``commit`` with ``injector`` armed: (store, "before"/"after") or None if it never fired."""
    with monkeypatch.context() as patcher:
        # raising=False: atomic.open shadows the builtin and does not exist beforehand.
        injector.install(lambda obj, name, value: patcher.setattr(obj, name, value, raising=False))
        injector.armed = True
        try:
            commit(store)
        except StoreBroken:
            outcome = "after"
        except OSError as exc:
            assert exc.strerror == "injected failure"
            outcome = "before"
        else:
            assert not injector.fired, f"failure of {injector.target} #{injector.nth} was swallowed"
            store.close()
            return None
    assert injector.fired
    return store, outcome


_CRASHED, _COMPLETED, _ERROR = 17, 18, 19


def run_crashing(serverdir: Path, target: str, nth: int) -> bool:
    """Run the commit in a forked child that exits on the spot at the ``nth`` call of ``target``.

    True if the child died there, False if the commit makes fewer calls.
    """
    build_history(serverdir)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        code = _ERROR
        try:
            injector = Injector(target, nth, lambda: os._exit(_CRASHED))
            injector.install(lambda obj, name, value: setattr(obj, name, value))
            store = Store.open(serverdir, Clock(), checkpoint=injector.hit)
            injector.armed = True
            commit_under_test(store)
            code = _COMPLETED
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (_CRASHED, _COMPLETED), f"child failed with {code}"
    return code == _CRASHED


@pytest.fixture
def no_disk_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make os.fsync return at once (it is still counted and still fails when injected).

    A process crash cannot lose what already reached the kernel, so flushing
    to the disk changes nothing in these tests, it only makes them slow. What
    must be flushed, and when, is checked by the DirectoryAudit tests below.
    """
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.mark.usefixtures("no_disk_flush")
@pytest.mark.parametrize("target", TARGETS)
def test_failure_at_every_point_reopens_to_before_or_after(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = set()
    for nth in itertools.count(1):
        raised = run_raising(tmp_path / f"raise-{nth}", target, nth, monkeypatch)
        if raised is None:
            assert not run_crashing(tmp_path / f"crash-{nth}", target, nth)
            break
        store, outcome = raised
        store.close()
        outcomes.add(outcome)
        assert_reopens_to(tmp_path / f"raise-{nth}", EXPECTED[outcome])
        # The same point with no clean-up at all must land on the same side.
        assert run_crashing(tmp_path / f"crash-{nth}", target, nth)
        assert_reopens_to(tmp_path / f"crash-{nth}", EXPECTED[outcome])
    assert outcomes == OUTCOMES[target]


@pytest.mark.usefixtures("no_disk_flush")
@pytest.mark.parametrize("target", TARGETS)
def test_failure_leaves_store_usable_only_before_publication(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for nth in itertools.count(1):
        serverdir = tmp_path / str(nth)
        raised = run_raising(serverdir, target, nth, monkeypatch)
        if raised is None:
            break
        store, outcome = raised
        try:
            if outcome == "before":
                assert store.serial == BEFORE_SERIAL
                assert_same_values(dict(store.state.items()), BEFORE)
                assert commit_under_test(store) == BEFORE_SERIAL + 1
                assert_same_values(dict(store.state.items()), AFTER)
            else:
                with pytest.raises(StoreBroken):
                    with store.write() as tx:
                        tx.set("user/carol", {"username": "carol"})
        finally:
            store.close()
        assert_reopens_to(serverdir, AFTER)
        reopened = Store.open(serverdir, Clock())
        try:
            with reopened.write() as tx:
                tx.set("user/carol", {"username": "carol"})
            assert tx.serial == BEFORE_SERIAL + 2
        finally:
            reopened.close()
    assert nth > 1


# -- a real crash: SIGKILL at random moments --------------------------------------------------

_COMMIT_LOOP = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from twisted.internet.task import Clock
    from devpitx.storage.store import Store

    def relpath(n):
        sha = hashlib.sha256(b"content %d" % n).hexdigest()
        return sha, f"u/i/+f/{sha[:3]}/{sha[3:16]}/pkg-{n}.tar.gz"

    store = Store.open(Path(sys.argv[1]), Clock())
    print("ready", store.serial, flush=True)
    while True:
        n = store.serial + 1
        sha = store.blobs.put_bytes(b"content %d" % n)
        with store.write() as tx:
            tx.set("file/" + relpath(n)[1], {"hashes": {"sha256": sha}, "last_modified": "now", "n": n})
            tx.set(f"version/u/i/pkg/{n}", {"version": n})
            tx.set("project/u/i/pkg", {"latest": n})
            if n >= 3:
                tx.set("file/" + relpath(n - 3)[1], {})
                tx.delete(f"version/u/i/pkg/{n - 3}")
            tx.add_blob(sha)
        print(tx.serial, flush=True)
    """
)


def test_sigkill_at_random_moments_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    rng = random.Random(1776)
    acknowledged = -1
    for _round in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _COMMIT_LOOP, str(serverdir)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split() == ["ready", str(acknowledged)]
            time.sleep(rng.uniform(0.02, 0.2))
        finally:
            proc.kill()
            output, _ = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        printed = [int(line) for line in output.split()]
        if printed:
            acknowledged = printed[-1]
        last, replayed = replay_journal(serverdir)
        # A commit reported done survives; at most the one in progress may be there too.
        assert last in (acknowledged, acknowledged + 1)
        acknowledged = last
        assert_reopens_to(serverdir, replayed)
    assert acknowledged > 4


# -- replay ---------------------------------------------------------------------------------


def _state_files(serverdir: Path) -> dict[str, bytes]:
    root = serverdir / "state"
    return {
        Path(dirpath, name).relative_to(root).as_posix(): Path(dirpath, name).read_bytes()
        for dirpath, _dirs, files in os.walk(root)
        for name in files
    }


def test_replay_after_deleting_state_and_files_reproduces_everything(tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    build_history(serverdir)
    store = Store.open(serverdir, Clock())
    try:
        commit_under_test(store)
        third = store.blobs.put_bytes(b"third")
        third_relpath = f"bob/prod/+f/{third[:3]}/{third[3:16]}/other-1.zip"
        long_name = "n" * 300  # hashed segment in state/
        with store.write() as tx:
            tx.set(file_key(third_relpath), file_entry(third, "1"))
            tx.set(f"version/bob/prod/{long_name}/1", {"name": long_name})
            tx.set("version/bob/prod/.hidden/ü 1", {"unicode": "ü", "nested": {"a": [1, 2.5, True, None]}})
            tx.set("index/bob/prod", {"type": "stage"})
            tx.add_blob(third)
        with store.write() as tx:
            tx.set(file_key(third_relpath), {"hashes": {"sha256": third}, "project": "other"})  # no content
            tx.delete("index/bob/prod")
            tx.set("index/alice/dev", {"type": "stage", "bases": [], "volatile": False})
        values = dict(store.state.items())
        children = {p: set(store.children(p)) for p in ("version", "version/bob/prod", "file", "index/bob")}
        serial = store.serial
    finally:
        store.close()
    state_before = _state_files(serverdir)
    links_before = {rel: os.stat(path).st_ino for rel, path in files_links(serverdir).items()}
    assert len(links_before) == 2  # the wheel and its .metadata

    shutil.rmtree(serverdir / "state")
    shutil.rmtree(serverdir / "+files")
    store = Store.open(serverdir, Clock())
    try:
        assert store.serial == serial
        assert_same_values(dict(store.state.items()), values)
        assert {p: set(store.children(p)) for p in children} == children
    finally:
        store.close()
    assert _state_files(serverdir) == state_before
    assert {rel: os.stat(path).st_ino for rel, path in files_links(serverdir).items()} == links_before
    assert_reopens_to(serverdir, values)


# -- durability under power loss: every directory change is fsynced in time ---------------------


class DirectoryAudit:
    """Tracks directories whose entries changed since their last fsync (what power loss may undo).

    The commit point (linking the journal entry) must find no such directory
    under blobs/, since the entry names those blobs; writing state/.serial must
    find none under state/ or +files/, since it declares them complete.
    Temporary names are not tracked: losing them is harmless.
    """

    def __init__(self, serverdir: Path, patch: Patch) -> None:
        self.serverdir = serverdir
        self.dirty: set[Path] = set()
        self.violations: list[str] = []
        self._dir_fds: dict[int, Path] = {}
        real = {name: getattr(os, name) for name in ("mkdir", "rmdir", "unlink", "link", "replace", "open", "fsync", "close")}

        def changed(path: Any) -> None:
            path = Path(path)
            if not path.name.endswith(TMP_SUFFIX):
                self.dirty.add(path.parent)

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            real["mkdir"](path, *args, **kwargs)
            changed(path)

        def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
            real["rmdir"](path, *args, **kwargs)
            self.dirty.discard(Path(path))  # gone: only its removal from the parent matters
            changed(path)

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            real["unlink"](path, *args, **kwargs)
            changed(path)

        def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if Path(dst).is_relative_to(serverdir / "journal") and not Path(dst).name.endswith(TMP_SUFFIX):
                self.check("publishing a journal entry", "blobs")
            real["link"](src, dst, *args, **kwargs)
            changed(dst)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if Path(dst) == serverdir / "state" / ".serial":
                self.check("writing state/.serial", "state", "+files")
            real["replace"](src, dst, *args, **kwargs)
            changed(dst)

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            fd = int(real["open"](path, flags, *args, **kwargs))
            if flags & os.O_DIRECTORY:
                self._dir_fds[fd] = Path(path)
            return fd

        def fsync(fd: Any) -> None:
            real["fsync"](fd)
            if isinstance(fd, int) and fd in self._dir_fds:
                self.dirty.discard(self._dir_fds[fd])

        def close(fd: int) -> None:
            self._dir_fds.pop(fd, None)
            real["close"](fd)

        for name, wrapper in [
            ("mkdir", mkdir), ("rmdir", rmdir), ("unlink", unlink), ("link", link),
            ("replace", replace), ("open", open_), ("fsync", fsync), ("close", close),
        ]:
            patch(os, name, wrapper)

    def check(self, moment: str, *areas: str) -> None:
        for path in sorted(self.dirty):
            if any(path.is_relative_to(self.serverdir / area) for area in areas):
                self.violations.append(f"{moment}: {path.relative_to(self.serverdir)} not fsynced")

    def unsynced(self, within: Path) -> list[str]:
        """Directories below ``within`` with unsynced changes, except tmp/ (uploads in progress)."""
        return sorted(
            str(p.relative_to(within))
            for p in self.dirty
            if p.is_relative_to(within) and not p.is_relative_to(self.serverdir / "tmp")
        )


def test_directory_changes_are_durable_before_they_are_relied_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serverdir = tmp_path / "srv"
    build_history(serverdir)
    store = Store.open(serverdir, Clock())
    try:
        with monkeypatch.context() as patcher:
            audit = DirectoryAudit(serverdir, patcher.setattr)
            commit_under_test(store)  # new blob, state and +files directories; a link removed
            third = store.blobs.put_bytes(b"third")
            with store.write() as tx:
                tx.set(file_key(f"carol/x/+f/{third[:3]}/{third[3:16]}/c.zip"), file_entry(third, "1"))
                tx.set("version/carol/x/c/1", {"name": "c"})
                tx.set(file_key(NEW_RELPATH), {})
                tx.add_blob(third)
            assert audit.violations == [], "\n".join(audit.violations)
            assert audit.unsynced(serverdir) == []
    finally:
        store.close()


def test_a_new_server_directory_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Losing journal/, blobs/ or +files/ themselves would lose everything in them.
    serverdir = tmp_path / "new" / "srv"
    with monkeypatch.context() as patcher:
        audit = DirectoryAudit(serverdir, patcher.setattr)
        store = Store.open(serverdir, Clock())
        try:
            commit_under_test(store)
        finally:
            store.close()
    assert audit.violations == [], "\n".join(audit.violations)
    assert audit.unsynced(tmp_path) == []

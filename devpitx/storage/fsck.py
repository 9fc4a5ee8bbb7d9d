"""Offline consistency check of a server directory (``devpitx fsck``).

Checks what DESIGN.md §2 promises: the journal is a contiguous sequence of
readable entries from serial 0; ``state/`` equals a replay of the journal (up
to what the next start would replay anyway); every blob named by a live file
entry exists and, with ``checksums``, has the digests the entry records;
``+files/`` holds exactly the hard links the live file entries call for
(content, and ``.metadata`` for core metadata); no temporary
files are left where the server would not remove them itself.

Nothing is modified. The directory lock is taken (shared) for the duration,
so a running server makes the check refuse with ``StoreLocked`` instead of
reading a directory that changes underneath it, and a server cannot start
while the check runs.

Findings come in two grades: ``problems`` are damage the server will not
repair by itself (the CLI exits 1), ``notes`` are leftovers of an interrupted
run that the next start cleans up or replays (stray journal/state tmp files,
``tmp/`` contents, ``state/`` behind the journal).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from devpitx.storage import nodeinfo
from devpitx.storage.atomic import is_tmp_name
from devpitx.storage.blobs import COPY_CHUNK_BYTES, BlobStore
from devpitx.storage.journal import Entry, Journal
from devpitx.storage.keys import relpath_of_file_key, state_relpath
from devpitx.storage.state import SERIAL_FILE
from devpitx.storage.store import StoreLocked, link_digests

Progress = Callable[[str], None]

# Progress lines during long phases are rate-limited to one per this many seconds.
PROGRESS_SECONDS = 2.0

_ENTRY_NAME = re.compile(r"^(\d{9})\.json$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Digests a file entry may record besides sha256 (mirrors copy e.g. md5 from upstream)
# that are verified too; variable-length ones (shake) cannot be compared as text.
_CHECKED_DIGESTS = frozenset(
    {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b", "blake2s", "sha3_256", "sha3_512"}
)


@dataclass
class FsckReport:
    """What ``check`` found: ``problems`` make the CLI exit 1, ``notes`` are informational."""

    serverdir: Path
    # Last serial present in the journal (-1 for an empty journal).
    serial: int = -1
    entries: int = 0  # journal entries read
    keys: int = 0  # keys in the replayed state
    files: int = 0  # live file entries (content stored: sha256 and last_modified)
    links: int = 0  # +files/ links verified (content and .metadata)
    blobs_checked: int = 0  # blobs read and hashed (checksums=True)
    missing_blobs: int = 0
    bad_checksums: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(serverdir: Path, *, checksums: bool = True, progress: Progress | None = None) -> FsckReport:
    """Check ``serverdir`` without changing it; raises StoreLocked while a server has it open."""
    report = FsckReport(serverdir=serverdir)
    if not (serverdir / "journal").is_dir():
        report.problems.append(f"{serverdir} is not a devpitx server directory (no journal/)")
        return report
    with _SharedLock(serverdir):
        _Checker(serverdir, report, checksums=checksums, progress=progress).run()
    return report


class _SharedLock:
    # Shared, so two checks may run at once while a server (which takes the
    # lock exclusively) can neither be running nor start meanwhile.
    def __init__(self, serverdir: Path) -> None:
        self._path = serverdir / ".lock"
        self._file: Any = None

    def __enter__(self) -> None:
        self._file = open(self._path, "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StoreLocked(
                f"{self._path.parent} is in use by a running devpitx server; stop it before running fsck"
            ) from None

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class _PathsOnlyJournal(Journal):
    # Journal's layout without its constructor, which creates directories.
    def __init__(self, root: Path) -> None:
        self.root = root


class _PathsOnlyBlobs(BlobStore):
    # BlobStore's layout without its constructor, which creates directories.
    def __init__(self, root: Path, files_root: Path) -> None:
        self.root = root
        self._root_text = str(root)
        self.files_root = files_root


def _describe_ranges(numbers: list[int]) -> str:
    parts = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _validate_entry(entry: Entry) -> str | None:
    if type(entry.serial) is not int:
        return "serial is not an integer"
    if not isinstance(entry.at, (int, float)) or isinstance(entry.at, bool):
        return "'at' is not a number"
    if not isinstance(entry.changes, dict):
        return "'changes' is not an object"
    if not all(isinstance(b, str) and _HEX64.match(b) for b in entry.blobs):
        return "'blobs' is not a list of sha256 digests"
    return None


@dataclass(frozen=True)
class _Link:
    """One ``+files/`` link a live file entry calls for."""

    sha256: str
    relpath: str  # of the file entry
    what: str  # "content" or "core metadata"
    recorded: dict[str, Any]  # digests the entry records for this blob


def _role_of(serverdir: Path) -> str | None:
    try:
        return nodeinfo.load(serverdir).role
    except (nodeinfo.ServerDirError, OSError, ValueError, KeyError):
        return None


class _Checker:
    def __init__(self, serverdir: Path, report: FsckReport, *, checksums: bool, progress: Progress | None) -> None:
        self.serverdir = serverdir
        self.report = report
        self.checksums = checksums
        self._progress = progress
        self._last_progress = 0.0
        self.journal = _PathsOnlyJournal(serverdir / "journal")
        self.blobs = _PathsOnlyBlobs(serverdir / "blobs", serverdir / "+files")
        # A replica receives entries before their files: content not here yet is expected.
        self.replica = _role_of(serverdir) == "replica"

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    def note(self, message: str) -> None:
        self.report.notes.append(message)

    def phase(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)
            self._last_progress = time.monotonic()

    def tick(self, message: Callable[[], str]) -> None:
        if self._progress is not None and time.monotonic() - self._last_progress >= PROGRESS_SECONDS:
            self.phase(message())

    def run(self) -> None:
        self.phase("checking journal")
        history = self.check_journal()
        if history is None:
            return
        truth, changed_at = history
        self.report.keys = len(truth)
        self.phase("checking state")
        self.check_state(truth, changed_at)
        self.phase("checking files")
        self.check_files(truth)
        self.check_tmp_dir()
        self.phase(f"done: {len(self.report.problems)} problem(s)")

    # -- journal ------------------------------------------------------------------------------
    def _walk(self, root: Path) -> Iterator[Path]:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                yield Path(dirpath) / name

    def check_journal(self) -> tuple[dict[str, Any], dict[str, int]] | None:
        """Replay the journal into memory: (values, key -> last serial that changed it).

        Returns None when the journal cannot be replayed completely; the state
        and file checks would only repeat the same damage in other words.
        """
        root = self.journal.root
        found: dict[int, Path] = {}
        for path in self._walk(root):
            rel = path.relative_to(root)
            if is_tmp_name(path.name):
                self.note(f"journal/{rel}: interrupted write (removed on next start)")
                continue
            match = _ENTRY_NAME.match(path.name)
            if match is None or self.journal.path_for(int(match.group(1))) != path:
                self.problem(f"journal/{rel}: unexpected file")
                continue
            found[int(match.group(1))] = path
        last = max(found, default=-1)
        self.report.serial = last
        missing = [s for s in range(last + 1) if s not in found]
        if missing:
            self.problem(f"journal has gaps: serial(s) {_describe_ranges(missing)} missing")
        values: dict[str, Any] = {}
        changed_at: dict[str, int] = {}
        replayable = not missing
        for serial in sorted(found):
            self.tick(lambda: f"checked {self.report.entries}/{last + 1} journal entries")
            try:
                entry = Entry.from_bytes(found[serial].read_bytes())
                error = _validate_entry(entry)
            except (ValueError, KeyError, TypeError) as exc:
                error = f"does not parse ({exc})"
            else:
                if error is None and entry.serial != serial:
                    error = f"claims serial {entry.serial}"
            self.report.entries += 1
            if error is not None:
                self.problem(f"journal entry {serial} is unreadable: {error}")
                replayable = False
                continue
            if replayable:
                for key, value in entry.changes.items():
                    if value is None:
                        values.pop(key, None)
                    else:
                        values[key] = value
                    changed_at[key] = serial
        if not replayable:
            self.problem("state and files not checked: the journal cannot be replayed")
            return None
        return values, changed_at

    # -- state ------------------------------------------------------------------------------
    def check_state(self, truth: dict[str, Any], changed_at: dict[str, int]) -> None:
        root = self.serverdir / "state"
        last = self.report.serial
        if not root.is_dir():
            if last >= 0:
                self.note("state/ is missing (the next start replays the whole journal)")
            return
        serial = -1
        serial_file = root / SERIAL_FILE
        if serial_file.exists():
            try:
                serial = int(serial_file.read_text())
            except ValueError:
                self.problem(f"state/{SERIAL_FILE} does not hold a serial")
                return
        elif last >= 0:
            self.note(f"state/{SERIAL_FILE} is missing (the next start replays the whole journal)")
        if serial > last:
            self.problem(f"state/ is at serial {serial} but the journal ends at {last}")
            return
        if serial < last and serial_file.exists():
            self.note(f"state/ is at serial {serial}, the journal at {last} (the next start replays the difference)")

        stored: dict[str, Any] = {}
        for path in self._walk(root):
            rel = path.relative_to(root)
            if is_tmp_name(path.name):
                self.note(f"state/{rel}: interrupted write (removed on next start)")
                continue
            if path == serial_file:
                continue
            if not path.name.endswith(".json"):
                self.problem(f"state/{rel}: unexpected file")
                continue
            self.tick(lambda: f"read {len(stored)} state files")
            try:
                record = json.loads(path.read_bytes())
                key, value = record["key"], record["value"]
                if not isinstance(key, str):
                    raise TypeError("key is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                self.problem(f"state/{rel}: unreadable ({exc})")
                continue
            if PurePosixPath(rel.as_posix()) != state_relpath(key):
                self.problem(f"state/{rel}: holds key {key!r}, which belongs in state/{state_relpath(key)}")
                continue
            stored[key] = value

        # Keys changed after state/.serial are rewritten by the next start's
        # replay; every other key must already hold its replayed value.
        for key in sorted(stored.keys() | truth.keys()):
            if changed_at.get(key, -1) > serial:
                continue
            if key not in truth:
                self.problem(f"state has key {key!r}, which the journal does not have")
            elif key not in stored:
                self.problem(f"state lacks key {key!r}")
            elif stored[key] != truth[key]:
                self.problem(f"state differs from the journal for key {key!r}")

    # -- blobs and +files ----------------------------------------------------------------------
    def expected_links(self, truth: dict[str, Any]) -> dict[str, _Link]:
        """``+files/`` relpath -> what it must link to, by the same rule as the Store."""
        links: dict[str, _Link] = {}
        for key, value in truth.items():
            if not key.startswith("file/"):
                continue
            relpath = relpath_of_file_key(key)
            try:
                self.blobs.relpath_path(relpath)
            except ValueError:
                self.problem(f"file entry {relpath}: unsafe relpath")
                continue
            content, metadata = link_digests(value)
            for digest, link, what in ((content, relpath, "content"), (metadata, f"{relpath}.metadata", "core metadata")):
                if digest is None:
                    continue
                if not isinstance(digest, str) or not _HEX64.match(digest):
                    self.problem(f"file entry {relpath}: malformed {what} sha256 {digest!r}")
                    continue
                recorded = value.get("hashes", {}) if what == "content" else {"sha256": digest}
                links[link] = _Link(digest, relpath, what, recorded)
        return links

    def check_files(self, truth: dict[str, Any]) -> None:
        links = self.expected_links(truth)
        self.report.files = sum(1 for link in links.values() if link.what == "content")
        present: dict[str, bool] = {}
        for link in sorted(links.values(), key=lambda link: (link.relpath, link.what)):
            if link.sha256 not in present:
                present[link.sha256] = self.blobs.has(link.sha256)
            if not present[link.sha256]:
                self.report.missing_blobs += 1
                if self.replica:
                    self.note(f"file entry {link.relpath}: {link.what} not replicated yet (blob {link.sha256})")
                else:
                    self.problem(f"file entry {link.relpath}: {link.what} missing (blob {link.sha256})")
        if self.checksums:
            self.check_checksums(links, present)
        self.check_links(links, present)
        for path in self._walk(self.blobs.root):
            if is_tmp_name(path.name) or not _HEX64.match(path.name) or self.blobs.path_for(path.name) != path:
                self.problem(f"blobs/{path.relative_to(self.blobs.root)}: unexpected file")

    def check_checksums(self, links: dict[str, _Link], present: dict[str, bool]) -> None:
        # Every digest a live entry records is checked, but each blob is read once.
        wanted: dict[str, set[str]] = {}
        for link in links.values():
            if present[link.sha256]:
                algorithms = wanted.setdefault(link.sha256, {"sha256"})
                algorithms.update(name for name in link.recorded if name in _CHECKED_DIGESTS)
        digests: dict[str, dict[str, str]] = {}
        for number, (sha256, algorithms) in enumerate(sorted(wanted.items())):
            self.tick(lambda: f"checksummed {number}/{len(wanted)} files")
            hashers = {name: hashlib.new(name) for name in algorithms}
            with open(self.blobs.path_for(sha256), "rb") as f:
                while chunk := f.read(COPY_CHUNK_BYTES):
                    for hasher in hashers.values():
                        hasher.update(chunk)
            digests[sha256] = {name: hasher.hexdigest() for name, hasher in hashers.items()}
            self.report.blobs_checked += 1
        for link in sorted(links.values(), key=lambda link: (link.relpath, link.what)):
            actual = digests.get(link.sha256)
            if actual is None:
                continue
            # The blob is named by the sha256 the entry records, so a damaged blob always fails that one.
            wrong = sorted(n for n, d in actual.items() if link.recorded.get(n, d) != d)
            if wrong:
                self.report.bad_checksums += 1
                self.problem(f"file entry {link.relpath}: {link.what} does not match its {', '.join(wrong)} digest")

    def check_links(self, links: dict[str, _Link], present: dict[str, bool]) -> None:
        root = self.blobs.files_root
        seen: set[str] = set()
        for path in self._walk(root):
            relpath = path.relative_to(root).as_posix()
            if is_tmp_name(path.name):
                self.problem(f"+files/{relpath}: stray temporary file")
                continue
            link = links.get(relpath)
            if link is None:
                self.problem(f"+files/{relpath}: no live file entry")
                continue
            seen.add(relpath)
            if not present[link.sha256]:
                continue  # reported as missing already
            if not os.path.samefile(path, self.blobs.path_for(link.sha256)):
                self.problem(f"+files/{relpath}: not a link to its {link.what} (blob {link.sha256})")
                continue
            self.report.links += 1
        for relpath, link in sorted(links.items()):
            if relpath not in seen and present[link.sha256]:
                self.problem(f"+files/{relpath}: link missing")

    def check_tmp_dir(self) -> None:
        tmp_dir = self.serverdir / "tmp"
        if tmp_dir.is_dir():
            leftovers = sum(1 for entry in os.scandir(tmp_dir) if not entry.is_dir(follow_symlinks=False))
            if leftovers:
                self.note(f"tmp/ holds {leftovers} leftover file(s) of unfinished uploads (removed on next start)")

"""The materialised current value of every key: in memory for reads, under ``state/`` for restarts.

``state/`` is a view of the journal, never the truth: each file records its
own key (``{"key": ..., "value": ...}``) and ``state/.serial`` the last
serial whose changes are all on disk. Deleting ``state/`` loses nothing;
opening the store replays the journal into it again.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from devpitx.storage.atomic import atomic_write, fsync_dir, is_tmp_name, make_dirs
from devpitx.storage.keys import state_relname, state_relpath

SERIAL_FILE = ".serial"
TMP_DIR = ".tmp"
_EMPTY: frozenset[str] = frozenset()


class StateFileUnreadable(Exception):
    """A key file under state/ is not a complete record."""


class StateTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.serial = -1          # in memory: the last applied serial
        self.disk_serial = -1     # state/.serial: every key file is written up to here
        self._values: dict[str, Any] = {}
        # prefix -> names of the next segment below it, for every prefix that has keys below it.
        # Built on first use, so start-up does not wait for it (60 ms for 30,000 keys), then
        # kept up to date by every change.
        self._children_index: dict[str, set[str]] | None = None

    @property
    def _children(self) -> dict[str, set[str]]:
        if self._children_index is None:
            self._children_index = {}
            for key in self._values:
                self._remember_path(key)
        return self._children_index

    # -- reads (reactor thread only) --------------------------------------------------------
    def get(self, key: str) -> Any | None:
        """The stored value; callers must treat it as read-only."""
        return self._values.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def children(self, prefix: str) -> Iterable[str]:
        """Names of the segments directly below ``prefix`` (a key without trailing slash)."""
        return self._children.get(prefix, _EMPTY)

    def keys_below(self, prefix: str) -> Iterator[str]:
        for name in list(self.children(prefix)):
            key = f"{prefix}/{name}"
            if key in self._values:
                yield key
            yield from self.keys_below(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._values.items())

    def __len__(self) -> int:
        return len(self._values)

    # -- changes --------------------------------------------------------------------------
    def apply_in_memory(self, changes: Mapping[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                if self._values.pop(key, _MISSING) is not _MISSING and self._children_index is not None:
                    self._forget_path(key)
            else:
                if key not in self._values and self._children_index is not None:
                    self._remember_path(key)
                self._values[key] = value

    def persist(self, changes: Mapping[str, Any], *, durable: bool = True) -> None:
        """Write the changed keys' files (``write_serial`` records them as applied).

        ``durable=False`` leaves every fsync to one later ``sync_filesystem``,
        which must come before ``write_serial``.
        """
        if not durable:
            self._persist_unsynced(changes)
            return
        dirs: set[Path] = set()
        for key, value in changes.items():
            path = self.root / state_relpath(key)
            if value is None:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
            else:
                make_dirs(path.parent)
                data = json.dumps({"key": key, "value": value}, separators=(",", ":"), ensure_ascii=False)
                atomic_write(path, data.encode(), sync_dir=False, tmp_dir=self.tmp_dir)
            dirs.add(path.parent)
        for directory in dirs:
            fsync_dir(directory)

    def _persist_unsynced(self, changes: Mapping[str, Any]) -> None:
        """``persist(durable=False)`` on plain strings and with the fewest system calls: a catch-up
        or replay writes tens of thousands of key files in one batch. Each file is still replaced
        atomically (a crash leaves the old or the new content, or the temporary file in tmp/,
        which opening removes); one thread writes at a time, so one temporary name serves all."""
        root = str(self.root)
        tmp = os.path.join(str(self.tmp_dir), ".unsynced-key.tmp")
        known_dirs: set[str] = set()
        for key, value in changes.items():
            path = os.path.join(root, state_relname(key))
            if value is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            parent = os.path.dirname(path)
            if parent not in known_dirs:
                os.makedirs(parent, exist_ok=True)
                known_dirs.add(parent)
            data = json.dumps({"key": key, "value": value}, separators=(",", ":"), ensure_ascii=False)
            with open(tmp, "wb") as f:
                f.write(data.encode())
            os.replace(tmp, path)

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP_DIR

    def remove_stray_tmp_files(self) -> None:
        """Leftovers of interrupted writes: all in state/.tmp/ (and .serial's next to it)."""
        make_dirs(self.tmp_dir)
        for entry in os.scandir(self.tmp_dir):
            os.unlink(entry.path)
        for entry in os.scandir(self.root):
            if entry.is_file() and is_tmp_name(entry.name):
                os.unlink(entry.path)

    def write_serial(self, serial: int) -> None:
        """Record on disk that the key files reflect every serial up to ``serial``."""
        make_dirs(self.root)
        atomic_write(self.root / SERIAL_FILE, str(serial).encode())
        self.disk_serial = serial

    def snapshot_items(self) -> list[tuple[str, Any]]:
        """A copy of all (key, value) pairs, taken on the reactor thread.

        Values are never modified in place (transactions replace them), so the
        copy can be serialised in another thread while commits go on.
        """
        return list(self._values.items())

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path) -> StateTree:
        tree = cls(root)
        make_dirs(root)
        tree.disk_serial = tree.serial = read_serial_file(root)
        tree.remove_stray_tmp_files()
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if is_tmp_name(name):
                    path.unlink()  # an interrupted atomic_write; its key is replayed if needed
                    continue
                if name == SERIAL_FILE or not name.endswith(".json"):
                    continue
                try:
                    record = json.loads(path.read_bytes())
                    tree.apply_in_memory({record["key"]: record["value"]})
                except (ValueError, KeyError, TypeError) as exc:
                    # A key file of a batch written without fsyncs, cut short by a power loss
                    # before the batch's sync (state/.serial had not moved yet).
                    raise StateFileUnreadable(f"state file {path} is unreadable ({exc})") from None
        return tree

    @classmethod
    def empty(cls, root: Path) -> StateTree:
        """No key at all and ``disk_serial`` -1: replaying the whole journal rebuilds and rewrites it."""
        tree = cls(root)
        make_dirs(root)
        tree.remove_stray_tmp_files()
        return tree

    @classmethod
    def from_items(cls, root: Path, serial: int, items: list[list[Any]]) -> StateTree:
        """A tree from a snapshot (state at ``serial``); ``disk_serial`` still comes from state/."""
        tree = cls(root)
        make_dirs(root)
        tree.disk_serial = read_serial_file(root)
        tree.remove_stray_tmp_files()
        tree.serial = serial
        tree._values = {key: value for key, value in items if value is not None}
        return tree

    # -- the children index ---------------------------------------------------------------
    def _remember_path(self, key: str) -> None:
        parent, _, name = key.rpartition("/")
        while True:
            siblings = self._children.setdefault(parent, set())
            if name in siblings:
                return
            siblings.add(name)
            if not parent:
                return
            parent, _, name = parent.rpartition("/")

    def _forget_path(self, key: str) -> None:
        current = key
        while current:
            if current in self._values or self._children.get(current):
                return
            self._children.pop(current, None)
            parent, _, name = current.rpartition("/")
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(name)
                if not siblings:
                    del self._children[parent]
            current = parent


_MISSING = object()


def read_serial_file(root: Path) -> int:
    try:
        return int((root / SERIAL_FILE).read_text())
    except FileNotFoundError:
        return -1

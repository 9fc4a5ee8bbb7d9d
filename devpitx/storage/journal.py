"""The journal: one immutable JSON file per committed serial, the truth of the store.

Layout: ``journal/<serial // 10**6 :03>/<serial // 10**3 % 1000 :03>/<serial:09>.json``
so that no directory holds more than a thousand entries. An entry is
``{"serial": N, "at": <unix time>, "changes": {key: value-or-null}, "blobs": [sha256, ...]}``.
Serials start at 0 and have no gaps; an entry becomes visible (committed) the
moment its final name exists, which ``publish_new`` makes atomic and durable.

A replica catching up writes entries in groups made durable by one
filesystem sync (``append(..., durable=False)`` then ``sync``). A crash
inside a group can leave a torn tail: entries after the last sync that are
empty, partly written or missing. Such a journal is opened with
``torn_tail_possible`` and cut back with ``truncate_after``; the primary
sends the lost entries again.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devpitx.storage.atomic import fsync_dir, is_tmp_name, make_dirs, publish_new, sync_filesystem


class JournalCorrupt(Exception):
    """The journal is not a contiguous sequence of readable entries."""


@dataclass(frozen=True)
class Entry:
    serial: int
    at: float
    changes: dict[str, Any]
    blobs: tuple[str, ...]

    def to_bytes(self) -> bytes:
        # Key order is kept as committed (no sort_keys): replay must rebuild
        # values exactly as the committing process holds them in memory and
        # wrote them to state/, or responses would change across a restart.
        return json.dumps(
            {"serial": self.serial, "at": self.at, "changes": self.changes, "blobs": list(self.blobs)},
            separators=(",", ":"), ensure_ascii=False,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        raw = json.loads(data)
        return cls(serial=raw["serial"], at=raw["at"], changes=raw["changes"], blobs=tuple(raw.get("blobs", ())))


class Journal:
    def __init__(self, root: Path, *, torn_tail_possible: bool = False) -> None:
        """``torn_tail_possible``: a gap at the end is a torn group (see the module doc), not corruption."""
        self.root = root
        self._torn_tail_possible = torn_tail_possible
        make_dirs(self.root)
        self.last_serial = self._find_last_serial()

    def path_for(self, serial: int) -> Path:
        return self.root / f"{serial // 1_000_000:03d}" / f"{serial // 1000 % 1000:03d}" / f"{serial:09d}.json"

    def append(self, entry: Entry, raw: bytes | None = None, *, durable: bool = True) -> None:
        """Publish ``entry``, durably unless ``durable=False``; it must be the next serial.

        ``raw``: the entry's encoding as another node stored it (replicas copy
        the primary's journal byte for byte); by default ``entry.to_bytes()``.
        ``durable=False``: the entry is durable only after the next :meth:`sync`.
        """
        if entry.serial != self.last_serial + 1:
            raise JournalCorrupt(f"serial {entry.serial} does not follow {self.last_serial}")
        path = self.path_for(entry.serial)
        make_dirs(path.parent)
        publish_new(path, entry.to_bytes() if raw is None else raw, durable=durable)
        self.last_serial = entry.serial

    def sync(self) -> None:
        """Make every entry appended so far durable (one filesystem sync for a whole group)."""
        sync_filesystem(self.root)

    def truncate_after(self, serial: int) -> list[int]:
        """Delete every entry after ``serial`` (a torn tail); returns the serials removed."""
        removed = []
        for later in range(serial + 1, self.last_serial + 1):
            try:
                self.path_for(later).unlink()
            except FileNotFoundError:
                continue
            removed.append(later)
        for directory in sorted({self.path_for(s).parent for s in removed}):
            fsync_dir(directory)
        self.last_serial = serial
        return removed

    def read_bytes(self, serial: int) -> bytes:
        try:
            return self.path_for(serial).read_bytes()
        except FileNotFoundError:
            raise KeyError(serial) from None

    def read(self, serial: int) -> Entry:
        data = self.read_bytes(serial)
        try:
            entry = Entry.from_bytes(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalCorrupt(f"journal entry {serial} is unreadable: {exc}") from exc
        if entry.serial != serial:
            raise JournalCorrupt(f"journal entry {serial} claims serial {entry.serial}")
        return entry

    def entries(self, start: int, stop: int | None = None) -> Iterator[Entry]:
        """Entries with start <= serial <= stop (default: the last one)."""
        last = self.last_serial if stop is None else min(stop, self.last_serial)
        for serial in range(max(start, 0), last + 1):
            try:
                yield self.read(serial)
            except KeyError:
                # Below last_serial every serial must exist: this is a gap, not a lookup miss.
                raise JournalCorrupt(f"journal entry {serial} is missing (gap before {last})") from None

    def remove_stray_tmp_files(self) -> list[Path]:
        removed = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_tmp_name(name):
                    path = Path(dirpath) / name
                    path.unlink()
                    removed.append(path)
        return removed

    def _find_last_serial(self) -> int:
        # Walk the highest-numbered directories; names are zero-padded, so
        # lexical order is numeric order.
        def numbered(path: Path, suffix: str = "") -> list[str]:
            return sorted(n for n in os.listdir(path) if not n.startswith(".") and n.endswith(suffix))

        for top in reversed(numbered(self.root)):
            for middle in reversed(numbered(self.root / top)):
                names = numbered(self.root / top / middle, ".json")
                if names:
                    last = int(names[-1][: -len(".json")])
                    # Contiguity is checked cheaply at the tail; fsck checks it all.
                    if last > 0 and not self._torn_tail_possible and not self.path_for(last - 1).exists():
                        raise JournalCorrupt(f"journal has a gap before serial {last}")
                    return last
        return -1

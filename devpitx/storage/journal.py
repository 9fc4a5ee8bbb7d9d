"""The journal: one immutable JSON file per committed serial, the truth of the store.

Layout: ``journal/<serial // 10**6 :03>/<serial // 10**3 % 1000 :03>/<serial:09>.json``
so that no directory holds more than a thousand entries. An entry is
``{"serial": N, "at": <unix time>, "changes": {key: value-or-null}, "blobs": [sha256, ...]}``.
Serials start at 0 and have no gaps; an entry becomes visible (committed) the
moment its final name exists, which ``publish_new`` makes atomic and durable.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devpitx.storage.atomic import is_tmp_name, make_dirs, publish_new


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
    def __init__(self, root: Path) -> None:
        self.root = root
        make_dirs(self.root)
        self.last_serial = self._find_last_serial()

    def path_for(self, serial: int) -> Path:
        return self.root / f"{serial // 1_000_000:03d}" / f"{serial // 1000 % 1000:03d}" / f"{serial:09d}.json"

    def append(self, entry: Entry, raw: bytes | None = None) -> None:
        """Durably publish ``entry``; it must be the next serial.

        ``raw``: the entry's encoding as another node stored it (replicas copy
        the primary's journal byte for byte); by default ``entry.to_bytes()``.
        """
        if entry.serial != self.last_serial + 1:
            raise JournalCorrupt(f"serial {entry.serial} does not follow {self.last_serial}")
        path = self.path_for(entry.serial)
        make_dirs(path.parent)
        publish_new(path, entry.to_bytes() if raw is None else raw)
        self.last_serial = entry.serial

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
                    if last > 0 and not self.path_for(last - 1).exists():
                        raise JournalCorrupt(f"journal has a gap before serial {last}")
                    return last
        return -1

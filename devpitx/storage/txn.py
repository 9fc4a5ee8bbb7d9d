"""WriteTxn: the buffered changes of one write transaction.

A transaction is a synchronous ``with store.write() as tx:`` block on the
reactor thread with no ``await`` inside, so it sees a stable world and needs
no locks. Leaving the block normally commits (one serial, or none if nothing
changed); leaving it by an exception discards every change.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devpitx.storage.store import Store

_DELETED = None


class WriteTxn:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changes: dict[str, Any] = {}
        self._blobs: list[str] = []
        self._after_commit: list[Callable[[int], None]] = []
        self.serial: int | None = None
        self.at = store.now()

    # -- reads see this transaction's own writes ------------------------------------------
    def get(self, key: str) -> Any | None:
        """A private copy of the value, safe to modify and ``set`` back."""
        if key in self._changes:
            value = self._changes[key]
        else:
            value = self._store.get(key)
        return copy.deepcopy(value)

    def exists(self, key: str) -> bool:
        if key in self._changes:
            return self._changes[key] is not _DELETED
        return self._store.get(key) is not None

    def children(self, prefix: str) -> set[str]:
        names = set(self._store.children(prefix))
        below = prefix + "/"
        for key in self._changes:
            if key.startswith(below):
                name = key[len(below):].split("/", 1)[0]
                if self._has_any_below(f"{below}{name}"):
                    names.add(name)
                else:
                    names.discard(name)
        return names

    def _has_any_below(self, key: str) -> bool:
        if self.exists(key):
            return True
        return any(self._has_any_below(f"{key}/{child}") for child in self._store.children(key)) or any(
            k.startswith(key + "/") and v is not _DELETED for k, v in self._changes.items()
        )

    # -- writes ---------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("use delete() to remove a key")
        self._changes[key] = copy.deepcopy(value)

    def delete(self, key: str) -> None:
        self._changes[key] = _DELETED

    def add_blob(self, sha256: str) -> None:
        """Name a blob (already durable in the blob store) in this commit's entry."""
        if sha256 not in self._blobs:
            self._blobs.append(sha256)

    def after_commit(self, callback: Callable[[int], None]) -> None:
        self._after_commit.append(callback)

    # -- used by Store --------------------------------------------------------------------
    def effective_changes(self) -> dict[str, Any]:
        return {k: v for k, v in self._changes.items() if not _same_json(v, self._store.get(k))}

    @property
    def blobs(self) -> Iterable[str]:
        return tuple(self._blobs)

    def run_after_commit(self, serial: int) -> None:
        for callback in self._after_commit:
            callback(serial)


def _same_json(a: Any, b: Any) -> bool:
    """Equality of JSON values that tells ``true`` from ``1`` and ``1`` from ``1.0``.

    ``==`` does not, but their JSON texts differ: such a change must be journaled.
    """
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same_json, a, b))
    return type(a) is type(b) and a == b

"""What a replica reports about its replication in ``+status`` (replication.md §7.2).

One :class:`ReplicationStatus` is shared by the metadata puller (contacts,
answers, applied serials) and file replication (queue passes, errors); the
web layer merges :meth:`ReplicationStatus.fields` into the ``+status``
result. All times are epoch seconds from the injected clock, or None.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store


class ReplicationStatus:
    def __init__(self, clock: IReactorTime, store: Store, node: NodeInfo, primary_url: str) -> None:
        self._clock = clock
        self._store = store
        self._node = node
        self.primary_url = primary_url.rstrip("/")
        self.started_at: float | None = None
        self.contacted_at: float | None = None
        self.updated_at: float | None = None
        self.primary_serial: int | None = None
        self.primary_serial_at: float | None = None
        self.metadata_in_sync_at: float | None = None
        self.init_queue_finished_at: float | None = None
        self.files_in_sync_at: float | None = None
        self.errors: dict[str, dict[str, str]] = {}

    # -- the metadata loop ------------------------------------------------------------------
    def started(self) -> None:
        self.started_at = self._clock.seconds()

    def contacted(self) -> None:
        self.contacted_at = self._clock.seconds()

    def answered(self, remote_serial: int) -> None:
        """A valid 200/202 answer saying the primary is at ``remote_serial``."""
        self.updated_at = self._clock.seconds()
        self._primary_at_least(remote_serial)

    def applied(self, serial: int) -> None:
        self._primary_at_least(serial)

    def _primary_at_least(self, serial: int) -> None:
        if self.primary_serial is None or serial > self.primary_serial:
            self.primary_serial = serial
            self.primary_serial_at = self._clock.seconds()

    def check_metadata_in_sync(self) -> bool:
        """After an answer: note (and tell) whether everything the primary had is applied."""
        if self.primary_serial is not None and self._store.serial >= self.primary_serial:
            self.metadata_in_sync_at = self._clock.seconds()
            return True
        return False

    @property
    def metadata_synced_once(self) -> bool:
        return self.metadata_in_sync_at is not None

    # -- file replication -------------------------------------------------------------------
    def init_queue_finished(self) -> None:
        self.init_queue_finished_at = self._clock.seconds()

    def files_in_sync(self) -> None:
        self.files_in_sync_at = self._clock.seconds()

    def record_error(self, relpath: str, url: str, message: str) -> None:
        self.errors[relpath] = {"url": url, "message": message, "relpath": relpath}

    def clear_error(self, relpath: str) -> None:
        self.errors.pop(relpath, None)

    # -- +status ----------------------------------------------------------------------------
    @property
    def in_sync_at(self) -> float | None:
        moments = (self.metadata_in_sync_at, self.init_queue_finished_at, self.files_in_sync_at)
        if any(moment is None for moment in moments):
            return None
        return max(moment for moment in moments if moment is not None)

    def fields(self) -> dict[str, Any]:
        """The replica keys of ``+status`` (with devpi-server's legacy ``master-*`` spellings)."""
        primary_uuid = self._node.primary_uuid or None
        return {
            "role": "REPLICA",
            "serial": self._store.serial,
            "primary-url": self.primary_url,
            "master-url": self.primary_url,
            "primary-uuid": primary_uuid,
            "master-uuid": primary_uuid,
            "primary-serial": self.primary_serial,
            "master-serial": self.primary_serial,
            "primary-serial-timestamp": self.primary_serial_at,
            "master-serial-timestamp": self.primary_serial_at,
            "replica-started-at": self.started_at,
            "primary-contacted-at": self.contacted_at,
            "master-contacted-at": self.contacted_at,
            "update-from-primary-at": self.updated_at,
            "update-from-master-at": self.updated_at,
            "replica-metadata-in-sync-at": self.metadata_in_sync_at,
            "replica-init-queue-finished-at": self.init_queue_finished_at,
            "replica-files-in-sync-at": self.files_in_sync_at,
            "replica-in-sync-at": self.in_sync_at,
            "replication-errors": {relpath: dict(error) for relpath, error in self.errors.items()},
        }

"""The primary's record of the replicas polling its changelog: ``polling_replicas`` of +status.

replication.md §7.1: keyed by replica uuid, what each replica has (the serial
it asked for minus one), where it asks from, whether a changelog request of
it is open right now and whether it streams. Updated by web/changelog.py at
the start and the end of every authenticated changelog request; only
replicas holding a valid token get here, so the table stays as small as the
set of replicas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime


@dataclass
class _ReplicaPoll:
    remote_ip: str
    serial: int
    open_requests: int          # a replica may have more than one request open (long poll + retry)
    is_streaming: bool
    last_request: float
    outside_url: str | None


class PollingReplicas:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._replicas: dict[str, _ReplicaPoll] = {}

    def request_started(self, replica_uuid: str, *, remote_ip: str, requested_serial: int,
                        is_streaming: bool, outside_url: str | None) -> None:
        """A changelog request for ``requested_serial`` (and on) from ``replica_uuid`` began."""
        known = self._replicas.get(replica_uuid)
        self._replicas[replica_uuid] = _ReplicaPoll(
            remote_ip=remote_ip,
            serial=requested_serial - 1,
            open_requests=(known.open_requests if known is not None else 0) + 1,
            is_streaming=is_streaming,
            last_request=self._clock.seconds(),
            outside_url=outside_url,
        )

    def streamed(self, replica_uuid: str, serial: int) -> None:
        """The entry of ``serial`` went out on a stream: the replica is about to have it."""
        known = self._replicas.get(replica_uuid)
        if known is not None and serial > known.serial:
            known.serial = serial

    def request_ended(self, replica_uuid: str) -> None:
        """The request started last by ``replica_uuid`` was answered (or the replica went away)."""
        known = self._replicas.get(replica_uuid)
        if known is None:
            return
        known.open_requests = max(0, known.open_requests - 1)
        known.last_request = self._clock.seconds()

    def as_status(self) -> dict[str, dict[str, Any]]:
        """The ``polling_replicas`` object of ``+status`` (a fresh copy)."""
        return {
            replica_uuid: {
                "remote-ip": poll.remote_ip,
                "serial": poll.serial,
                "in-request": poll.open_requests > 0,
                "is-streaming": poll.is_streaming,
                "last-request": poll.last_request,
                "outside-url": poll.outside_url,
            }
            for replica_uuid, poll in self._replicas.items()
        }

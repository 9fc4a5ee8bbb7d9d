"""ReplicaService: a replica's replication, started and stopped with the application.

Built by ``cli/tap.makeService`` when the role is ``replica``, from the
opened store, the node information, the replication options and the HTTP
client; it owns the metadata puller (replication.md §5.1), file replication
(§5.2, §5.3) and the status they share (§7.2). The web layer asks it for
:meth:`ReplicaService.status_fields` (merged into ``+status``) and
:meth:`ReplicaService.fetch_now` (a file whose entry is here but whose
content is not yet).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from devpitx.auth.tokens import ReplicaTokens
from devpitx.config import Config
from devpitx.replica.filerepl import FileReplicationSettings, FileReplicator
from devpitx.mirror.pages import MirrorUnavailable
from devpitx.mirror.upstream import discard_body, first_header
from devpitx.model.indexes import Stage
from devpitx.replica.primary_client import PrimaryClient, PrimaryUnreachable
from devpitx.replica.puller import ChangelogPuller, FatalCallback
from devpitx.replica.status import ReplicationStatus
from devpitx.runtime import RunBlocking
from devpitx.storage import nodeinfo
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store

log = Logger()


@dataclass(frozen=True)
class ReplicaSettings:
    """The replication options (replication.md §8) as the replica uses them."""

    primary_url: str                                   # --primary-url, without credentials
    outside_url: str | None = None                     # --outside-url, sent to the primary
    streaming: bool = True                             # not --no-replica-streaming
    file_replication_threads: int = 5
    file_replication_skip_indexes: tuple[str, ...] = ()
    replica_file_search_path: Path | None = None
    hard_links: bool = False
    request_timeout: float = 5.0

    @classmethod
    def from_config(cls, config: Config, primary_url: str) -> ReplicaSettings:
        """``primary_url``: the node's (``--primary-url`` or the one recorded in ``.nodeinfo``)."""
        return cls(primary_url=primary_url, outside_url=config.outside_url, streaming=config.replica_streaming,
                   file_replication_threads=config.file_replication_threads,
                   file_replication_skip_indexes=config.file_replication_skip_indexes,
                   replica_file_search_path=config.replica_file_search_path, hard_links=config.hard_links,
                   request_timeout=config.request_timeout)

    def file_settings(self) -> FileReplicationSettings:
        return FileReplicationSettings(threads=max(0, self.file_replication_threads),
                                       skip_indexes=self.file_replication_skip_indexes,
                                       search_path=self.replica_file_search_path,
                                       hard_links=self.hard_links, request_timeout=self.request_timeout)


class ReplicaService(Service):
    log = Logger()

    def __init__(self, store: Store, node: NodeInfo, settings: ReplicaSettings, *, http: Any,
                 replica_key: bytes, clock: IReactorTime, run_disk: RunBlocking,
                 on_fatal: FatalCallback | None = None, agent: IAgent | None = None) -> None:
        """``agent``: the Agent under ``http``, for requests that skip treq (``PrimaryClient``)."""
        self.store = store
        self.node = node
        self.settings = settings
        self.client = PrimaryClient(http, clock, node, ReplicaTokens(replica_key), settings.primary_url,
                                    outside_url=settings.outside_url, agent=agent)
        self.status = ReplicationStatus(clock, store, node, settings.primary_url)
        self.files = FileReplicator(store, self.client, self.status, clock=clock, run_disk=run_disk,
                                    settings=settings.file_settings())
        self.puller = ChangelogPuller(store, self.client, self.status, clock=clock, run_blocking=run_disk,
                                      streaming=settings.streaming, record_primary_uuid=self._record_primary_uuid,
                                      on_fatal=on_fatal or _log_only, on_in_sync=self.files.metadata_in_sync)
        self._pulling: Deferred[None] | None = None

    def _record_primary_uuid(self, primary_uuid: str) -> None:
        # The same NodeInfo the server answers with: X-Devpi-Primary-Uuid follows at once.
        self.node.primary_uuid = primary_uuid
        nodeinfo.save(self.store.serverdir, self.node)

    def startService(self) -> None:
        super().startService()
        # A replica's serials are the primary's: nothing else may commit from now on.
        self.store.replica = True
        self.store.add_listener(self.files.changed)
        self.status.started()
        self.files.start()
        self._pulling = Deferred.fromCoroutine(self.puller.run())
        self._pulling.addErrback(lambda f: f.trap(CancelledError))
        self._pulling.addErrback(lambda f: self.log.failure("the replication loop ended", f))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.puller.stop()
        self.store.remove_listener(self.files.changed)
        waits: list[Deferred[Any]] = [self.files.stop()]
        if self._pulling is not None:
            pulling, self._pulling = self._pulling, None
            pulling.cancel()
            waits.append(pulling)
        return DeferredList(waits, consumeErrors=True)

    # -- for the web layer -----------------------------------------------------------------------
    def status_fields(self) -> dict[str, Any]:
        """The replica keys of ``+status`` (replication.md §7.2)."""
        return self.status.fields()

    async def mirror_page_via_primary(self, stage: Stage, project: str) -> None:
        """mirror.md §8: have the primary fetch the page of ``project``, then wait (at most
        --request-timeout) until this replica has applied the serial the primary answered with."""
        timeout = self.settings.request_timeout
        try:
            response = await self.client.open_simple_page(stage.user, stage.index, project, timeout=timeout)
        except PrimaryUnreachable as exc:
            raise MirrorUnavailable(504 if exc.timed_out else 502, exc.message) from None
        serial = first_header(response, b"x-devpi-serial")
        discard_body(response)
        if response.code not in (200, 404):
            raise MirrorUnavailable(502, f"received {response.code} from primary for {stage.name}/{project}")
        try:
            wanted = int(serial) if serial is not None else None
        except ValueError:
            wanted = None
        if wanted is None:
            raise MirrorUnavailable(502, f"primary sent no X-Devpi-Serial for {stage.name}/{project}")
        if await self.store.waiter.wait_for_serial(wanted, timeout) is None:
            raise MirrorUnavailable(504, f"serial {wanted} of the primary not replicated after {timeout:g}s")

    def fetch_now(self, relpath: str) -> Deferred[None]:
        """Fires once the content of ``relpath`` (or ``<relpath>.metadata``) is stored; fails
        with ``filerepl.FileFetchFailed`` (code 502 and message) when the primary has none."""
        return Deferred.fromCoroutine(self.files.fetch_now(relpath))


def _log_only(code: int, message: str) -> None:
    log.critical("replication cannot continue (exit code {code} intended): {message}", code=code, message=message)


def exit_after_shutdown(reactor: IReactorCore) -> Callable[[int, str], None]:
    """The production ``on_fatal``: stop the reactor cleanly, then end the process with ``code``.

    twistd has no exit-code API: the process exits from an ``after shutdown``
    trigger, once every service has stopped (the store is closed by then).
    """
    def fatal(code: int, message: str) -> None:
        log.critical("stopping the server (exit code {code}): {message}", code=code, message=message)

        def exit_now() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

        reactor.addSystemEventTrigger("after", "shutdown", exit_now)
        reactor.stop()

    return fatal

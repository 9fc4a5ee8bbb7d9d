"""Server: the collaborators of one running devpitx, and the web resource built on them.

Created once by ``cli/tap.makeService`` (or by tests with fakes): everything
below receives its clock, runners and store from here instead of importing
the reactor.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from devpitx.auth.authkey import LoginTokensWaiter
from devpitx.auth.passwords import Passwords
from devpitx.auth.tokens import LoginTokens, ReplicaTokens
from devpitx.config import Config
from devpitx.mirror.mirrors import Mirrors
from devpitx.mirror.upstream import MirrorSettings
from devpitx.replica.polling import PollingReplicas
from devpitx.runtime import RunBlocking

if TYPE_CHECKING:
    from devpitx.replica.service import ReplicaService
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store
from devpitx.version import DEVPI_SERVER_COMPAT_VERSION, HTTP_API_VERSION
from devpitx.web.identity import RequestIdentity
from devpitx.web.proxy import WriteProxy
from devpitx.web.root import DevpitxSite, make_app
from devpitx.web.routes import Router


class Server:
    def __init__(self, config: Config, store: Store, node: NodeInfo, *, clock: IReactorTime,
                 run_disk: RunBlocking, passwords: Passwords, login_tokens: LoginTokens | LoginTokensWaiter,
                 http: Any = None, replica_tokens: ReplicaTokens | None = None,
                 replica: ReplicaService | None = None) -> None:
        """``login_tokens``: ready ones, or a waiter that gets them once the auth key is derived."""
        self.config = config
        self.store = store
        self.node = node
        self.clock = clock
        self.run_disk = run_disk
        self.passwords = passwords
        if isinstance(login_tokens, LoginTokens):
            login_tokens = LoginTokensWaiter(login_tokens)
        # Requests get them through ``identity.login_tokens()``, which waits if need be.
        self.login_tokens = login_tokens
        self.http = http
        self.started_at = clock.seconds()
        # Replica tokens sign the requests a replica sends to its primary; only a primary
        # accepts them (auth.md §9).
        self.replica_tokens = replica_tokens
        self.polling_replicas = PollingReplicas(clock)
        # On a replica: the replication service (status fields, files fetched on demand).
        self.replica = replica
        self.identity = RequestIdentity(store, passwords, login_tokens, clock, config.restrict_modify,
                                        replica_tokens if node.role == "primary" else None)
        # Without an HTTP client (most in-process tests) mirrors behave as in offline mode.
        # A replica's database changes only through the primary's changelog: its mirrors never
        # fetch (and commit) by themselves; pages come through the primary (mirror.md §8).
        self.mirrors = Mirrors(store, http, clock, run_disk, MirrorSettings(
            request_timeout=config.request_timeout, default_cache_expiry=config.mirror_cache_expiry,
            offline=config.offline_mode or node.role == "replica"),
            via_primary=replica.mirror_page_via_primary if replica is not None else None)
        self.router = Router()
        self._install_areas()

    def _install_areas(self) -> None:
        # Imported here: each area module imports model code, and tests may
        # build a Server with only some areas present during development.
        from devpitx.web import areas
        for area in areas.build_all(self):
            area.install(self.router)

    @property
    def replica_certificate_required(self) -> bool:
        """With ``--ssl-client-ca``, ``/+changelog`` answers only TLS connections that presented a
        client certificate signed by that CA (verified in the handshake, devpitx/tls.py)."""
        return self.config.ssl_client_ca is not None

    @property
    def primary_uuid(self) -> str:
        if self.node.role == "replica":
            return self.node.primary_uuid or ""
        return self.node.uuid

    # (serial, uuid, primary uuid) -> headers: every response asks, and they change only with these.
    _identity_cache: tuple[tuple[int, str, str], dict[bytes, bytes]] | None = None

    def identity_headers(self) -> dict[bytes, bytes]:
        """The headers devpi-server puts on every response (http-api.md §1.2).

        The same dict is returned until the serial or a uuid changes: callers must not modify it.
        """
        key = (self.store.serial, self.node.uuid, self.primary_uuid)
        cached = self._identity_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        serial, uuid, primary_uuid = key
        primary = primary_uuid.encode()
        headers = {
            b"X-Devpi-Api-Version": HTTP_API_VERSION.encode(),
            b"X-Devpi-Server-Version": DEVPI_SERVER_COMPAT_VERSION.encode(),
            b"X-Devpi-Uuid": uuid.encode(),
            b"X-Devpi-Primary-Uuid": primary,
            b"X-Devpi-Master-Uuid": primary,
            b"X-Devpi-Serial": str(serial).encode(),
        }
        self._identity_cache = (key, headers)
        return headers

    def write_proxy(self) -> WriteProxy | None:
        """On a replica, what relays writes to the primary (replication.md §6)."""
        if self.node.role != "replica" or not self.node.primary_url:
            return None
        return WriteProxy(self.node.primary_url, self.http, self.clock, self.store.waiter.wait_for_serial,
                          timeout=self.config.proxy_timeout, configured_outside_url=self.config.outside_url)

    def resource(self) -> IResource:
        return make_app(self.router, self.config.outside_url, self.identity_headers, self.write_proxy()).resource()

    def site(self) -> DevpitxSite:
        return DevpitxSite(
            self.resource(),
            max_body_bytes=self.config.max_request_body_bytes,
            tmp_dir=self.store.blobs.tmp_dir,
            identity_headers=self.identity_headers,
            clock_seconds=self.clock.seconds,
        )


def hostname() -> str:
    return socket.gethostname()

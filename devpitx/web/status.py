"""``GET /+status`` (http-api.md §3.3) and ``GET /+authcheck`` (§3.4).

``+status`` is what ``devpi --version`` and monitoring read; ``+authcheck``
answers nginx ``auth_request`` sub-requests by matching the original URL
against the same route table as real requests.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

import devpitx
from devpitx.auth.acl import ANONYMOUS
from devpitx.model.indexes import all_stages, get_index_config
from devpitx.model.users import user_names
from devpitx.version import DEVPI_SERVER_COMPAT_VERSION, DEVPITX_VERSION
from devpitx.web.api import READ_METHODS, envelope, require_json_view, require_method
from devpitx.web.errors import ApiError
from devpitx.web.negotiate import header, outside_url
from devpitx.web.routes import match_route, split_path

if TYPE_CHECKING:
    from devpitx.server import Server

# Routes that never need authentication (auth check step 2).
_OPEN_ENDPOINTS = frozenset({"api.api", "login.login"})


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store
        self._counted: tuple[int, list[list[Any]]] | None = None

    def install(self, router: Any) -> None:
        router.add("status.status", self.status)
        router.add("status.authcheck", self.authcheck)

    def status(self, request: IRequest) -> bytes:
        require_method(request, *READ_METHODS)
        require_json_view(request)
        server = self._server
        config = server.config
        serial = self._store.serial
        last_commit = self._store.last_commit_at
        now = server.clock.seconds()
        is_replica = server.node.role == "replica"
        result: dict[str, Any] = {
            "serverdir": str(config.serverdir),
            "uuid": server.node.uuid,
            "versioninfo": {"devpi-server": DEVPI_SERVER_COMPAT_VERSION, "devpitx": DEVPITX_VERSION},
            "server-code": str(Path(devpitx.__file__).parent),
            "host": config.host,
            "port": config.port,
            "outside-url": config.outside_url,
            "serial": serial,
            "last-commit-timestamp": last_commit,
            # devpitx has no event processor: whatever a commit implies (caches,
            # simple pages) happens inside the commit, so the "event serial" is
            # always the current serial and always in sync.
            "event-serial": serial,
            "event-serial-timestamp": last_commit,
            "event-serial-in-sync-at": now,
            "metrics": self._metrics(now),
            "role": "REPLICA" if is_replica else "MASTER",
            # Replicas following this server (replication.md §7.1); empty unless it is a primary.
            "polling_replicas": server.polling_replicas.as_status(),
        }
        if server.replica is not None:
            result.update(server.replica.status_fields())     # replication.md §7.2
        return envelope(request, "status", result)

    def _metrics(self, now: float) -> list[list[Any]]:
        return [*self._counts(), ["devpitx_uptime_seconds", "gauge", max(0.0, now - self._server.started_at)]]

    def _counts(self) -> list[list[Any]]:
        """The gauges that only change with a commit, counted once per serial: monitoring and
        replicas waiting for a catch-up poll +status often, and counting walks every project."""
        serial = self._store.serial
        if self._counted is not None and self._counted[0] == serial:
            return self._counted[1]
        stages = all_stages(self._store)
        projects = sum(sum(1 for _name in self._store.children(f"project/{s.user}/{s.index}")) for s in stages)
        counts: list[list[Any]] = [
            ["devpitx_users", "gauge", len(user_names(self._store))],
            ["devpitx_indexes", "gauge", len(stages)],
            ["devpitx_mirror_indexes", "gauge", sum(1 for s in stages if s.is_mirror)],
            ["devpitx_private_projects", "gauge", projects],
        ]
        self._counted = (serial, counts)
        return counts

    async def authcheck(self, request: IRequest) -> bytes:
        require_method(request, *READ_METHODS)
        code = await self._authcheck_code(request)
        request.setResponseCode(code)
        return b""

    async def _authcheck_code(self, request: IRequest) -> int:
        original = header(request, b"x-original-uri") or request.uri.decode("latin-1")
        path = urlsplit(original).path or "/"
        prefix = outside_url(request, self._server.config.outside_url).prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix):] or "/"
        try:
            segments, trailing = split_path(path)
        except UnicodeDecodeError:
            return 403
        method = request.method.decode("ascii", "replace")
        match = match_route(request, method, segments, trailing)
        if match is None:
            return 403
        if match.endpoint in _OPEN_ENDPOINTS:
            return 200
        if match.endpoint == "files.file":
            user, index = match.params["user"], match.params["index"]
            try:
                identity = await self._server.identity.identify(request)
            except ApiError:
                identity = ANONYMOUS
            ixconfig = get_index_config(self._store, user, index)
            if ixconfig is None:
                return 200      # nothing to protect: the request itself answers 404
            allowed = self._server.identity.permitted("pkg_read", identity, url_user=user,
                                                      index_config=ixconfig)
            return 200 if allowed else 403
        # No authorization plugins: everything else is allowed (§3.4 step 4).
        return 200

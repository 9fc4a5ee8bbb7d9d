"""``/+changelog/<serial>[-]``: the replication feed (replication.md §3).

Only a server started with role ``primary`` serves it; standalone servers
answer 403 as devpi-server does. Replication itself is not built yet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.web.errors import ApiError

if TYPE_CHECKING:
    from devpitx.server import Server


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server

    def install(self, router: Any) -> None:
        router.add("changelog.single", self.refuse)
        router.add("changelog.multi", self.refuse)

    def refuse(self, request: IRequest, serial: str) -> bytes:
        raise ApiError(403, "Replication protocol disabled")

"""The list of web areas: one module per area, each with ``Routes(server)`` having ``install(router)``."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devpitx.server import Server

AREA_MODULES = (
    "devpitx.web.api",
    "devpitx.web.login",
    "devpitx.web.status",
    "devpitx.web.users",
    "devpitx.web.indexes",
    "devpitx.web.projects",
    "devpitx.web.simple",
    "devpitx.web.files",
    "devpitx.web.fileops",
    "devpitx.web.upload",
    "devpitx.web.changelog",
)


def build_all(server: Server) -> list[Any]:
    areas = []
    for name in AREA_MODULES:
        module = importlib.import_module(name)
        areas.append(module.Routes(server))
    return areas

"""``.nodeinfo``: this server directory's identity (uuid, role, primary), storage.md §1.2.

Also refuses directories this server cannot open: a devpi-server directory
(``.sqlite``/``.serverversion``) or a devpitx format it does not know.
"""
from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devpitx.storage.atomic import atomic_write

NODEINFO = ".nodeinfo"
FORMAT_FILE = ".devpitx-format"
FORMAT_VERSION = "1"


class ServerDirError(Exception):
    """The directory cannot be used; the message is the fatal error text."""


@dataclass
class NodeInfo:
    uuid: str
    role: str = "standalone"
    primary_url: str | None = None
    primary_uuid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update({"uuid": self.uuid, "role": self.role})
        if self.primary_url:
            data["masterurl"] = self.primary_url
        if self.primary_uuid:
            data["primary-uuid"] = self.primary_uuid
        return data


def is_initialised(serverdir: Path) -> bool:
    return (serverdir / NODEINFO).exists()


def refuse_foreign(serverdir: Path) -> None:
    if (serverdir / ".sqlite").exists() or (serverdir / ".serverversion").exists():
        raise ServerDirError(
            f"The path '{serverdir}' contains devpi-server data; devpitx cannot open it in place. "
            "Use devpi-export there and 'devpitx import' into a new directory."
        )
    format_file = serverdir / FORMAT_FILE
    if format_file.exists() and format_file.read_text().strip() != FORMAT_VERSION:
        raise ServerDirError(f"The path '{serverdir}' has devpitx format {format_file.read_text().strip()!r}; "
                             f"this version reads format {FORMAT_VERSION!r}.")


def load(serverdir: Path) -> NodeInfo:
    refuse_foreign(serverdir)
    path = serverdir / NODEINFO
    if not path.exists():
        raise ServerDirError(f"The path '{serverdir}' contains no devpi-server data, use devpi-init to initialize.")
    raw = json.loads(path.read_text())
    known = {"uuid", "role", "masterurl", "primary-uuid", "master-uuid"}
    role = raw.get("role") or "standalone"
    return NodeInfo(
        uuid=raw["uuid"],
        # devpi-server's directories and older devpitx ones may say "master".
        role="primary" if role == "master" else role,
        primary_url=raw.get("masterurl"),
        primary_uuid=raw.get("primary-uuid") or raw.get("master-uuid"),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def save(serverdir: Path, info: NodeInfo) -> None:
    atomic_write(serverdir / NODEINFO, json.dumps(info.to_json(), indent=2).encode())


def prepare_new(serverdir: Path, role: str = "standalone") -> NodeInfo:
    """Check ``serverdir`` can be initialised and mark its format; the caller commits the
    initial state and only then ``save``s the node info, which is what marks it initialised."""
    refuse_foreign(serverdir)
    if is_initialised(serverdir):
        raise ServerDirError(f"The path '{serverdir}' already contains devpi-server data.")
    serverdir.mkdir(parents=True, exist_ok=True)
    atomic_write(serverdir / FORMAT_FILE, FORMAT_VERSION.encode())
    return NodeInfo(uuid=uuidlib.uuid4().hex, role=role)

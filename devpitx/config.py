"""Config: the frozen, validated server settings built once from the command line.

Nothing below ``cli/`` reads raw options; everything gets a Config.
Option names and meanings follow devpi-server's (spec/cli.md §2.2), so an
operator's scripts work by changing only the command name.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULT_SERVERDIR = "~/.devpitx/server"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 3141
DEFAULT_MAX_REQUEST_BODY_BYTES = 1024 * 1024 * 1024


class ConfigError(Exception):
    """A fatal configuration problem; the message is shown as ``fatal: <message>``."""


@dataclass(frozen=True)
class Config:
    serverdir: Path
    listen: tuple[str, ...]                      # Twisted endpoint strings
    host: str | None = DEFAULT_HOST
    port: int | None = DEFAULT_PORT
    outside_url: str | None = None
    absolute_urls: bool = False
    secretfile: Path | None = None
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    argon2_memory_cost: int = 524288
    argon2_parallelism: int = 8
    argon2_time_cost: int = 16
    restrict_modify: tuple[str, ...] | None = None
    debug: bool = False
    no_root_pypi: bool = False
    root_passwd: str = ""
    root_passwd_hash: str | None = None
    mirror_cache_expiry: int = 1800
    request_timeout: float = 5.0
    offline_mode: bool = False
    threads: int = 4

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> Config:
        serverdir = Path(os.path.expanduser(str(opts.get("serverdir") or DEFAULT_SERVERDIR))).absolute()
        host = opts.get("host") or DEFAULT_HOST
        port = _int(opts.get("port", DEFAULT_PORT), "port")
        listen_opts = list(opts.get("listen") or ())
        if listen_opts and (host != DEFAULT_HOST or port != DEFAULT_PORT):
            raise ConfigError("You can use either --listen or --host/--port, not both together.")
        if listen_opts:
            listen = tuple(listen_to_endpoint(value) for value in listen_opts)
            host_out: str | None = None
            port_out: int | None = None
        else:
            listen = (tcp_endpoint(host, port),)
            host_out, port_out = host, port
        restrict = opts.get("restrict-modify")
        outside_url = opts.get("outside-url") or None
        if outside_url is not None and not re.match(r"^https?://", outside_url):
            raise ConfigError(f"--outside-url must be an http(s) URL, got {outside_url!r}")
        return cls(
            serverdir=serverdir,
            listen=listen,
            host=host_out,
            port=port_out,
            outside_url=outside_url.rstrip("/") if outside_url else None,
            absolute_urls=bool(opts.get("absolute-urls")),
            secretfile=Path(os.path.expanduser(opts["secretfile"])).absolute() if opts.get("secretfile") else None,
            max_request_body_bytes=_int(
                opts.get("max-request-body-size", DEFAULT_MAX_REQUEST_BODY_BYTES), "max-request-body-size"
            ),
            argon2_memory_cost=_int(opts.get("argon2-memory-cost", 524288), "argon2-memory-cost"),
            argon2_parallelism=_int(opts.get("argon2-parallelism", 8), "argon2-parallelism"),
            argon2_time_cost=_int(opts.get("argon2-time-cost", 16), "argon2-time-cost"),
            restrict_modify=tuple(p.strip() for p in restrict.split(",") if p.strip()) if restrict else None,
            debug=bool(opts.get("debug")),
            no_root_pypi=bool(opts.get("no-root-pypi")),
            root_passwd=opts.get("root-passwd") or "",
            root_passwd_hash=opts.get("root-passwd-hash") or None,
            mirror_cache_expiry=_int(opts.get("mirror-cache-expiry", 1800), "mirror-cache-expiry"),
            request_timeout=float(opts.get("request-timeout", 5.0)),
            offline_mode=bool(opts.get("offline-mode")),
            threads=max(1, min(_int(opts.get("threads", 4), "threads"), 64)),
        )


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be an integer, got {value!r}") from None


def tcp_endpoint(host: str, port: int) -> str:
    if host in ("", "*", "0.0.0.0"):
        return f"tcp:{port}"
    escaped = host.strip("[]").replace(":", r"\:")
    return f"tcp:{port}:interface={escaped}"


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(?P<port>\d+)$")


_ENDPOINT_TYPES = frozenset(("tcp", "tcp6", "ssl", "tls", "unix", "systemd", "onion"))


def listen_to_endpoint(value: str) -> str:
    """Accept devpi-server's ``HOST:PORT`` / ``*:PORT`` / ``[::1]:PORT`` or a Twisted endpoint string."""
    if value.split(":", 1)[0].lower() in _ENDPOINT_TYPES:
        return value
    match = _HOST_PORT.match(value)
    if match:
        return tcp_endpoint(match["host"], int(match["port"]))
    return value

"""Config: the frozen, validated server settings built once from the command line.

Nothing below ``cli/`` reads raw options; everything gets a Config.
Option names and meanings follow devpi-server's (spec/cli.md §2.2), so an
operator's scripts work by changing only the command name.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_SERVERDIR = "~/.devpitx/server"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 3141
DEFAULT_MAX_REQUEST_BODY_BYTES = 1024 * 1024 * 1024
DEFAULT_FILE_REPLICATION_THREADS = 5
DEFAULT_PROXY_TIMEOUT_SECONDS = 30.0
# --role values; "master" is the legacy spelling of "primary" and is normalised away here.
ROLES = ("auto", "standalone", "primary", "master", "replica")


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
    # Replication (spec/cli.md §2.2). ``role`` is what was asked for ("master" already
    # normalised to "primary"); the role the node runs with is decided by replica/roles.py.
    role: str = "auto"
    primary_url: str | None = None               # validated: http(s), no credentials, no trailing "/"
    replica_file_search_path: Path | None = None
    hard_links: bool = False
    file_replication_threads: int = DEFAULT_FILE_REPLICATION_THREADS
    file_replication_skip_indexes: tuple[str, ...] = ()
    proxy_timeout: float = DEFAULT_PROXY_TIMEOUT_SECONDS
    replica_streaming: bool = True
    # TLS (DESIGN.md §6, docs/replication.md). Paths only: devpitx/tls.py reads and checks the files.
    ssl_cert: Path | None = None                 # the server's certificate chain: listen with TLS
    ssl_key: Path | None = None
    ssl_client_ca: Path | None = None            # CA of replica certificates: /+changelog requires one
    replica_cert: Path | None = None             # the certificate a replica presents to its primary
    replica_key: Path | None = None
    primary_ca: Path | None = None               # the replica's trust root for the primary's certificate

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
        tls = _tls_paths(opts)
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
            role=_role(opts.get("role") or "auto"),
            primary_url=primary_url_from_options(opts.get("primary-url") or None, opts.get("master-url") or None),
            replica_file_search_path=_existing_path(opts.get("replica-file-search-path") or None,
                                                    "replica-file-search-path"),
            hard_links=bool(opts.get("hard-links")),
            file_replication_threads=_non_negative_int(
                opts.get("file-replication-threads", DEFAULT_FILE_REPLICATION_THREADS), "file-replication-threads"),
            file_replication_skip_indexes=_skip_indexes(opts.get("file-replication-skip-indexes") or ""),
            proxy_timeout=_positive_float(opts.get("proxy-timeout", DEFAULT_PROXY_TIMEOUT_SECONDS), "proxy-timeout"),
            replica_streaming=not opts.get("no-replica-streaming"),
            **tls,
        )


def _tls_paths(opts: Mapping[str, Any]) -> dict[str, Path | None]:
    """The TLS file options as paths; certificates and keys only in pairs."""
    paths: dict[str, Path | None] = {}
    for name in ("ssl-cert", "ssl-key", "ssl-client-ca", "replica-cert", "replica-key", "primary-ca"):
        value = opts.get(name) or None
        paths[name.replace("-", "_")] = Path(os.path.expanduser(value)).absolute() if value else None
    for cert, key in (("ssl-cert", "ssl-key"), ("replica-cert", "replica-key")):
        if (paths[cert.replace("-", "_")] is None) != (paths[key.replace("-", "_")] is None):
            raise ConfigError(f"--{cert} and --{key} go together: give both or neither")
    if paths["ssl_client_ca"] is not None and paths["ssl_cert"] is None:
        raise ConfigError("--ssl-client-ca needs --ssl-cert and --ssl-key: "
                          "client certificates are only verified on TLS connections")
    return paths


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be an integer, got {value!r}") from None


def _non_negative_int(value: Any, name: str) -> int:
    number = _int(value, name)
    if number < 0:
        raise ConfigError(f"--{name} must not be negative, got {number}")
    return number


def _positive_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a number, got {value!r}") from None
    if not number > 0:     # also refuses NaN
        raise ConfigError(f"--{name} must be positive, got {value!r}")
    return number


def _role(value: str) -> str:
    if value not in ROLES:
        raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {value!r}")
    return "primary" if value == "master" else value


def primary_url_from_options(primary_url: str | None, master_url: str | None) -> str | None:
    """``--primary-url`` or its deprecated alias ``--master-url`` (never both), validated."""
    if primary_url and master_url:
        raise ConfigError("Can't use both --master-url and --primary-url")
    url = primary_url or master_url
    return check_primary_url(url) if url else None


def check_primary_url(url: str) -> str:
    """A usable primary URL without its trailing "/", else ``ConfigError``.

    Credentials in the URL are refused rather than stripped: replicas authenticate with
    the shared secret's token, and a password in a URL ends up in logs and in ``.nodeinfo``.
    The message never repeats the URL, so it cannot leak the password either.
    """
    try:
        parts = urlsplit(url)
        has_credentials = parts.username is not None or parts.password is not None
        host = parts.hostname
        _ = parts.port     # raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"--primary-url is not a valid URL: {url!r}") from None
    if has_credentials:
        raise ConfigError("--primary-url must not contain credentials (user:password@host): "
                          "replicas authenticate with the shared --secretfile")
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"--primary-url must be an http(s) URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"--primary-url must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def _existing_path(value: str | None, name: str) -> Path | None:
    if value is None:
        return None
    path = Path(os.path.expanduser(value)).absolute()
    if not path.exists():
        raise ConfigError(f"The path '{path}' given by --{name} doesn't exist.")
    return path


def _skip_indexes(value: str) -> tuple[str, ...]:
    """``all``, index types (``mirror``) and ``user/index`` names; ``all`` stands alone."""
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if "all" in names and len(names) > 1:
        raise ConfigError("--file-replication-skip-indexes: 'all' can't be combined with other values, "
                          f"got {value!r}")
    return names


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

"""The route table of http-api.md §2, in spec order, with its predicates.

The app resource (web/root.py) hands every request to ``Router.resolve``;
URL shapes are matched once here in plain code because the table needs
things a URL map cannot express: first-match-wins, routes that only match
for installer User-Agents or a JSON Accept header, and "matched but no
handler -> 404, never 405".
Handlers are registered by dotted endpoint name by the area classes.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import unquote

from twisted.web.iweb import IRequest

from devpitx.web.errors import FrameworkError, NegotiatedError
from devpitx.web.negotiate import accept_header, is_installer, quality

Result = Union[bytes, Awaitable[bytes], Any]
Handler = Callable[..., Result]
_DIGITS = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Match:
    endpoint: str
    params: dict[str, str]


def _plain(segment: str) -> bool:
    """User, index and project segments: non-empty, no '+' (reserved for server functions)."""
    return bool(segment) and "+" not in segment


def _json_accepted(request: IRequest) -> bool:
    accept = accept_header(request)
    return accept is None or quality(accept, "application/json") > 0


def split_path(path: str) -> tuple[list[str], bool]:
    """Percent-decoded segments of an absolute path, and whether it ended with '/'."""
    trailing = path.endswith("/") and path != "/"
    raw = path.strip("/")
    segments = [unquote(s, errors="strict") for s in raw.split("/")] if raw else []
    return segments, trailing


def match_route(request: IRequest, method: str, segments: list[str], trailing: bool) -> Match | None:
    """First matching route of http-api.md §2.1, or None (-> 404)."""
    n = len(segments)
    s = segments
    if n == 0:
        return Match("root.users", {})
    if s[0] == "+changelog" and n == 2 and not trailing:
        if _DIGITS.match(s[1]):
            return Match("changelog.single", {"serial": s[1]})
        if s[1].endswith("-") and _DIGITS.match(s[1][:-1]):
            return Match("changelog.multi", {"serial": s[1][:-1]})
        return None
    if n == 1 and s[0] == "+status":
        return Match("status.status", {})
    if n == 1 and s[0] == "+api":
        return Match("api.api", {}) if _json_accepted(request) else None
    if n == 2 and s[1] == "+api" and _plain(s[0]):
        return Match("api.api", {"user": s[0]}) if _json_accepted(request) else None
    if n == 3 and s[2] == "+api" and _plain(s[0]) and _plain(s[1]):
        return Match("api.api", {"user": s[0], "index": s[1]}) if _json_accepted(request) else None
    if n == 1 and s[0] == "+authcheck":
        return Match("status.authcheck", {})
    if n == 1 and s[0] == "+login":
        return Match("login.login", {}) if _json_accepted(request) else None
    if n >= 4 and s[2] in ("+e", "+f") and _plain(s[0]) and _plain(s[1]):
        relpath = "/".join(s) + ("/" if trailing else "")
        params = {"user": s[0], "index": s[1], "relpath": relpath, "kind": s[2]}
        # Serving, toxresult upload and deletion are separate areas' concerns.
        if method == "POST":
            return Match("files.post", params)
        if method == "DELETE":
            return Match("files.delete", params)
        if method == "PATCH":
            return Match("files.patch", params)     # yank/unyank (docs/yanking.md)
        return Match("files.file", params)
    if n >= 3 and s[2] == "+simple" and _plain(s[0]) and _plain(s[1]):
        base = {"user": s[0], "index": s[1]}
        if n == 3:
            return Match("simple.list" if trailing else "simple.list_noslash", base)
        if n == 4 and s[3] and "+" not in s[3]:
            return Match("simple.project" if trailing else "simple.project_noslash", {**base, "project": s[3]})
        if n == 5 and s[4] == "refresh" and not trailing and "+" not in s[3]:
            return Match("simple.refresh", {**base, "project": s[3]})
        return None
    if not all(_plain(seg) for seg in s[:3]):
        return None
    if n == 4:
        return Match("projects.version", {"user": s[0], "index": s[1], "project": s[2], "version": s[3]})
    installer_get = method in ("GET", "HEAD") and is_installer(request)
    if n == 2:
        if method in ("POST", "PUSH"):
            # Upload forms and pushes (http-api.md §3.8) share the index URL.
            return Match("upload.post", {"user": s[0], "index": s[1]})
        if installer_get:
            return Match("simple.installer_list", {"user": s[0], "index": s[1]})
        return Match("indexes.index", {"user": s[0], "index": s[1]})
    if n == 3:
        params = {"user": s[0], "index": s[1], "project": s[2]}
        if installer_get:
            return Match("simple.installer_project", params)
        return Match("projects.project", params)
    if n == 1:
        return Match("users.user", {"user": s[0]})
    return None


class Router:
    """Endpoint name -> handler, filled in by each area's ``install``."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, endpoint: str, handler: Handler) -> None:
        if endpoint in self._handlers:
            raise ValueError(f"endpoint {endpoint} registered twice")
        self._handlers[endpoint] = handler

    def handler_for(self, endpoint: str) -> Handler | None:
        return self._handlers.get(endpoint)

    def resolve(self, request: IRequest, path: str) -> tuple[Handler, dict[str, str]]:
        method = request.method.decode("ascii", "replace")
        try:
            segments, trailing = split_path(path)
        except UnicodeDecodeError:
            raise NegotiatedError(400, "invalid percent-encoding in the URL") from None
        if any("\x00" in s or "/" in s for s in segments):
            raise FrameworkError(404, "The requested resource could not be found.")
        match = match_route(request, method, segments, trailing)
        handler = self._handlers.get(match.endpoint) if match else None
        if match is None or handler is None:
            raise FrameworkError(404, "The requested resource could not be found.")
        return handler, match.params

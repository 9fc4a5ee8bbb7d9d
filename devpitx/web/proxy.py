"""Write proxying on a replica (replication.md §6).

A replica's database changes only through the primary's changelog, so every
request that could write (PUT, POST, PATCH, DELETE, PUSH, including
``/+login``) is relayed to the primary: same path and query string, the
client's headers minus ``Host`` and hop-by-hop headers (credentials pass
through: the primary authenticates the end user), the body streamed from the
spooled request body. When the primary accepted the write (status < 400) the
replica waits until it has applied the primary's ``X-Devpi-Serial`` before it
answers, so a client reading from the replica right after its write sees it.
That wait is bounded by ``--proxy-timeout`` (the spec's "improve on"): after
it the primary's answer goes out anyway with an ``X-Devpi-Warning`` header.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from devpitx.web.errors import ApiError
from devpitx.web.negotiate import outside_url

log = Logger()

WRITE_METHODS = frozenset({b"PUT", b"POST", b"PATCH", b"DELETE", b"PUSH"})
# RFC 9110 §7.6.1 plus the ones HTTP/1.1 proxies traditionally drop; Host is the primary's.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade",
})
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length"}
# Set by this server on every response (identity headers) or by the framing of this response.
_NOT_COPIED_BACK = _HOP_BY_HOP | {b"content-length", b"date", b"server"}
PROXY_HEADER = b"X-Devpi-Proxy"


@dataclass(frozen=True)
class WriteProxy:
    """Relays writes to ``primary_url``; ``wait_for_serial(serial, timeout)`` fires once applied."""

    primary_url: str
    http: Any                                   # treq HTTPClient (request(method, url, ...))
    clock: IReactorTime
    wait_for_serial: Callable[[int, float], Deferred[int | None]]
    timeout: float = 30.0
    configured_outside_url: str | None = None

    def applies_to(self, request: IRequest) -> bool:
        return request.method in WRITE_METHODS

    async def relay(self, request: IRequest, path: str) -> bytes:
        """Answer ``request`` (``path``: its path below this server's outside URL) with the primary's answer."""
        _, question, query = request.uri.decode("latin-1").partition("?")
        url = self.primary_url.rstrip("/") + path + question + query
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _NOT_FORWARDED and name.lower() not in _listed_in_connection(request):
                headers.setRawHeaders(name, values)
        content = cast(IO[bytes] | None, getattr(request, "content", None))
        body = None
        if content is not None:
            content.seek(0)
            body = FileBodyProducer(content)
        try:
            response = await self._send(request.method.decode("ascii"), url, headers, body)
            payload: bytes = await _with_timeout(response.content(), self.timeout, self.clock)
        except (TimeoutError, CancelledError):
            raise ApiError(502, f"proxy-write-to-primary {url}: no answer within {self.timeout:g} s") from None
        except ApiError:
            raise
        except Exception as exc:    # transport failures of any kind: the client gets a readable 502
            raise ApiError(502, f"proxy-write-to-primary {url}: {exc}") from None
        code = response.code
        if code < 400:
            await self._wait_until_applied(request, response)
        request.setResponseCode(code, response.phrase if isinstance(response.phrase, bytes) else None)
        dropped = _NOT_COPIED_BACK | _listed_in_connection_header(response.headers)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in dropped:
                request.responseHeaders.setRawHeaders(name, values)
        location = response.headers.getRawHeaders(b"location")
        if location and code in (301, 302, 303, 307, 308):
            request.setHeader(b"location", self._rewrite_location(request, location[-1].decode("latin-1")))
        request.setHeader(PROXY_HEADER, b"replica")
        return payload

    async def _send(self, method: str, url: str, headers: Headers, body: Any) -> Any:
        d = self.http.request(method, url, headers=headers, data=body, allow_redirects=False,
                              timeout=self.timeout)
        return await d

    async def _wait_until_applied(self, request: IRequest, response: Any) -> None:
        values = response.headers.getRawHeaders(b"x-devpi-serial") or []
        try:
            serial = int(values[-1])
        except (IndexError, ValueError):
            return
        applied = await self.wait_for_serial(serial, self.timeout)
        if applied is None:
            log.warn("proxied write: serial {serial} not replicated within {timeout} s", serial=serial,
                     timeout=self.timeout)
            request.setHeader(b"X-Devpi-Warning",
                              f"serial {serial} not yet replicated after {self.timeout:g} s".encode())

    def _rewrite_location(self, request: IRequest, location: str) -> bytes:
        primary = self.primary_url.rstrip("/")
        if location == primary or location.startswith(primary + "/"):
            location = outside_url(request, self.configured_outside_url).base + location[len(primary):]
        return location.encode("latin-1", "replace")


def _listed_in_connection(request: IRequest) -> frozenset[bytes]:
    return _listed_in_connection_header(request.requestHeaders)


def _listed_in_connection_header(headers: Headers) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection") or []:
        listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(listed)


def _with_timeout(d: Deferred[Any], timeout: float, clock: IReactorTime) -> Deferred[Any]:
    return d.addTimeout(timeout, clock)

"""The web entry point: Site and Request classes, the Klein app, error handlers, common headers.

Request bodies are spooled to the server's ``tmp/`` (same filesystem as the
blobs, unlinked at once so a crash leaves no trace) and capped by
``--max-request-body-size``. Twisted's own form parsing is off: uploads are
parsed from the spooled file in a worker thread.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from devpitx.web.errors import ApiError, render_error
from devpitx.web.negotiate import outside_url
from devpitx.web.proxy import WriteProxy
from devpitx.web.routes import Router

log = Logger(namespace="devpitx.web")
_SPOOL_IN_MEMORY_BELOW = 100_000


class DevpitxSite(Site):
    """Carries what requests need before any resource runs: limits, spool dir, identity headers."""

    def __init__(self, resource: IResource, *, max_body_bytes: int, tmp_dir: Path,
                 identity_headers: Callable[[], dict[bytes, bytes]], clock_seconds: Callable[[], float] = time.time,
                 **kwargs: Any) -> None:
        # Twisted's own form parsing would load the whole body into memory (and drop file names).
        super().__init__(resource, requestFactory=DevpitxRequest, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.tmp_dir = tmp_dir
        self.identity_headers = identity_headers
        self.clock_seconds = clock_seconds

    def log(self, request: Request) -> None:  # type: ignore[override]
        """The one access-log line of a request, through twisted.logger.

        Built for cost: the line is formatted here once and the event carries
        it as its only format field, plus plain str/int copies of its parts
        for JSON readers. Logger.info would add the Logger itself
        (serialized as "unpersistable" by the JSON observer) and six format
        fields to flatten; that made logging a quarter of a cached simple
        page's time.
        """
        started = request.started_at if isinstance(request, DevpitxRequest) else None
        duration_ms = (self.clock_seconds() - started) * 1000 if started else 0.0
        address = request.getClientAddress()
        client = getattr(address, "host", "-")
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")
        code = request.code
        length = request.sentLength
        log.observer({
            "log_format": "{line}",
            "line": f'{client} "{method} {uri}" {code} {length} {duration_ms:.1f}ms',
            "log_level": LogLevel.info,
            "log_namespace": log.namespace,
            "log_source": None,
            "log_time": time.time(),
            "client": client, "method": method, "uri": uri, "code": code, "length": length,
            "duration_ms": duration_ms,
        })


class DevpitxRequest(Request):
    _body_bytes = 0
    _refused = False
    started_at: float | None = None

    def _site(self) -> DevpitxSite:
        return cast(DevpitxSite, self.channel.site)  # type: ignore[attr-defined]

    def gotLength(self, length: int | None) -> None:
        site = self._site()
        if length is not None and length > site.max_body_bytes:
            self._refuse_too_large(length)
            return
        if length is not None and length < _SPOOL_IN_MEMORY_BELOW:
            super().gotLength(length)
            return
        # Unnamed temporary file in the server's tmp/: nothing survives a crash,
        # and the upload path can copy it within one filesystem.
        self.content = tempfile.TemporaryFile(dir=site.tmp_dir, prefix="body-")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._site().max_body_bytes:
            self._refuse_too_large(self._body_bytes)
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self, length: int) -> None:
        """Answer 413 before the body arrives and drop the connection (no point reading it)."""
        self._refused = True
        site = self._site()
        message = f"request body of {length} bytes exceeds the limit of {site.max_body_bytes} bytes"
        body = ('{"message": "%s"}' % message).encode()
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in site.identity_headers().items())
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n" + headers
            + b"Content-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()
        self.content = tempfile.TemporaryFile(dir=site.tmp_dir)  # swallow anything still in flight

    def process(self) -> None:
        if self._refused:
            return
        self.started_at = self._site().clock_seconds()
        super().process()


def set_serial(request: IRequest, serial: int) -> None:
    """A write reports the serial it committed (http-api.md §1.2)."""
    request.setHeader(b"X-Devpi-Serial", str(serial).encode())


class App:
    """The web application: a Klein app whose one branch route hands every request to ``dispatch``.

    Routing itself is plain code (routes.py) because the spec's table needs
    first-match-wins and User-Agent/Accept predicates that a URL map cannot
    express; Klein provides the request entry, coroutine handling, error
    handlers and cancelling a handler whose client went away.
    """

    def __init__(self, router: Router, configured_outside_url: str | None,
                 identity_headers: Callable[[], dict[bytes, bytes]], write_proxy: WriteProxy | None = None) -> None:
        self._router = router
        self._write_proxy = write_proxy
        self._configured_outside_url = configured_outside_url
        self._identity_headers = identity_headers
        self.klein = Klein()
        self.klein.route("/", branch=True, strict_slashes=False, endpoint="dispatch")(self.dispatch)
        self.klein.handle_errors(ApiError)(self.api_error)
        self.klein.handle_errors(Exception)(self.crash)

    def resource(self) -> IResource:
        return cast(IResource, self.klein.resource())

    def dispatch(self, request: IRequest) -> Any:
        for name, value in self._identity_headers().items():
            request.setHeader(name, value)
        path = request.path.decode("latin-1")
        prefix = outside_url(request, self._configured_outside_url).prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix):] or "/"
        if self._write_proxy is not None and self._write_proxy.applies_to(request):
            # A replica: writes happen on the primary (replication.md §6).
            relayed = Deferred.fromCoroutine(self._write_proxy.relay(request, path))
            return relayed.addCallback(lambda body: finish_bytes(request, body))
        handler, params = self._router.resolve(request, path)
        result = handler(request, **params)
        if isinstance(result, bytes):
            return finish_bytes(request, result)
        if isinstance(result, Deferred) or isinstance(result, Coroutine):
            d: Deferred[Any] = result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)
            return d.addCallback(lambda body: finish_bytes(request, body) if isinstance(body, bytes) else body)
        return result

    @staticmethod
    def api_error(request: IRequest, failure: Failure) -> bytes:
        err = cast(ApiError, failure.value)
        return finish_bytes(request, render_error(request, err.code, err.message, err.shape, err.headers))

    @staticmethod
    def crash(request: IRequest, failure: Failure) -> bytes:
        log.failure("unhandled error in {method} {uri}", failure,
                    method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"))
        return finish_bytes(request, render_error(request, 500, "internal server error", "framework"))


def make_app(router: Router, configured_outside_url: str | None,
             identity_headers: Callable[[], dict[bytes, bytes]], write_proxy: WriteProxy | None = None) -> App:
    return App(router, configured_outside_url, identity_headers, write_proxy)


def finish_bytes(request: IRequest, body: bytes) -> bytes:
    """Every complete body gets a Content-Length (no chunked encoding, correct HEAD)."""
    request.setHeader(b"content-length", str(len(body)).encode())
    return body

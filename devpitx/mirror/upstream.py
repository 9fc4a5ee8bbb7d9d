"""The HTTP client side of a mirror: requests to an upstream simple index with treq (mirror.md §1, §6).

Everything that leaves the server for an upstream goes through
:class:`Upstream`, so the rules live in one place:

* one ``User-Agent`` naming devpitx and its version, the simple-API
  ``Accept`` header (PEP 691 JSON preferred, HTML as fallback);
* Basic credentials taken from the mirror URL are sent as ``Authorization``
  to the mirror's own origin only (a file hosted elsewhere never sees
  them), are never stored in records and never logged: :class:`MirrorUrl`
  keeps the URL without them and hides the header in its ``repr``;
* every request is bounded by a timeout on the injected clock; cancelling
  it aborts the connection (treq's request Deferred and our body reader
  both cancel the transport);
* transport failures and timeouts become :class:`UpstreamError`; HTTP
  statuses are returned for the caller to judge;
* offline mode (or no HTTP client at all, as in most in-process tests)
  never opens a connection: every request fails like a 503 would.
"""
from __future__ import annotations

import base64
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from devpitx.version import DEVPITX_VERSION

log = Logger()

SIMPLE_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
SIMPLE_ACCEPT = (f"{SIMPLE_JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, "
                 "text/html;q=0.01").encode()
# Generous bounds: a full project list of a large index is tens of megabytes.
MAX_LIST_BYTES = 512 * 1024 * 1024
MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024 * 1024


def user_agent() -> bytes:
    """devpi-server's format (mirror.md §1) with our own product token."""
    python = ".".join(map(str, sys.version_info[:3]))
    return f"devpitx/{DEVPITX_VERSION} (py{python}; {platform.system().lower() or sys.platform})".encode()


def strip_credentials(url: str) -> str:
    """``url`` without ``user:password@`` (and without a fragment)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class MirrorUrl:
    """A mirror's ``mirror_url``, split into the public URL and the secret header."""

    url: str                                                    # directory URL, no credentials, ends in "/"
    authorization: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, mirror_url: str) -> MirrorUrl:
        parts = urlsplit(mirror_url)
        authorization = None
        if "@" in parts.netloc:
            userinfo = parts.netloc.rpartition("@")[0]
            user, _, password = userinfo.partition(":")
            token = f"{unquote(user)}:{unquote(password)}".encode()
            authorization = b"Basic " + base64.b64encode(token)
        url = strip_credentials(mirror_url)
        if not url.endswith("/"):
            url += "/"     # used as a directory URL (model.md §3.3)
        return cls(url, authorization)

    def project_url(self, project: str) -> str:
        return f"{self.url}{quote(project, safe='')}/"

    def auth_for(self, url: str) -> bytes | None:
        """The Authorization value for ``url``: only on the mirror's own origin."""
        if self.authorization is None or _origin(url) != _origin(self.url):
            return None
        return self.authorization


@dataclass(frozen=True)
class MirrorSettings:
    """The server options mirrors follow (cli.md: --request-timeout, --mirror-cache-expiry, --offline-mode)."""

    request_timeout: float = 5.0
    default_cache_expiry: int = 1800
    offline: bool = False

    @property
    def list_timeout(self) -> float:
        """Project lists are big: mirror.md §1 allows them at least 30 s."""
        return max(self.request_timeout, 30.0)

    @property
    def background_timeout(self) -> float:
        """How long a fetch may go on after its waiters gave up (pages and files' headers)."""
        return max(self.request_timeout * 6, 30.0)

    @property
    def retry_after_failure(self) -> float:
        """While an upstream keeps failing, stale answers are served at once and a page is
        retried at most this often (in the background when something is cached)."""
        return max(self.request_timeout * 2, 10.0)


class UpstreamError(Exception):
    """No usable answer: a transport failure, a timeout, or offline mode. ``url`` has no credentials."""

    def __init__(self, message: str, *, url: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.timed_out = timed_out


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class UpstreamPage:
    """A complete small response (project list, project page, metadata file)."""

    status: int
    url: str                 # the final URL after redirects, without credentials
    content_type: str        # media type only, lower case
    body: bytes
    etag: str | None
    serial: int              # X-Pypi-Last-Serial, -1 when missing or not a number
    last_modified: str | None = None


def first_header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def parse_serial(value: str | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


def media_type(response: IResponse) -> str:
    return (first_header(response, b"content-type") or "").split(";")[0].strip().lower()


def final_url(response: IResponse, requested: str) -> str:
    """Where the response came from after redirects (relative links resolve against it)."""
    request = getattr(response, "request", None)
    uri = getattr(request, "absoluteURI", None)
    if isinstance(uri, bytes):
        return strip_credentials(uri.decode("latin-1"))
    return strip_credentials(requested)


class _BodyReader(Protocol):
    """Collects a response body up to a size limit; cancelling aborts the connection."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            # The body's transport is an IPushProducer: stopping it drops the connection.
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._max_bytes:
            self._abort()
            self.done.errback(BodyTooLarge(f"response body exceeds {self._max_bytes} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: no Content-Length and the server closed the connection,
            # which is how HTTP/1.0-style responses end.
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_body(response: IResponse, max_bytes: int) -> Deferred[bytes]:
    reader = _BodyReader(max_bytes)
    response.deliverBody(reader)
    return reader.done


class Upstream:
    """treq requests to upstream indexes, bounded by time, with the mirror's credentials."""

    def __init__(self, http: Any | None, clock: IReactorTime, *, offline: bool = False) -> None:
        self._http = http
        self._clock = clock
        self.offline = offline or http is None
        self._user_agent = user_agent()
        self.requests_sent = 0

    def _headers(self, url: str, mirror: MirrorUrl | None, accept: bytes | None,
                 etag: str | None) -> dict[bytes, list[bytes]]:
        headers = {b"User-Agent": [self._user_agent]}
        if accept is not None:
            headers[b"Accept"] = [accept]
        if etag:
            headers[b"If-None-Match"] = [etag.encode("latin-1", "replace")]
        auth = mirror.auth_for(url) if mirror is not None else None
        if auth is not None:
            headers[b"Authorization"] = [auth]
        return headers

    def _refuse_offline(self, url: str) -> None:
        if self.offline:
            raise UpstreamError(f"offline mode: not contacting {url}", url=url)

    async def _send(self, url: str, headers: dict[bytes, list[bytes]]) -> IResponse:
        self.requests_sent += 1
        log.debug("upstream GET {url}", url=url)
        assert self._http is not None
        try:
            response: IResponse = await self._http.request("GET", url, headers=headers, unbuffered=True,
                                                           allow_redirects=True)
        except CancelledError:
            raise
        except Exception as exc:
            raise UpstreamError(f"error getting {url}: {describe_error(exc)}", url=url) from None
        return response

    def _bounded(self, coro: Any, timeout: float, url: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred.fromCoroutine(coro)
        d.addTimeout(timeout, self._clock)

        def timed_out(failure: Failure) -> Failure:
            if failure.check(TimeoutError):
                return Failure(UpstreamError(f"timeout after {timeout:g}s getting {url}", url=url,
                                             timed_out=True))
            return failure

        return d.addErrback(timed_out)

    async def fetch_page(self, url: str, mirror: MirrorUrl | None, *, timeout: float,
                         etag: str | None = None, accept: bytes | None = SIMPLE_ACCEPT,
                         max_bytes: int = MAX_PAGE_BYTES) -> UpstreamPage:
        """GET ``url`` and its whole body within ``timeout`` seconds (any status is returned)."""
        url = strip_credentials(url)
        self._refuse_offline(url)
        headers = self._headers(url, mirror, accept, etag)

        async def fetch() -> UpstreamPage:
            response = await self._send(url, headers)
            try:
                body = await read_body(response, max_bytes)
            except CancelledError:
                raise
            except Exception as exc:
                raise UpstreamError(f"error reading {url}: {describe_error(exc)}", url=url) from None
            return UpstreamPage(
                status=response.code,
                url=final_url(response, url),
                content_type=media_type(response),
                body=body,
                etag=first_header(response, b"etag"),
                serial=parse_serial(first_header(response, b"x-pypi-last-serial")),
                last_modified=first_header(response, b"last-modified"),
            )

        page: UpstreamPage = await self._bounded(fetch(), timeout, url)
        return page

    async def open_file(self, url: str, mirror: MirrorUrl | None, *, timeout: float) -> IResponse:
        """GET ``url`` and return once the headers are in; the body is the caller's to read."""
        url = strip_credentials(url)
        self._refuse_offline(url)
        headers = self._headers(url, mirror, None, None)
        response: IResponse = await self._bounded(self._send(url, headers), timeout, url)
        return response


def describe_error(exc: BaseException) -> str:
    """One line for a transport error (upstreams, a replica's primary)."""
    # ResponseFailed/ResponseNeverReceived wrap a list of Failures; show the first reason.
    reasons = getattr(exc, "reasons", None)
    if reasons:
        first = reasons[0]
        value = getattr(first, "value", first)
        return f"{type(value).__name__}: {value}"
    return f"{type(exc).__name__}: {exc}"


def discard_body(response: IResponse) -> None:
    """Drop an answer's body unread (stopping its transport drops the connection: not reused)."""
    response.deliverBody(_Discard())


class _Discard(Protocol):
    def connectionMade(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        pass


# -- production wiring (cli/tap.py) ----------------------------------------------------------
def ca_bundle_path() -> str | None:
    """``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` if set and existing (mirror.md §1)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and os.path.isfile(value):
            return value
    return None


@implementer(IPolicyForHTTPS)
class LazyTrustPolicy:
    """The TLS policy for upstream connections, built at the first HTTPS connection: loading
    a CA bundle takes a noticeable part of start-up, and many servers never mirror over HTTPS."""

    def __init__(self) -> None:
        self._policy: IPolicyForHTTPS | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        if self._policy is None:
            self._policy = trust_policy()
        return self._policy.creatorForNetloc(hostname, port)


def trust_policy() -> IPolicyForHTTPS:
    """Verify TLS against the CA bundle named in the environment, else the system's."""
    bundle = ca_bundle_path()
    if bundle is None:
        return BrowserLikePolicyForHTTPS()
    with open(bundle, "rb") as f:
        pem = f.read()
    certificates = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                    for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certificates))


def make_http_client(reactor: Any, tls_policy: IPolicyForHTTPS | None = None) -> Any:
    """A treq client with a persistent connection pool (page fetches reuse connections);
    ``tls_policy`` defaults to verifying upstreams against the CA bundle rules above."""
    return HTTPClient(make_http_agent(reactor, tls_policy))


def make_http_agent(reactor: Any, tls_policy: IPolicyForHTTPS | None = None) -> Agent:
    """The Agent under ``make_http_client``: for callers that make thousands of plain
    requests and can skip treq's per-request work (URL parsing, cookies, decoders)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    pool.cachedConnectionTimeout = 120
    # Idle kept-alive connections would otherwise outlive the service on shutdown.
    reactor.addSystemEventTrigger("before", "shutdown", pool.closeCachedConnections)
    agent: Agent = Agent.usingEndpointFactory(reactor, ReusedEndpoints(reactor, tls_policy or LazyTrustPolicy()),
                                              pool=pool)
    return agent


@implementer(IAgentEndpointFactory)
class ReusedEndpoints:
    """Twisted's standard endpoints (TCP for http, TLS over TCP for https), one per host and port.

    The Agent asks for an endpoint on every request, even when the pool hands
    it a kept-alive connection; building a new one each time showed in the
    profile of a replica fetching thousands of files from its primary.
    """

    def __init__(self, reactor: Any, tls_policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            endpoint = self._make(uri)
            self._made[key] = endpoint
        return endpoint

    def _make(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        tcp = HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), tcp)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")

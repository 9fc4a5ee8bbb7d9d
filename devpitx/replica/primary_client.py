"""The replica's requests to its primary: the headers of replication.md §2.2 on every request.

Every request carries the replica's uuid, the primary uuid it has recorded
(``""`` before the first contact, so a replica never silently follows a
different primary), its outside URL when configured, a fresh bearer token
(auth.md §9: valid 37.6 s; the signature covers whole seconds, so one token
serves every request within the same second) and a ``devpi-replica``
User-Agent. Redirects are not followed for the changelog: a primary that
redirects is misconfigured, and following it could hand the token to
another host. Requests that follow no redirects go straight to the Agent
when one is given (file replication makes thousands: treq's per-request
URL parsing, cookie jar and decoder wrapping cost more than the request). Transport failures and timeouts become
:class:`PrimaryUnreachable`; HTTP statuses are returned for the caller to
judge. Bodies are the caller's to read (``unbuffered``), so a changelog
stream is applied while it arrives.
"""
from __future__ import annotations

import platform
import sys
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from devpitx.auth.tokens import ReplicaTokens
from devpitx.mirror.upstream import describe_error
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.version import DEVPITX_VERSION

STREAM_TYPE = "application/x-devpitx-changes+jsonl"
LIST_TYPE = "application/json"
STREAM_ACCEPT = f"{STREAM_TYPE}, {LIST_TYPE}; q=0.9".encode()
LIST_ACCEPT = LIST_TYPE.encode()
# replication.md §5.1: a little longer than the primary's 30 s long-poll.
CHANGELOG_TIMEOUT_SECONDS = 37.5


def replica_user_agent() -> bytes:
    """``devpi-replica/<version> (py<python>; <system>)``, the format of mirror.md §1."""
    python = ".".join(map(str, sys.version_info[:3]))
    return f"devpi-replica/{DEVPITX_VERSION} (py{python}; {platform.system().lower() or sys.platform})".encode()


class PrimaryUnreachable(Exception):
    """No HTTP answer from the primary: a transport failure or a timeout."""

    def __init__(self, message: str, *, url: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.timed_out = timed_out


class PrimaryClient:
    """treq requests to the primary at ``primary_url`` on behalf of the replica ``node``."""

    log = Logger()

    def __init__(self, http: Any, clock: IReactorTime, node: NodeInfo, tokens: ReplicaTokens,
                 primary_url: str, *, outside_url: str | None = None, agent: IAgent | None = None) -> None:
        self._http = http
        self._agent = agent
        self._clock = clock
        self._node = node
        self._tokens = tokens
        self.primary_url = primary_url.rstrip("/")
        self._outside_url = outside_url
        self._user_agent = replica_user_agent()
        self._token: tuple[int, str] | None = None     # (second, token): identical within a second
        self._file_headers_made: tuple[tuple[str, str | None], Headers] | None = None

    @property
    def node(self) -> NodeInfo:
        return self._node

    def headers(self, *, accept: bytes | None = None, filerepl: bool = False) -> dict[bytes, list[bytes]]:
        """The §2.2 headers, with a token made now (the primary allows 37.6 s)."""
        expected = (self._node.primary_uuid or "").encode()
        token = self._fresh_token()
        headers = {
            b"User-Agent": [self._user_agent],
            b"X-Devpi-Replica-Uuid": [self._node.uuid.encode()],
            b"X-Devpi-Expected-Primary-Id": [expected],
            b"X-Devpi-Expected-Master-Id": [expected],
            b"Authorization": [b"Bearer " + token.encode()],
        }
        if self._outside_url:
            headers[b"X-Devpi-Replica-Outside-Url"] = [self._outside_url.encode()]
        if accept is not None:
            headers[b"Accept"] = [accept]
        if filerepl:
            headers[b"X-Devpi-Replica-Filerepl"] = [b"YES"]
        return headers

    def _file_headers(self) -> Headers:
        """``headers(filerepl=True)`` as one Headers object per token (a second): file replication
        sends thousands of requests (the Agent copies the object before it adds to it)."""
        key = (self._fresh_token(), self._node.primary_uuid)
        if self._file_headers_made is None or self._file_headers_made[0] != key:
            self._file_headers_made = (key, Headers(self.headers(filerepl=True)))
        return self._file_headers_made[1]

    def _fresh_token(self) -> str:
        now = self._clock.seconds()
        if self._token is None or self._token[0] != int(now):
            self._token = (int(now), self._tokens.issue(self._node.uuid, now))
        return self._token[1]

    def changelog_url(self, serial: int, *, initial: bool) -> str:
        return f"{self.primary_url}/+changelog/{serial}-" + ("?initial_fetch" if initial else "")

    def file_url(self, relpath: str) -> str:
        return f"{self.primary_url}/{quote(relpath, safe='/+!~')}"

    async def open_changelog(self, serial: int, *, initial: bool, streaming: bool) -> IResponse:
        """GET ``/+changelog/{serial}-``; returns once the headers are in (the long-poll may hold them)."""
        url = self.changelog_url(serial, initial=initial)
        headers = self.headers(accept=STREAM_ACCEPT if streaming else LIST_ACCEPT)
        return await self._get(url, headers, timeout=CHANGELOG_TIMEOUT_SECONDS, follow_redirects=False)

    async def open_file(self, relpath: str, *, timeout: float, follow_redirects: bool = False) -> IResponse:
        """GET ``<primary>/<relpath>`` as file replication does; returns once the headers are in."""
        return await self._get(self.file_url(relpath), self._file_headers(), timeout=timeout,
                               follow_redirects=follow_redirects)

    async def open_simple_page(self, user: str, index: str, project: str, *, timeout: float) -> IResponse:
        """GET the primary's ``/U/I/+simple/P/`` (JSON): the primary brings its mirror record up to
        date and commits it; the answer's X-Devpi-Serial says which serial holds it (mirror.md §8)."""
        url = f"{self.primary_url}/{quote(user)}/{quote(index)}/+simple/{quote(project)}/"
        headers = self.headers(accept=b"application/vnd.pypi.simple.v1+json")
        return await self._get(url, headers, timeout=timeout, follow_redirects=False)

    async def _get(self, url: str, headers: dict[bytes, list[bytes]] | Headers, *, timeout: float,
                   follow_redirects: bool) -> IResponse:
        async def send() -> IResponse:
            try:
                response: IResponse
                if self._agent is not None and not follow_redirects:
                    response = await self._agent.request(
                        b"GET", url.encode("ascii"), headers if isinstance(headers, Headers) else Headers(headers))
                else:
                    response = await self._http.request(
                        "GET", url, headers=headers, unbuffered=True, allow_redirects=follow_redirects)
            except CancelledError:
                raise
            except Exception as exc:
                raise PrimaryUnreachable(f"error getting {url}: {describe_error(exc)}", url=url) from None
            return response

        d: Deferred[IResponse] = Deferred.fromCoroutine(send())
        d.addTimeout(timeout, self._clock)

        def timed_out(failure: Failure) -> Failure:
            if failure.check(TimeoutError):
                return Failure(PrimaryUnreachable(f"timeout after {timeout:g}s getting {url}", url=url,
                                                  timed_out=True))
            return failure

        d.addErrback(timed_out)
        return await d


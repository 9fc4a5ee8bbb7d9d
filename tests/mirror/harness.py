"""An in-process devpitx whose mirror talks to a :class:`FakeUpstream` through StubTreq.

Everything runs on one ``task.Clock``: timeouts fire when a test advances
it, and :meth:`MirrorCase.pump` moves bytes between the client, the server
and the upstream until nothing moves any more. The server's HTTP client only
knows ``http://upstream.example``: any other URL (the default mirror URL in
particular) is recorded and fails the test in ``tearDown``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse
import treq
from treq.testing import StubTreq

from devpitx.auth.passwords import Passwords
from devpitx.auth.tokens import LoginTokens
from devpitx.cli.admin import init_serverdir
from devpitx.config import Config
from devpitx.runtime import run_inline
from devpitx.server import Server
from devpitx.storage import nodeinfo
from devpitx.storage.keys import index_key, user_key
from devpitx.storage.store import Store
from tests.helpers.testserver import BASE, TEST_AUTH_KEY, cheap_hash
from tests.mirror.fake_upstream import FakeUpstream
from tests.web.fixtures_records import use_clock_cooperator

T = TypeVar("T")

UPSTREAM_HOST = "upstream.example"
MIRROR_URL = f"http://{UPSTREAM_HOST}/simple/"
PIP_UA = 'pip/24.0 {"ci":null}'
PIP_JSON = {"User-Agent": PIP_UA, "Accept": "application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"}
PIP_HTML = {"User-Agent": PIP_UA, "Accept": "text/html"}
BROWSER = {"User-Agent": "Mozilla/5.0", "Accept": "text/html"}


class RoutingHTTP:
    """treq's request API, answering only for the fake upstream's host."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.stub = StubTreq(upstream)
        self.refused: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        host = urlsplit(url).hostname
        if host != UPSTREAM_HOST:
            self.refused.append(url)
            raise AssertionError(f"test server tried to contact {url}")
        return cast(Deferred[Any], cast(Any, self.stub).request(method, url, **kwargs))

    def flush(self) -> None:
        self.stub.flush()


def make_mirror_server(directory: str, clock: Clock, http: Any, **config: Any) -> Server:
    serverdir = Path(directory)
    if not clock.seconds():
        clock.advance(1_700_000_000)
    init_serverdir(serverdir, no_root_pypi=True, hasher=cheap_hash, make_secret=False)
    store = Store.open(serverdir, clock)
    cfg = Config(serverdir=serverdir, listen=("tcp:0",), **config)
    return Server(cfg, store, nodeinfo.load(serverdir), clock=clock, run_disk=run_inline,
                  passwords=Passwords(run_inline, clock=clock, hasher=cheap_hash),
                  login_tokens=LoginTokens(TEST_AUTH_KEY), http=http)


class MirrorCase(SynchronousTestCase):
    """root/pypi mirrors the fake upstream; ``u/dev`` has it as base."""

    request_timeout = 5.0

    def setUp(self) -> None:
        self.clock = Clock()
        use_clock_cooperator(self, self.clock)
        self.upstream = FakeUpstream()
        self.routing = RoutingHTTP(self.upstream)
        self.server = make_mirror_server(self.mktemp(), self.clock, self.routing,
                                         request_timeout=self.request_timeout, **self.config())
        self.http = StubTreq(self.server.resource())
        self.set_index("root", "pypi", {"type": "mirror", "volatile": False, "mirror_url": MIRROR_URL,
                                         "title": "PyPI", **self.mirror_config()})
        self.set_index("u", "dev", {"type": "stage", "volatile": True, "bases": ["root/pypi"],
                                    "acl_upload": ["u"], "mirror_whitelist": [],
                                    "mirror_whitelist_inheritance": "intersection"})

    def tearDown(self) -> None:
        self.assertEqual(self.routing.refused, [], "the mirror contacted a host other than the fake upstream")

    def config(self) -> dict[str, Any]:
        return {}

    def mirror_config(self) -> dict[str, Any]:
        return {}

    def set_index(self, user: str, index: str, config: dict[str, Any]) -> None:
        with self.server.store.write() as tx:
            if tx.get(user_key(user)) is None:
                tx.set(user_key(user), {"username": user, "created": "2024-01-01T00:00:00Z"})
            tx.set(index_key(user, index), config)

    # -- driving ---------------------------------------------------------------------------------
    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self.clock.advance(0)
            self.routing.flush()
            self.http.flush()

    def start(self, method: str, path: str, headers: dict[str, str] | None = None) -> Deferred[IResponse]:
        d = cast(Any, self.http).request(method, BASE + path, headers=headers or {}, allow_redirects=False)
        self.pump()
        return cast(Deferred[IResponse], d)

    def finish(self, d: Deferred[T], rounds: int = 2000) -> T:
        results: list[T | Failure] = []
        d.addBoth(results.append)
        for _ in range(rounds):
            if results:
                break
            self.pump(1)
        else:
            raise AssertionError("no result")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        response = self.finish(self.start(method, path, headers))
        return response, self.body(response)

    def body(self, response: IResponse) -> bytes:
        return self.finish(treq.content(response))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        return self.request("GET", path, headers)

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        response, body = self.get(path, headers or PIP_JSON)
        self.assertEqual(response.code, 200, body)
        return json.loads(body)

    def upstream_paths(self, prefix: str = "") -> list[str]:
        return [p for p in self.upstream.requests if p.startswith(prefix)]


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None

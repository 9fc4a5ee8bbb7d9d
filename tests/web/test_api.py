"""Tests for the JSON envelope helpers and ``GET [/U[/I]]/+api`` (http-api.md §1.4, §3.1).

``ServerTestCase`` is the in-process harness the account/index route tests share.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from devpitx.server import Server
from devpitx.storage.keys import user_key
from devpitx.web.api import FEATURES, MAX_JSON_BODY_BYTES
from tests.helpers.testserver import (
    BASE,
    basic_auth,
    cheap_hash,
    devpi_auth,
    make_test_server,
    stub_client,
)

JSON_ACCEPT = {"Accept": "application/json"}


@dataclass(frozen=True)
class Reply:
    code: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    @property
    def message(self) -> str:
        message = self.json["message"]
        assert isinstance(message, str)
        return message


class ServerTestCase(SynchronousTestCase):
    """A server in a temp dir driven by StubTreq; everything completes synchronously."""

    restrict_modify: tuple[str, ...] | None = None
    root_password = "rootpw"

    def setUp(self) -> None:
        self.clock = Clock()
        options: dict[str, Any] = {}
        if self.restrict_modify is not None:
            options["restrict_modify"] = self.restrict_modify
        self.server: Server = make_test_server(self.temp_dir(), clock=self.clock,
                                               root_password=self.root_password, **options)
        self.http = stub_client(self.server)
        self.addCleanup(self.server.store.close)

    def seed_users(self, *credentials: tuple[str, str]) -> None:
        """Users written straight to the store (e.g. where only a restrict-modify admin could create them)."""
        with self.server.store.write() as tx:
            for name, password in credentials:
                tx.set(user_key(name), {"pwhash": cheap_hash(password), "created": "2024-01-01T00:00:00Z"})

    def temp_dir(self) -> str:
        # Not trial's mktemp(): that leaves directories in the working directory.
        path = tempfile.mkdtemp(prefix="devpitx-test-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                auth: tuple[str, str] | None = None, basic: tuple[str, str] | None = None,
                headers: dict[str, str] | None = None, accept: str | None = "application/json") -> Reply:
        all_headers: dict[str, str] = {}
        if accept is not None:
            all_headers["Accept"] = accept
        if auth is not None:
            all_headers.update(devpi_auth(*auth))
        if basic is not None:
            all_headers.update(basic_auth(*basic))
        all_headers.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.http.request(method, BASE + path, data=data, headers=all_headers)  # type: ignore[attr-defined]
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        flat = {name.decode().lower(): values[-1].decode("latin-1")
                for name, values in response.headers.getAllRawHeaders()}
        return Reply(response.code, flat, content)

    # -- fixtures through the API, as a client would do it ---------------------------------
    def add_user(self, name: str, password: str = "secret", **info: Any) -> None:
        reply = self.request("PUT", f"/{name}", {"password": password, **info})
        self.assertEqual(reply.code, 201, reply.body)

    def login(self, name: str, password: str = "secret") -> tuple[str, str]:
        """devpi-client's credentials after ``devpi login``: (user, token)."""
        reply = self.request("POST", "/+login", {"user": name, "password": password})
        self.assertEqual(reply.code, 200, reply.body)
        return name, reply.json["result"]["password"]

    def root(self) -> tuple[str, str]:
        return ("root", self.root_password)

    def add_index(self, user: str, index: str, password: str = "secret", **config: Any) -> dict[str, Any]:
        reply = self.request("PUT", f"/{user}/{index}", config, auth=(user, password))
        self.assertEqual(reply.code, 200, reply.body)
        result: dict[str, Any] = reply.json["result"]
        return result

    def assertUnchanged(self, serial: int) -> None:
        self.assertEqual(self.server.store.serial, serial)


class ApiTests(ServerTestCase):
    def test_root_api_anonymous(self) -> None:
        reply = self.request("GET", "/+api")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.headers["content-type"], "application/json")
        self.assertEqual(reply.json, {"type": "apiconfig", "result": {
            "login": f"{BASE}/+login",
            "authstatus": ["noauth", "", []],
            "features": sorted(FEATURES),
        }})

    def test_features_are_exactly_the_four(self) -> None:
        features = self.request("GET", "/+api").json["result"]["features"]
        self.assertEqual(features, ["push-no-docs", "push-only-docs", "push-register-project",
                                    "server-keyvalue-parsing"])

    def test_authstatus_with_password_and_token(self) -> None:
        self.add_user("alice")
        by_password = self.request("GET", "/+api", auth=("alice", "secret")).json["result"]
        self.assertEqual(by_password["authstatus"], ["ok", "alice", []])
        by_token = self.request("GET", "/+api", auth=self.login("alice")).json["result"]
        self.assertEqual(by_token["authstatus"], ["ok", "alice", []])
        by_basic = self.request("GET", "/+api", basic=("alice", "secret")).json["result"]
        self.assertEqual(by_basic["authstatus"], ["ok", "alice", []])

    def test_bad_or_expired_credentials_are_noauth(self) -> None:
        self.add_user("alice")
        user, token = self.login("alice")
        self.assertEqual(self.request("GET", "/+api", auth=("alice", "wrong")).json["result"]["authstatus"],
                         ["noauth", "", []])
        self.clock.advance(36001)
        self.assertEqual(self.request("GET", "/+api", auth=(user, token)).json["result"]["authstatus"],
                         ["noauth", "", []])

    def test_replica_name_with_password_is_noauth_not_an_error(self) -> None:
        reply = self.request("GET", "/+api", auth=("+replica", "x"))
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json["result"]["authstatus"], ["noauth", "", []])

    def test_user_api_does_not_check_the_user(self) -> None:
        reply = self.request("GET", "/nobody/+api")
        self.assertEqual(reply.code, 200)
        self.assertEqual(set(reply.json["result"]), {"login", "authstatus", "features"})

    def test_index_api_of_a_stage(self) -> None:
        self.add_user("alice")
        self.add_index("alice", "dev")
        result = self.request("GET", "/alice/dev/+api").json["result"]
        self.assertEqual(result["index"], f"{BASE}/alice/dev")
        self.assertEqual(result["simpleindex"], f"{BASE}/alice/dev/+simple/")
        self.assertEqual(result["pypisubmit"], f"{BASE}/alice/dev/")

    def test_index_api_of_a_mirror_has_no_pypisubmit(self) -> None:
        result = self.request("GET", "/root/pypi/+api").json["result"]
        self.assertEqual(result["index"], f"{BASE}/root/pypi")
        self.assertNotIn("pypisubmit", result)

    def test_index_api_of_missing_index(self) -> None:
        reply = self.request("GET", "/root/nope/+api")
        self.assertEqual(reply.code, 404)
        self.assertEqual(reply.message, "The stage root/nope could not be found.")

    def test_outside_url_header_and_option(self) -> None:
        reply = self.request("GET", "/+api", headers={"X-Outside-Url": "http://outside.com/foo"})
        self.assertEqual(reply.json["result"]["login"], "http://outside.com/foo/+login")
        # the mount prefix is removed before routing
        reply = self.request("GET", "/foo/root/pypi/+api", headers={"X-Outside-Url": "http://outside.com/foo"})
        self.assertEqual(reply.json["result"]["index"], "http://outside.com/foo/root/pypi")

    def test_non_ascii_index_urls_are_percent_encoded(self) -> None:
        self.add_user("föö")
        self.add_index("föö", "dev")
        result = self.request("GET", "/f%C3%B6%C3%B6/dev/+api").json["result"]
        self.assertEqual(result["index"], f"{BASE}/f%C3%B6%C3%B6/dev")

    def test_requires_json_accept(self) -> None:
        self.assertEqual(self.request("GET", "/+api", accept="text/html").code, 404)
        self.assertEqual(self.request("GET", "/+api", accept=None).code, 200)
        self.assertEqual(self.request("GET", "/+api", accept="*/*").code, 200)

    def test_other_methods_are_404(self) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            self.assertEqual(self.request(method, "/+api").code, 404, method)

    def test_head(self) -> None:
        reply = self.request("HEAD", "/+api")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body, b"")


class JsonBodyTests(ServerTestCase):
    """read_json_body through a route that stores what it reads (PUT /U)."""

    def test_malformed_json(self) -> None:
        serial = self.server.store.serial
        for raw in (b"{", b"", b"\xff\xfe{", b"NaN", b'{"password": Infinity}', b"[" * 100_000):
            reply = self.request("PUT", "/alice", raw=raw)
            self.assertEqual(reply.code, 400, raw[:20])
            self.assertEqual(reply.message, "Bad request: could not decode json")
        self.assertUnchanged(serial)

    def test_lone_surrogates_are_refused(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PUT", "/alice", raw=b'{"password": "x", "title": "\\ud800"}')
        self.assertEqual(reply.code, 400)
        self.assertUnchanged(serial)

    def test_huge_body(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PUT", "/alice", {"password": "x", "title": "t" * MAX_JSON_BODY_BYTES})
        self.assertEqual(reply.code, 413)
        self.assertIn("exceeds the limit", reply.message)
        self.assertUnchanged(serial)

    def test_negotiated_error_without_json_accept_is_html(self) -> None:
        reply = self.request("PUT", "/alice", raw=b"{", accept=None)
        self.assertEqual(reply.code, 400)
        self.assertTrue(reply.headers["content-type"].startswith("text/html"))
        self.assertIn(b"could not decode json", reply.body)

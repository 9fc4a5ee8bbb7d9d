"""Requests while the auth key is still being derived after start-up (auth/authkey.py).

Login tokens wait for the key (a ``LoginTokensWaiter`` the test provides or
fails by hand); everything else is answered at once. In process: StubTreq
against the real resource, so an unanswered request is a Deferred without
result.
"""
from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpitx.auth.authkey import LoginTokensWaiter
from devpitx.auth.tokens import LOGIN_TOKEN_SECONDS, ReplicaTokens, TokenIdentity
from devpitx.web.identity import AUTH_KEY_UNAVAILABLE
from tests.helpers.testserver import (
    BASE,
    TEST_LOGIN_TOKENS,
    TEST_REPLICA_KEY,
    basic_auth,
    devpi_auth,
    make_test_server,
    stub_client,
)
from tests.web.test_api import Reply, ServerTestCase

REPLICA_UUID = "7c1e0c2fd9a64b0a8b8f4f1e6c1d2a3b"


class PendingAuthKeyTestCase(ServerTestCase):
    """A server whose auth key is not derived yet; alice (password "secret") exists."""

    role = "standalone"

    def setUp(self) -> None:
        self.clock = Clock()
        self.waiter = LoginTokensWaiter()
        self.server = make_test_server(self.temp_dir(), clock=self.clock, root_password=self.root_password,
                                       role=self.role, login_tokens=self.waiter)
        self.http = stub_client(self.server)
        self.addCleanup(self.server.store.close)
        self.add_user("alice", "secret")    # creating a user issues no token: it doesn't wait

    def start(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Deferred[Any]:
        data = json.dumps(body).encode() if body is not None else None
        d: Deferred[Any] = self.http.request(method, BASE + path, data=data,  # type: ignore[attr-defined]
                                             headers={"Accept": "application/json", **(headers or {})})
        return d

    def finish(self, d: Deferred[Any]) -> Reply:
        self.http.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        flat = {name.decode().lower(): values[-1].decode("latin-1")
                for name, values in response.headers.getAllRawHeaders()}
        return Reply(response.code, flat, content)

    def key_is_derived(self) -> None:
        self.waiter.provide(TEST_LOGIN_TOKENS)

    def derivation_failed(self) -> None:
        self.waiter.fail("Cannot derive keys with the given argon2 parameters: out of memory")

    def alice_token(self) -> str:
        """A token from before the restart: the client still holds it."""
        return TEST_LOGIN_TOKENS.issue("alice", [], True, self.clock.seconds())


class WaitingForTheKeyTests(PendingAuthKeyTestCase):
    def test_login_waits_for_the_key_then_succeeds(self) -> None:
        d = self.start("POST", "/+login", {"user": "alice", "password": "secret"})
        self.http.flush()
        self.assertNoResult(d)
        self.key_is_derived()
        reply = self.finish(d)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.json["result"]["expiration"], int(LOGIN_TOKEN_SECONDS))
        token = reply.json["result"]["password"]
        self.assertEqual(TEST_LOGIN_TOKENS.check(token, "alice", self.clock.seconds()),
                         TokenIdentity("alice", (), True))

    def test_wrong_password_is_refused_without_waiting(self) -> None:
        reply = self.finish(self.start("POST", "/+login", {"user": "alice", "password": "wrong"}))
        self.assertEqual((reply.code, reply.message), (401, "user 'alice' could not be authenticated"))

    def test_presented_login_token_waits_for_the_key(self) -> None:
        token = self.alice_token()
        waiting = [self.start("GET", "/+api", headers=headers)
                   for headers in (devpi_auth("alice", token), basic_auth("alice", token))]
        self.http.flush()
        for d in waiting:
            self.assertNoResult(d)
        self.key_is_derived()
        for d in waiting:
            self.assertEqual(self.finish(d).json["result"]["authstatus"], ["ok", "alice", []])

    def test_password_change_waits_and_answers_with_a_token(self) -> None:
        serial = self.server.store.serial
        d = self.start("PATCH", "/alice", {"password": "new"}, headers=devpi_auth("alice", "secret"))
        self.http.flush()
        self.assertNoResult(d)
        self.assertUnchanged(serial)
        self.key_is_derived()
        reply = self.finish(d)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.json["message"], "user updated, new proxy auth")
        self.assertIsInstance(TEST_LOGIN_TOKENS.check(reply.json["result"]["password"], "alice",
                                                      self.clock.seconds()), TokenIdentity)
        self.assertEqual(self.request("GET", "/+api", auth=("alice", "new")).json["result"]["authstatus"],
                         ["ok", "alice", []])

    def test_client_going_away_while_waiting(self) -> None:
        d = self.start("POST", "/+login", {"user": "alice", "password": "secret"})
        self.http.flush()
        d.cancel()
        self.failureResultOf(d)
        self.key_is_derived()       # must not answer the cancelled request (AlreadyCalledError)
        self.assertEqual(self.login("alice")[0], "alice")


class NotWaitingTests(PendingAuthKeyTestCase):
    """Answered at once although the key never arrives."""

    def test_anonymous_requests(self) -> None:
        for path in ("/+api", "/", "/alice", "/root/pypi/+simple/"):
            reply = self.finish(self.start("GET", path))
            self.assertIn(reply.code, (200, 404), path)
        self.assertEqual(self.finish(self.start("GET", "/+api")).json["result"]["authstatus"],
                         ["noauth", "", []])

    def test_password_credentials(self) -> None:
        for headers in (devpi_auth("alice", "secret"), basic_auth("alice", "secret")):
            reply = self.finish(self.start("GET", "/+api", headers=headers))
            self.assertEqual(reply.json["result"]["authstatus"], ["ok", "alice", []])

    def test_writes_with_a_password(self) -> None:
        reply = self.finish(self.start("PUT", "/alice/dev", {}, headers=devpi_auth("alice", "secret")))
        self.assertEqual(reply.code, 200, reply.body)
        reply = self.finish(self.start("PATCH", "/alice", {"email": "alice@example.org"},
                                       headers=devpi_auth("alice", "secret")))
        self.assertEqual((reply.code, reply.json["message"]), (200, "user updated"))


class ReplicaTokenOnPrimaryTests(PendingAuthKeyTestCase):
    role = "primary"

    def test_replica_bearer_token_does_not_wait(self) -> None:
        token = ReplicaTokens(TEST_REPLICA_KEY).issue(REPLICA_UUID, self.clock.seconds())
        reply = self.finish(self.start("GET", f"/+changelog/{self.server.store.serial}", headers={
            "X-Devpi-Replica-Uuid": REPLICA_UUID, "X-Devpi-Expected-Primary-Id": self.server.node.uuid,
            "Authorization": f"Bearer {token}"}))
        self.assertEqual(reply.code, 200, reply.body)


class FailedDerivationTests(PendingAuthKeyTestCase):
    def assertUnavailable(self, reply: Reply) -> None:
        self.assertEqual(reply.code, 500)
        self.assertEqual(reply.json, {"message": AUTH_KEY_UNAVAILABLE})
        self.assertNotIn("argon2", reply.body.decode())     # the detail is for the log only

    def test_waiting_login_gets_the_error(self) -> None:
        serial = self.server.store.serial
        d = self.start("POST", "/+login", {"user": "alice", "password": "secret"})
        self.http.flush()
        self.assertNoResult(d)
        self.derivation_failed()
        self.assertUnavailable(self.finish(d))
        self.assertUnchanged(serial)    # not even the rehash of the test hasher's cheap hash

    def test_later_token_requests_get_the_error(self) -> None:
        self.derivation_failed()
        self.assertUnavailable(self.finish(self.start("POST", "/+login", {"user": "alice", "password": "secret"})))
        serial = self.server.store.serial
        self.assertUnavailable(self.finish(self.start("PUT", "/alice/dev", {},
                                                      headers=devpi_auth("alice", self.alice_token()))))
        self.assertUnchanged(serial)
        # The error envelope is JSON even without Accept (api shape).
        d: Deferred[Any] = self.http.request("POST", BASE + "/+login",  # type: ignore[attr-defined]
                                             data=json.dumps({"user": "alice", "password": "secret"}).encode())
        self.assertUnavailable(self.finish(d))

    def test_password_change_is_not_made(self) -> None:
        self.derivation_failed()
        serial = self.server.store.serial
        self.assertUnavailable(self.finish(self.start("PATCH", "/alice", {"password": "new"},
                                                      headers=devpi_auth("alice", "secret"))))
        self.assertUnchanged(serial)
        self.assertEqual(self.request("GET", "/+api", auth=("alice", "secret")).json["result"]["authstatus"],
                         ["ok", "alice", []])

    def test_passwords_and_anonymous_requests_still_work(self) -> None:
        self.derivation_failed()
        self.assertEqual(self.request("GET", "/+api", auth=("alice", "secret")).json["result"]["authstatus"],
                         ["ok", "alice", []])
        self.assertEqual(self.request("GET", "/+api").code, 200)

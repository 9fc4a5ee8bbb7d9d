"""Tests for ``POST /+login`` (http-api.md §3.2, auth.md §2.1, §4)."""
from __future__ import annotations

import hashlib

from devpitx.model.users import get_user
from devpitx.storage.keys import user_key
from tests.web.test_api import ServerTestCase


class LoginTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user("alice", "secret")

    def test_success(self) -> None:
        reply = self.request("POST", "/+login", {"user": "alice", "password": "secret"})
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.headers["content-type"], "application/json")
        data = reply.json
        self.assertEqual(data["type"], "proxyauth")
        self.assertEqual(data["message"], "login successful")
        self.assertEqual(data["result"]["expiration"], 36000)
        self.assertIsInstance(data["result"]["expiration"], int)
        token = data["result"]["password"]
        token.encode("ascii")       # devpi-client base64-encodes it with the ASCII codec
        self.assertNotEqual(token, "secret")

    def test_token_authenticates_in_both_headers(self) -> None:
        user, token = self.login("alice")
        for reply in (self.request("GET", "/+api", auth=(user, token)),
                      self.request("GET", "/+api", basic=(user, token))):
            self.assertEqual(reply.json["result"]["authstatus"], ["ok", "alice", []])

    def test_token_is_bound_to_its_user(self) -> None:
        self.add_user("bob")
        _user, token = self.login("alice")
        reply = self.request("GET", "/+api", auth=("bob", token))
        self.assertEqual(reply.json["result"]["authstatus"], ["noauth", "", []])

    def test_root_login(self) -> None:
        user, token = self.login("root", self.root_password)
        self.assertEqual(self.request("GET", "/+api", auth=(user, token)).json["result"]["authstatus"][:2],
                         ["ok", "root"])

    def test_wrong_password_unknown_user_and_token_as_password(self) -> None:
        _user, token = self.login("alice")
        serial = self.server.store.serial
        for user, password in (("alice", "wrong"), ("alice", ""), ("nobody", "secret"),
                               ("alice", token), ("+replica", "x")):
            reply = self.request("POST", "/+login", {"user": user, "password": password})
            self.assertEqual(reply.code, 401, (user, password))
            self.assertEqual(reply.message, f"user '{user}' could not be authenticated")
            # api error: JSON even without an Accept header
            reply = self.request("POST", "/+login", {"user": user, "password": password}, accept=None)
            self.assertEqual(reply.json, {"message": f"user '{user}' could not be authenticated"})
            self.assertNotIn("www-authenticate", reply.headers)
        self.assertUnchanged(serial)

    def test_user_without_password_hash_cannot_log_in(self) -> None:
        with self.server.store.write() as tx:
            tx.set(user_key("plugin"), {"created": "2024-01-01T00:00:00Z"})
        reply = self.request("POST", "/+login", {"user": "plugin", "password": ""})
        self.assertEqual(reply.code, 401)

    def test_missing_fields(self) -> None:
        for body in ({"user": "alice"}, {"password": "secret"}, {}, ["alice", "secret"], "alice", None):
            reply = self.request("POST", "/+login", raw=b"null" if body is None else None,
                                 body=body)
            self.assertEqual(reply.code, 400, body)
            self.assertEqual(reply.message, "Bad request: no user/password specified")

    def test_wrong_types(self) -> None:
        for body in ({"user": "alice", "password": 1}, {"user": ["alice"], "password": "secret"},
                     {"user": "alice", "password": None}):
            reply = self.request("POST", "/+login", body)
            self.assertEqual(reply.code, 400, body)
            self.assertIn("must be strings", reply.message)

    def test_malformed_json(self) -> None:
        reply = self.request("POST", "/+login", raw=b"user=alice&password=secret")
        self.assertEqual(reply.code, 400)
        self.assertEqual(reply.message, "Bad request: could not decode json")

    def test_only_post_and_json_accept(self) -> None:
        self.assertEqual(self.request("GET", "/+login").code, 404)
        self.assertEqual(self.request("PUT", "/+login", {"user": "alice", "password": "secret"}).code, 404)
        reply = self.request("POST", "/+login", {"user": "alice", "password": "secret"}, accept="text/html")
        self.assertEqual(reply.code, 404)

    def test_rehash_of_outdated_hash(self) -> None:
        """The test hasher's cheap parameters differ from the reference's: login replaces them."""
        before = self.server.store.get(user_key("alice"))
        serial = self.server.store.serial
        reply = self.request("POST", "/+login", {"user": "alice", "password": "secret"})
        self.assertEqual(reply.code, 200)
        after = get_user(self.server.store, "alice")
        assert before is not None and after is not None
        self.assertNotEqual(after["pwhash"], before["pwhash"])
        self.assertEqual(self.server.store.serial, serial + 1)
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertNotIn("modified", after)     # a rehash is not a modification
        self.login("alice", "secret")

    def test_legacy_hash_is_replaced(self) -> None:
        salt = "c2FsdA=="
        legacy = hashlib.sha256(salt.encode() + b"old").hexdigest()
        with self.server.store.write() as tx:
            tx.set(user_key("old"), {"pwhash": legacy, "pwsalt": salt})
        self.login("old", "old")
        record = get_user(self.server.store, "old")
        assert record is not None
        self.assertNotIn("pwsalt", record)
        self.assertTrue(record["pwhash"].startswith("$argon2"))
        self.login("old", "old")

    def test_token_of_deleted_user_stops_working(self) -> None:
        credentials = self.login("alice")
        self.assertEqual(self.request("DELETE", "/alice", auth=credentials).code, 200)
        reply = self.request("GET", "/+api", auth=credentials)
        self.assertEqual(reply.json["result"]["authstatus"], ["noauth", "", []])

"""Tests for ``GET /`` and ``/{user}`` GET/PUT/PATCH/DELETE (http-api.md §3.5, §3.6; auth.md §7, §8)."""
from __future__ import annotations

from typing import Any

from devpitx.model.releases import register
from devpitx.storage.keys import index_key, project_key, user_key, version_key
from tests.helpers.testserver import cheap_hash
from tests.web.test_api import Reply, ServerTestCase

FORBIDDEN = 403


class UserRouteTestCase(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user("alice", "secret", email="alice@example.org")
        self.add_user("bob", "bobpw")

    def user_record(self, name: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.server.store.get(user_key(name))
        return record

    def assertFrameworkForbidden(self, reply: Reply) -> None:
        self.assertEqual(reply.code, FORBIDDEN, reply.body)
        data = reply.json
        self.assertEqual(data["code"], 403)
        self.assertNotIn("www-authenticate", reply.headers)


class ReadTests(UserRouteTestCase):
    def test_get_user(self) -> None:
        reply = self.request("GET", "/alice")
        self.assertEqual(reply.code, 200)
        data = reply.json
        self.assertEqual(data["type"], "userconfig")
        result = data["result"]
        self.assertEqual(result["username"], "alice")
        self.assertEqual(result["email"], "alice@example.org")
        self.assertEqual(result["indexes"], {})
        self.assertEqual(result["created"], "2023-11-14T22:13:20Z")
        self.assertNotIn("pwhash", result)
        self.assertNotIn("password", result)
        self.assertNotIn("modified", result)

    def test_get_user_with_indexes(self) -> None:
        self.add_index("alice", "dev")
        indexes = self.request("GET", "/alice/").json["result"]["indexes"]
        self.assertEqual(list(indexes), ["dev"])
        self.assertEqual(indexes["dev"]["type"], "stage")
        self.assertNotIn("projects", indexes["dev"])

    def test_missing_user(self) -> None:
        reply = self.request("GET", "/nobody")
        self.assertEqual(reply.code, 404)
        self.assertEqual(reply.message, "no user 'nobody'")
        html = self.request("GET", "/nobody", accept=None)
        self.assertEqual(html.code, 404)
        self.assertTrue(html.headers["content-type"].startswith("text/html"))

    def test_json_only(self) -> None:
        self.assertEqual(self.request("GET", "/alice", accept="text/html").code, 404)
        self.assertEqual(self.request("GET", "/", accept="text/html").code, 404)
        self.assertEqual(self.request("GET", "/alice", accept=None).code, 200)

    def test_list_users(self) -> None:
        reply = self.request("GET", "/")
        self.assertEqual(reply.json["type"], "list:userconfig")
        result = reply.json["result"]
        self.assertEqual(sorted(result), ["alice", "bob", "root"])
        self.assertEqual(result["root"]["indexes"]["pypi"]["volatile"], False)
        self.assertEqual(result["alice"]["username"], "alice")
        for config in result.values():
            self.assertNotIn("pwhash", config)

    def test_unsupported_methods(self) -> None:
        self.assertEqual(self.request("POST", "/alice", {}).code, 404)
        self.assertEqual(self.request("PUT", "/", {}).code, 404)
        self.assertEqual(self.request("DELETE", "/", auth=self.root()).code, 404)


class CreateTests(UserRouteTestCase):
    def test_create(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PUT", "/carol", {"password": "pw", "email": "c@example.org", "title": "",
                                               "description": None, "custom_data": {"k": [1]}})
        self.assertEqual(reply.code, 201)
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertEqual(reply.json["type"], "userconfig")
        result = reply.json["result"]
        self.assertEqual(result, {"username": "carol", "email": "c@example.org", "custom_data": {"k": [1]},
                                  "created": "2023-11-14T22:13:20Z", "indexes": {}})
        self.login("carol", "pw")

    def test_empty_password_is_a_password(self) -> None:
        self.add_user("carol", "")
        self.login("carol", "")

    def test_tolerated_keys_are_ignored(self) -> None:
        reply = self.request("PUT", "/carol", {"password": "pw", "username": "mallory",
                                               "indexes": {"dev": {"type": "stage"}},
                                               "created": "1999-01-01T00:00:00Z", "modified": "x"})
        self.assertEqual(reply.code, 201)
        record = self.user_record("carol")
        assert record is not None
        self.assertEqual(set(record), {"pwhash", "created"})
        self.assertEqual(record["created"], "2023-11-14T22:13:20Z")
        self.assertIsNone(self.server.store.get(index_key("carol", "dev")))

    def test_pwhash_is_stored_verbatim(self) -> None:
        pwhash = cheap_hash("hashed")
        self.assertEqual(self.request("PUT", "/carol", {"password": "ignored", "pwhash": pwhash}).code, 201)
        record = self.user_record("carol")
        assert record is not None
        self.assertEqual(record["pwhash"], pwhash)

    def test_refusals(self) -> None:
        cases: list[tuple[str, Any, int, str]] = [
            ("alice", {"password": "x"}, 409, "user already exists"),
            ("carol", {"email": "c@example.org"}, 400, "password needs to be set"),
            ("carol", {"password": None}, 400, "password needs to be set"),
            ("carol", {"password": "x", "bogus": 1, "admin": True}, 400, "Unknown keys in user config: admin, bogus"),
            ("carol", {"password": 5}, 400, "password must be a string"),
            ("carol", {"password": "x", "email": ["a"]}, 400, "'email' must be a string"),
            ("carol", {"password": "x", "title": 7}, 400, "'title' must be a string"),
            ("carol", {"password": "x", "pwhash": "not-a-hash"}, 400,
             "pwhash must be an Argon2 hash in PHC string format"),
            ("carol", {"password": "x", "pwhash": 12}, 400, "pwhash must be an Argon2 hash in PHC string format"),
            ("carol", ["password", "x"], 400, "user configuration must be a JSON object"),
            ("carol", "x", 400, "user configuration must be a JSON object"),
        ]
        serial = self.server.store.serial
        for name, body, code, message in cases:
            reply = self.request("PUT", f"/{name}", body)
            self.assertEqual((reply.code, reply.message), (code, message), body)
        self.assertUnchanged(serial)
        self.assertIsNone(self.user_record("carol"))

    def test_invalid_names(self) -> None:
        serial = self.server.store.serial
        for quoted, name in (("foo:bar", "foo:bar"), ("foo%21bar", "foo!bar"), ("foo~bar", "foo~bar"),
                             (":foobar", ":foobar"), ("%2E%2E", ".."), ("%2E", "."), ("a%20b", "a b"),
                             ("a%00b", "a\x00b")):
            reply = self.request("PUT", f"/{quoted}", {"password": "x"})
            if "\x00" in name:
                self.assertEqual(reply.code, 404)      # refused by the router already
                continue
            self.assertEqual(reply.code, 400, name)
            self.assertEqual(reply.message, f"username '{name}' contains characters that aren't allowed. "
                                            "Any ascii symbol besides -.@_ is blocked.")
        self.assertUnchanged(serial)

    def test_non_ascii_and_punctuation_names_are_valid(self) -> None:
        for quoted, name in (("f%C3%B6%C3%B6", "föö"), ("%F0%9F%98%80", "😀"), ("foo.bar42", "foo.bar42"),
                             ("foo%40bar42", "foo@bar42"), ("foo_bar-1", "foo_bar-1")):
            self.assertEqual(self.request("PUT", f"/{quoted}", {"password": "x"}).code, 201, name)
            self.assertEqual(self.request("GET", f"/{quoted}").json["result"]["username"], name)

    def test_too_long_name(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PUT", "/" + "a" * 201, {"password": "x"})
        self.assertEqual(reply.code, 400)
        self.assertIn("too long", reply.message)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PUT", "/" + "a" * 200, {"password": "x"}).code, 201)

    def test_permission(self) -> None:
        # user_create is granted to everyone without --restrict-modify
        self.assertEqual(self.request("PUT", "/carol", {"password": "x"}).code, 201)
        self.assertEqual(self.request("PUT", "/dave", {"password": "x"}, auth=("bob", "bobpw")).code, 201)
        self.assertEqual(self.request("PUT", "/erin", {"password": "x"}, auth=self.root()).code, 201)


class ModifyTests(UserRouteTestCase):
    def test_modify_fields(self) -> None:
        self.clock.advance(60)
        serial = self.server.store.serial
        reply = self.request("PATCH", "/alice", {"title": "Alice", "email": ""}, auth=("alice", "secret"))
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json, {"message": "user updated"})
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        result = self.request("GET", "/alice").json["result"]
        self.assertEqual(result["title"], "Alice")
        self.assertNotIn("email", result)
        self.assertEqual(result["modified"], "2023-11-14T22:14:20Z")
        self.assertEqual(result["created"], "2023-11-14T22:13:20Z")

    def test_description_empty_removes_it(self) -> None:
        self.request("PATCH", "/alice", {"description": "hello"}, auth=("alice", "secret"))
        self.assertEqual(self.request("GET", "/alice").json["result"]["description"], "hello")
        self.request("PATCH", "/alice", {"description": ""}, auth=("alice", "secret"))
        self.assertNotIn("description", self.request("GET", "/alice").json["result"])

    def test_client_sends_back_the_whole_get_result(self) -> None:
        self.add_index("alice", "dev")
        result = self.request("GET", "/alice").json["result"]
        result["title"] = "new"
        reply = self.request("PATCH", "/alice", result, auth=("alice", "secret"))
        self.assertEqual((reply.code, reply.message), (200, "user updated"))
        record = self.user_record("alice")
        assert record is not None
        self.assertNotIn("indexes", record)
        self.assertNotIn("username", record)
        self.assertEqual(record["title"], "new")

    def test_noop_commits_nothing(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PATCH", "/alice", {"email": "alice@example.org", "bogus": 1},
                             auth=("alice", "secret"))
        self.assertEqual((reply.code, reply.message), (200, "user updated"))
        self.assertUnchanged(serial)

    def test_password_change_returns_a_token(self) -> None:
        reply = self.request("PATCH", "/alice", {"password": "newpw"}, auth=("alice", "secret"))
        self.assertEqual(reply.code, 200)
        data = reply.json
        self.assertEqual(data["type"], "userpassword")
        self.assertEqual(data["message"], "user updated, new proxy auth")
        self.assertEqual(data["result"]["expiration"], 36000)
        token = data["result"]["password"]
        self.assertEqual(self.request("GET", "/+api", auth=("alice", token)).json["result"]["authstatus"][0], "ok")
        self.assertEqual(self.request("POST", "/+login", {"user": "alice", "password": "secret"}).code, 401)
        self.login("alice", "newpw")
        record = self.user_record("alice")
        assert record is not None
        self.assertIn("modified", record)

    def test_pwhash_patch(self) -> None:
        reply = self.request("PATCH", "/alice", {"pwhash": cheap_hash("fromhash")}, auth=self.root())
        self.assertEqual((reply.code, reply.message), (200, "user updated"))
        self.login("alice", "fromhash")

    def test_missing_user(self) -> None:
        reply = self.request("PATCH", "/nobody", {"title": "x"}, auth=self.root())
        self.assertEqual((reply.code, reply.message), (404, "no user 'nobody'"))

    def test_bad_input(self) -> None:
        serial = self.server.store.serial
        cases: list[tuple[Any, str]] = [
            ({"password": 1}, "password must be a string"),
            ({"email": {"a": 1}}, "'email' must be a string"),
            ({"pwhash": "$argon2id$garbage"}, "pwhash must be an Argon2 hash in PHC string format"),
            ([["password", "x"]], "user configuration must be a JSON object"),
        ]
        for body, message in cases:
            reply = self.request("PATCH", "/alice", body, auth=self.root())
            self.assertEqual((reply.code, reply.message), (400, message), body)
        reply = self.request("PATCH", "/alice", raw=b'{"title": ', auth=self.root())
        self.assertEqual((reply.code, reply.message), (400, "Bad request: could not decode json"))
        self.assertUnchanged(serial)

    def test_permission_matrix(self) -> None:
        info, password = {"title": "t"}, {"password": "pw2"}
        cases = [
            (None, info, 403, "no permission to modify user alice"),
            (None, password, 403, "no permission to change password for user alice"),
            (("bob", "bobpw"), info, 403, "no permission to modify user alice"),
            (("bob", "bobpw"), password, 403, "no permission to change password for user alice"),
            (("alice", "wrong"), info, 403, "no permission to modify user alice"),
        ]
        serial = self.server.store.serial
        for auth, body, code, message in cases:
            reply = self.request("PATCH", "/alice", body, auth=auth)
            self.assertEqual((reply.code, reply.message), (code, message), (auth, body))
            self.assertNotIn("www-authenticate", reply.headers)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PATCH", "/alice", info, auth=("alice", "secret")).code, 200)
        self.assertEqual(self.request("PATCH", "/alice", info | {"title": "r"}, auth=self.root()).code, 200)
        self.assertEqual(self.request("PATCH", "/alice", password, auth=self.root()).code, 200)


class DeleteTests(UserRouteTestCase):
    def test_owner_deletes_with_indexes_and_projects(self) -> None:
        self.add_index("alice", "dev")
        self.add_index("alice", "prod")
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "pkg", "version": "1.0"}, full=True)
        reply = self.request("DELETE", "/alice", auth=("alice", "secret"))
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json, {"message": "user 'alice' deleted"})
        store = self.server.store
        for key in (user_key("alice"), index_key("alice", "dev"), index_key("alice", "prod"),
                    project_key("alice", "dev", "pkg"), version_key("alice", "dev", "pkg", "1.0")):
            self.assertIsNone(store.get(key), key)
        self.assertEqual(self.request("GET", "/alice").code, 404)
        self.assertEqual(self.request("GET", "/alice/dev").code, 404)

    def test_non_volatile_index_refuses(self) -> None:
        self.add_index("alice", "dev")
        self.add_index("alice", "prod", volatile=False)
        serial = self.server.store.serial
        reply = self.request("DELETE", "/alice", auth=("alice", "secret"))
        self.assertEqual((reply.code, reply.message), (403, "user 'alice' has non-volatile index: prod"))
        self.assertUnchanged(serial)
        self.assertIsNotNone(self.server.store.get(index_key("alice", "dev")))

    def test_missing_user(self) -> None:
        reply = self.request("DELETE", "/nobody", auth=self.root())
        self.assertEqual((reply.code, reply.message), (404, "no user 'nobody'"))

    def test_permission_matrix(self) -> None:
        serial = self.server.store.serial
        for auth in (None, ("bob", "bobpw"), ("alice", "wrong")):
            self.assertFrameworkForbidden(self.request("DELETE", "/alice", auth=auth))
        for auth in (None, ("alice", "secret"), self.root()):
            self.assertFrameworkForbidden(self.request("DELETE", "/root", auth=auth))
        self.assertUnchanged(serial)
        self.assertEqual(self.request("DELETE", "/bob", auth=self.root()).code, 200)
        self.assertEqual(self.request("DELETE", "/alice", auth=("alice", "secret")).code, 200)


class RestrictModifyTests(ServerTestCase):
    restrict_modify = ("admin",)

    def setUp(self) -> None:
        super().setUp()
        # Only the restrict-modify admin may create users: seed through the store.
        self.seed_users(("admin", "adminpw"), ("alice", "secret"))
        self.admin = ("admin", "adminpw")
        self.alice = ("alice", "secret")

    def test_create(self) -> None:
        serial = self.server.store.serial
        for auth in (None, self.alice, self.root()):
            reply = self.request("PUT", "/carol", {"password": "x"}, auth=auth)
            self.assertEqual(reply.code, 403, auth)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PUT", "/carol", {"password": "x"}, auth=self.admin).code, 201)

    def test_modify(self) -> None:
        serial = self.server.store.serial
        for auth in (None, self.alice, self.root()):
            reply = self.request("PATCH", "/alice", {"title": "t"}, auth=auth)
            self.assertEqual((reply.code, reply.message), (403, "no permission to modify user alice"), auth)
        for auth in (None, self.root()):
            reply = self.request("PATCH", "/alice", {"password": "x"}, auth=auth)
            self.assertEqual(reply.code, 403, auth)
        self.assertUnchanged(serial)
        # users may still change their own password
        self.assertEqual(self.request("PATCH", "/alice", {"password": "new"}, auth=self.alice).code, 200)
        self.assertEqual(self.request("PATCH", "/alice", {"title": "t"}, auth=self.admin).code, 200)

    def test_delete(self) -> None:
        serial = self.server.store.serial
        for auth in (None, self.alice, self.root()):
            reply = self.request("DELETE", "/alice", auth=auth)
            self.assertEqual(reply.code, 403, auth)
        self.assertEqual(self.request("DELETE", "/admin", auth=self.admin).code, 403)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("DELETE", "/alice", auth=self.admin).code, 200)
        # the admin may delete root (auth.md §7.1), but root/pypi is non-volatile
        self.assertEqual(self.request("DELETE", "/root", auth=self.admin).code, 403)
        self.assertEqual(self.request("DELETE", "/root", auth=self.admin).message,
                         "user 'root' has non-volatile index: pypi")

"""Tests for ``/{user}/{index}`` GET/PUT/PATCH/DELETE (http-api.md §3.7; auth.md §7.3, §8)."""
from __future__ import annotations

from typing import Any

from devpitx.model.ixconfig import DEFAULT_MIRROR_URL, NOOP_MESSAGE
from devpitx.model.releases import register
from devpitx.storage.keys import index_key, project_key, user_key
from devpitx.web.negotiate import SIMPLE_JSON
from tests.helpers.testserver import TEST_LOGIN_TOKENS
from tests.web.test_api import Reply, ServerTestCase

ALICE = ("alice", "secret")
BOB = ("bob", "bobpw")
STAGE_DEFAULTS = {"type": "stage", "volatile": True, "bases": [], "acl_upload": ["alice"],
                  "acl_toxresult_upload": [":ANONYMOUS:"], "mirror_whitelist": [],
                  "mirror_whitelist_inheritance": "intersection"}


class IndexRouteTestCase(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user("alice", "secret")
        self.add_user("bob", "bobpw")

    def config(self, user: str, index: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.server.store.get(index_key(user, index))
        return value

    def assertFrameworkForbidden(self, reply: Reply) -> None:
        self.assertEqual(reply.code, 403, reply.body)
        self.assertEqual(reply.json["code"], 403)


class GetTests(IndexRouteTestCase):
    def test_get_with_projects(self) -> None:
        self.add_index("alice", "dev")
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "Pkg_B", "version": "1.0"}, full=True)
            register(tx, "alice", "dev", {"name": "a", "version": "1.0"}, full=True)
        reply = self.request("GET", "/alice/dev")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json, {"type": "indexconfig", "result": {**STAGE_DEFAULTS, "projects": ["a", "pkg-b"]}})
        self.assertEqual(self.request("GET", "/alice/dev/").json, reply.json)

    def test_no_projects(self) -> None:
        self.add_index("alice", "dev")
        for query in ("?no_projects=", "?no_projects", "?no_projects=1"):
            self.assertEqual(self.request("GET", "/alice/dev" + query).json["result"], STAGE_DEFAULTS, query)

    def test_root_pypi(self) -> None:
        result = self.request("GET", "/root/pypi?no_projects=").json["result"]
        self.assertEqual(set(result), {"type", "volatile", "title", "mirror_url", "mirror_web_url_fmt"})
        self.assertEqual(result["mirror_url"], DEFAULT_MIRROR_URL)
        self.assertEqual(self.request("GET", "/root/pypi").json["result"]["projects"], [])

    def test_missing_index(self) -> None:
        reply = self.request("GET", "/alice/nope")
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/nope could not be found."))
        self.assertEqual(self.request("GET", "/nobody/dev").code, 404)

    def test_html_only_accept_is_404(self) -> None:
        self.add_index("alice", "dev")
        self.assertEqual(self.request("GET", "/alice/dev", accept="text/html").code, 404)
        self.assertEqual(self.request("GET", "/alice/dev", accept=None).json["type"], "indexconfig")

    def test_simple_json_is_the_simple_project_list(self) -> None:
        self.add_index("alice", "dev")
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "pkg", "version": "1.0"}, full=True)
        via_index = self.request("GET", "/alice/dev", accept=SIMPLE_JSON)
        via_simple = self.request("GET", "/alice/dev/+simple/", accept=SIMPLE_JSON)
        self.assertEqual((via_index.code, via_index.body), (via_simple.code, via_simple.body))

    def test_installer_user_agent_is_routed_elsewhere(self) -> None:
        # route 17 takes installers' GETs before this area (http-api.md §2.1)
        self.add_index("alice", "dev")
        reply = self.request("GET", "/alice/dev", headers={"User-Agent": "pip/24.0"}, accept="text/html")
        self.assertNotEqual(reply.headers.get("content-type"), "application/json")


class CreateTests(IndexRouteTestCase):
    def test_create_defaults(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PUT", "/alice/dev", {}, auth=ALICE)
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json, {"type": "indexconfig", "result": STAGE_DEFAULTS})
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertEqual(self.config("alice", "dev"), STAGE_DEFAULTS)

    def test_create_with_strings_as_devpi_client_sends_them(self) -> None:
        result = self.add_index("alice", "dev", bases="/root/pypi/", volatile="False",
                                acl_upload="alice,:anonymous:", mirror_whitelist="he_llo,Django",
                                projects=["ignored"])
        self.assertEqual(result["bases"], ["root/pypi"])
        self.assertIs(result["volatile"], False)
        self.assertEqual(result["acl_upload"], ["alice", ":ANONYMOUS:"])
        self.assertEqual(result["mirror_whitelist"], ["he-llo", "django"])
        self.assertNotIn("projects", result)

    def test_create_mirror(self) -> None:
        result = self.add_index("alice", "mirror", type="mirror", mirror_url=DEFAULT_MIRROR_URL,
                                bases="root/pypi")
        self.assertEqual(result, {"type": "mirror", "mirror_url": DEFAULT_MIRROR_URL, "volatile": True})

    def test_exists(self) -> None:
        self.add_index("alice", "dev")
        serial = self.server.store.serial
        reply = self.request("PUT", "/alice/dev", {}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (409, "index 'alice/dev' exists"))
        self.assertUnchanged(serial)

    def test_refusals(self) -> None:
        serial = self.server.store.serial
        cases: list[tuple[str, Any, str]] = [
            ("dev", {"type": "foo"}, "unknown index type 'foo'"),
            ("dev", {"bases": "not/exists"}, "base index 'not/exists' does not exist"),
            ("dev", {"bases": "justone"}, "invalid base index spec: 'justone'"),
            ("dev", {"foo": "bar"}, "indexconfig got unexpected keyword arguments: foo=bar"),
            ("dev", {"volatile": "maybe"}, "Unknown boolean value 'maybe'."),
            ("dev", {"volatile": 0}, "Unknown boolean value 0."),
            ("dev", {"type": "mirror", "mirror_url": "ftp://x"}, "'mirror_url' option must be a URL."),
            ("dev", [], "index configuration must be a JSON object"),
            ("dev", "bases=root/pypi", "index configuration must be a JSON object"),
            ("..", {}, "indexname '..' contains characters that aren't allowed. "
                       "Any ascii symbol besides -.@_ is blocked."),
            ("a:b", {}, "indexname 'a:b' contains characters that aren't allowed. "
                        "Any ascii symbol besides -.@_ is blocked."),
        ]
        for index, body, message in cases:
            quoted = "%2E%2E" if index == ".." else index
            reply = self.request("PUT", f"/alice/{quoted}", body, auth=ALICE)
            self.assertEqual((reply.code, reply.message), (400, message), body)
        reply = self.request("PUT", "/alice/dev", raw=b"{bases: x}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (400, "Bad request: could not decode json"))
        reply = self.request("PUT", "/alice/" + "i" * 201, {}, auth=ALICE)
        self.assertEqual(reply.code, 400)
        self.assertIn("too long", reply.message)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("GET", "/alice").json["result"]["indexes"], {})

    def test_self_base_is_refused_at_creation(self) -> None:
        reply = self.request("PUT", "/alice/dev", {"bases": "alice/dev"}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (400, "base index 'alice/dev' does not exist"))

    def test_permission_matrix(self) -> None:
        serial = self.server.store.serial
        for auth in (None, BOB, ("alice", "wrong")):
            reply = self.request("PUT", "/alice/dev", {}, auth=auth)
            self.assertEqual((reply.code, reply.message), (403, "no permission to create index alice/dev"), auth)
            self.assertNotIn("www-authenticate", reply.headers)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PUT", "/alice/dev", {}, auth=ALICE).code, 200)
        reply = self.request("PUT", "/alice/byroot", {}, auth=self.root())
        self.assertEqual(reply.code, 200)
        # the owner of the URL, not the creator, is the default uploader
        self.assertEqual(reply.json["result"]["acl_upload"], ["alice"])

    def test_missing_user(self) -> None:
        serial = self.server.store.serial
        for auth in (None, self.root(), ALICE):
            reply = self.request("PUT", "/nobody/dev", {}, auth=auth)
            self.assertEqual((reply.code, reply.message), (404, "no user 'nobody'"), auth)
        self.assertUnchanged(serial)

    def test_user_known_only_to_a_token_is_created(self) -> None:
        """An identity without a local record (a plugin's) creates its user with its first index."""
        token = TEST_LOGIN_TOKENS.issue("plugged", [], False, self.clock.seconds())
        reply = self.request("PUT", "/plugged/dev", {}, auth=("plugged", token))
        self.assertEqual(reply.code, 200, reply.body)
        record = self.server.store.get(user_key("plugged"))
        self.assertEqual(record, {"created": "2023-11-14T22:13:20Z"})
        self.assertIsNotNone(self.config("plugged", "dev"))

    def test_failed_index_does_not_leave_the_created_user(self) -> None:
        token = TEST_LOGIN_TOKENS.issue("plugged", [], False, self.clock.seconds())
        serial = self.server.store.serial
        reply = self.request("PUT", "/plugged/dev", {"type": "nope"}, auth=("plugged", token))
        self.assertEqual(reply.code, 400)
        self.assertUnchanged(serial)
        self.assertIsNone(self.server.store.get(user_key("plugged")))


class ModifyTests(IndexRouteTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_index("alice", "dev")

    def patch(self, body: Any, auth: tuple[str, str] | None = ALICE, query: str = "") -> Reply:
        return self.request("PATCH", "/alice/dev" + query, body, auth=auth)

    def test_dict_patch(self) -> None:
        reply = self.patch({"volatile": False, "title": "Dev"})
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json, {"type": "indexconfig",
                                      "result": {**STAGE_DEFAULTS, "volatile": False, "title": "Dev"}})
        self.assertEqual(self.config("alice", "dev"), reply.json["result"])

    def test_get_envelope_sent_back(self) -> None:
        envelope = self.request("GET", "/alice/dev").json
        envelope["result"]["bases"] = ["root/pypi"]
        reply = self.patch(envelope)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.json["result"]["bases"], ["root/pypi"])
        self.assertNotIn("projects", self.config("alice", "dev") or {})

    def test_operation_list(self) -> None:
        reply = self.patch(["bases+=root/pypi", "mirror_whitelist=he_llo,Django", "title=T"])
        self.assertEqual(reply.code, 200, reply.body)
        result = reply.json["result"]
        self.assertEqual((result["bases"], result["mirror_whitelist"], result["title"]),
                         (["root/pypi"], ["he-llo", "django"], "T"))
        reply = self.patch(["mirror_whitelist-=django", "title-="])
        self.assertEqual(reply.json["result"]["mirror_whitelist"], ["he-llo"])
        self.assertNotIn("title", reply.json["result"])

    def test_operation_refusals(self) -> None:
        serial = self.server.store.serial
        cases: list[tuple[Any, str]] = [
            (["acl_upload-=bob"], "The 'acl_upload' setting doesn't have value 'bob'"),
            (["volatile-="], "Default values can't be removed."),
            (["type=mirror"], "the 'type' of an index can't be changed"),
            ({"type": "mirror"}, "the 'type' of an index can't be changed"),
            ({"foo": 1}, "indexconfig got unexpected keyword arguments: foo=1"),
            ({"bases": ["nope/nope"]}, "base index 'nope/nope' does not exist"),
            ({"volatile": "perhaps"}, "Unknown boolean value 'perhaps'."),
        ]
        for body, message in cases:
            reply = self.patch(body)
            self.assertEqual((reply.code, reply.message), (400, message), body)
        for body in ("volatile=False", 42, None, [1, 2], [["a"]]):
            reply = self.patch(body)
            self.assertEqual(reply.code, 400, body)
        reply = self.request("PATCH", "/alice/dev", raw=b"[", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (400, "Bad request: could not decode json"))
        self.assertUnchanged(serial)
        self.assertEqual(self.config("alice", "dev"), STAGE_DEFAULTS)

    def test_error_on_noop(self) -> None:
        serial = self.server.store.serial
        reply = self.patch({"volatile": True}, query="?error_on_noop=")
        self.assertEqual((reply.code, reply.message), (400, NOOP_MESSAGE))
        reply = self.patch(["volatile=True"], query="?error_on_noop")
        self.assertEqual((reply.code, reply.message), (400, NOOP_MESSAGE))
        reply = self.patch({"volatile": True})
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial))
        self.assertUnchanged(serial)
        self.assertEqual(self.patch({"volatile": False}, query="?error_on_noop=").code, 200)

    def test_missing_index(self) -> None:
        reply = self.request("PATCH", "/alice/nope", {"title": "x"}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/nope could not be found."))

    def test_permission_matrix(self) -> None:
        self.patch({"acl_upload": ["alice", "bob"]})
        serial = self.server.store.serial
        # bob may upload, which does not make him an owner
        for auth in (None, BOB, ("alice", "wrong")):
            self.assertFrameworkForbidden(self.patch({"title": "x"}, auth=auth))
        self.assertUnchanged(serial)
        self.assertEqual(self.patch({"title": "by alice"}).code, 200)
        self.assertEqual(self.patch({"title": "by root"}, auth=self.root()).code, 200)


class DeleteTests(IndexRouteTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_index("alice", "dev")

    def test_delete_with_projects(self) -> None:
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "pkg", "version": "1.0"}, full=True)
        reply = self.request("DELETE", "/alice/dev", auth=ALICE)
        self.assertEqual(reply.code, 201)
        self.assertEqual(reply.json, {"message": "index alice/dev deleted"})
        self.assertIsNone(self.config("alice", "dev"))
        self.assertIsNone(self.server.store.get(project_key("alice", "dev", "pkg")))
        self.assertEqual(self.request("GET", "/alice/dev").code, 404)

    def test_non_volatile(self) -> None:
        self.request("PATCH", "/alice/dev", {"volatile": False}, auth=ALICE)
        serial = self.server.store.serial
        reply = self.request("DELETE", "/alice/dev", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (403, "index alice/dev non-volatile, cannot delete"))
        reply = self.request("DELETE", "/root/pypi", auth=self.root())
        self.assertEqual((reply.code, reply.message), (403, "index root/pypi non-volatile, cannot delete"))
        self.assertUnchanged(serial)

    def test_missing(self) -> None:
        reply = self.request("DELETE", "/alice/nope", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/nope could not be found."))

    def test_dangling_base_stays(self) -> None:
        self.add_index("bob", "dev", password="bobpw", bases="alice/dev")
        self.assertEqual(self.request("DELETE", "/alice/dev", auth=ALICE).code, 201)
        self.assertEqual(self.request("GET", "/bob/dev").json["result"]["bases"], ["alice/dev"])
        # an unrelated change is still possible
        reply = self.request("PATCH", "/bob/dev", {"title": "t"}, auth=BOB)
        self.assertEqual(reply.code, 200, reply.body)

    def test_permission_matrix(self) -> None:
        self.request("PATCH", "/alice/dev", {"acl_upload": ["alice", "bob"]}, auth=ALICE)
        serial = self.server.store.serial
        for auth in (None, BOB, ("alice", "wrong")):
            self.assertFrameworkForbidden(self.request("DELETE", "/alice/dev", auth=auth))
        self.assertUnchanged(serial)
        self.assertEqual(self.request("DELETE", "/alice/dev", auth=self.root()).code, 201)
        self.add_index("alice", "dev")
        self.assertEqual(self.request("DELETE", "/alice/dev", auth=ALICE).code, 201)


class RestrictModifyTests(ServerTestCase):
    restrict_modify = ("admin",)

    def setUp(self) -> None:
        super().setUp()
        self.seed_users(("admin", "adminpw"), ("alice", "secret"))
        self.admin = ("admin", "adminpw")

    def test_create(self) -> None:
        serial = self.server.store.serial
        for auth in (None, ALICE, self.root()):
            reply = self.request("PUT", "/alice/dev", {}, auth=auth)
            self.assertEqual((reply.code, reply.message), (403, "no permission to create index alice/dev"), auth)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PUT", "/alice/dev", {}, auth=self.admin).code, 200)

    def test_user_create_needed_for_auto_created_owner(self) -> None:
        token = TEST_LOGIN_TOKENS.issue("plugged", [], False, self.clock.seconds())
        reply = self.request("PUT", "/plugged/dev", {}, auth=("plugged", token))
        self.assertEqual((reply.code, reply.message), (403, "no permission to create user plugged"))

    def test_modify_and_delete(self) -> None:
        self.request("PUT", "/alice/dev", {}, auth=self.admin)
        serial = self.server.store.serial
        for auth in (None, ALICE, self.root()):
            reply = self.request("PATCH", "/alice/dev", {"title": "x"}, auth=auth)
            self.assertEqual(reply.code, 403, auth)
            reply = self.request("DELETE", "/alice/dev", auth=auth)
            self.assertEqual(reply.code, 403, auth)
        self.assertUnchanged(serial)
        self.assertEqual(self.request("PATCH", "/alice/dev", {"title": "x"}, auth=self.admin).code, 200)
        self.assertEqual(self.request("DELETE", "/alice/dev", auth=self.admin).code, 201)

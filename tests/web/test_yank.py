"""Yanking (PEP 592) on private indexes: PATCH on a version or a file URL (docs/yanking.md)."""
from __future__ import annotations

import json
from typing import Any

from devpitx.model.links import MAX_YANK_REASON_CHARS
from devpitx.storage.keys import version_key
from tests.web.test_projects import ALICE, BOB, CAROL, ReleaseTestCase

PIP = {"User-Agent": "pip/24.0"}
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class YankTests(ReleaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.sdist = self.upload("dev", "pkg", "1.0")
        self.wheel = self.upload_wheel("dev", "pkg", "1.0")
        self.doc = self.upload_doc("dev", "pkg", "1.0")

    def simple_html(self) -> str:
        reply = self.request("GET", "/alice/dev/+simple/pkg/", accept="text/html", headers=PIP)
        self.assertEqual(reply.code, 200)
        return reply.body.decode()

    def simple_json(self) -> dict[str, Any]:
        reply = self.request("GET", "/alice/dev/+simple/pkg/", accept=SIMPLE_JSON, headers=PIP)
        self.assertEqual(reply.code, 200)
        return {f["filename"]: f.get("yanked") for f in json.loads(reply.body)["files"]}

    def test_yank_and_unyank_a_release(self) -> None:
        serial = self.server.store.serial
        reply = self.request("PATCH", "/alice/dev/pkg/1.0", {"yanked": "broken <build>"}, auth=ALICE)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertEqual(reply.json["type"], "versiondata")
        self.assertEqual(reply.json["message"], "project 'pkg' version '1.0' yanked")
        yanked = {link["rel"]: link.get("yanked") for link in reply.json["result"]["+links"]}
        self.assertEqual(yanked, {"releasefile": "broken <build>", "doczip": None})
        html = self.simple_html()
        self.assertEqual(html.count('data-yanked="broken &lt;build&gt;"'), 2, html)
        self.assertEqual(self.simple_json(), {"pkg-1.0.tar.gz": "broken <build>",
                                              "pkg-1.0-py3-none-any.whl": "broken <build>"})
        # the project view shows it too
        links = self.request("GET", "/alice/dev/pkg").json["result"]["1.0"]["+links"]
        self.assertEqual({link.get("yanked") for link in links if link["rel"] == "releasefile"}, {"broken <build>"})
        reply = self.request("PATCH", "/alice/dev/pkg/1.0", {"yanked": False}, auth=ALICE)
        self.assertEqual(reply.json["message"], "project 'pkg' version '1.0' unyanked")
        self.assertNotIn("data-yanked", self.simple_html())
        self.assertEqual(set(self.simple_json().values()), {None})

    def test_yank_without_reason(self) -> None:
        for value in (True, "", "   "):
            self.request("PATCH", "/alice/dev/pkg/1.0", {"yanked": False}, auth=ALICE)
            self.assertEqual(self.request("PATCH", "/alice/dev/pkg/1.0", {"yanked": value}, auth=ALICE).code, 200)
            self.assertEqual(self.simple_html().count('data-yanked=""'), 2, value)
            self.assertEqual(set(self.simple_json().values()), {True}, value)

    def test_yank_one_file(self) -> None:
        reply = self.request("PATCH", f"/{self.wheel}", {"yanked": "wrong tag"}, auth=ALICE)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.json["type"], "releasefilemeta")
        self.assertEqual(reply.json["result"]["yanked"], "wrong tag")
        self.assertEqual(reply.json["message"], f"file '{self.wheel}' yanked")
        self.assertEqual(self.simple_json(), {"pkg-1.0.tar.gz": None, "pkg-1.0-py3-none-any.whl": "wrong tag"})
        reply = self.request("PATCH", f"/{self.wheel}", {"yanked": False}, auth=ALICE)
        self.assertEqual(reply.code, 200)
        self.assertNotIn("yanked", reply.json["result"])
        self.assertEqual(set(self.simple_json().values()), {None})

    def test_yank_survives_a_new_registration_but_not_a_push(self) -> None:
        self.request("PATCH", "/alice/dev/pkg/1.0", {"yanked": "bad"}, auth=ALICE)
        form = [(":action", "submit"), ("name", "pkg"), ("version", "1.0"), ("summary", "new")]
        self.assertEqual(self.post_form("/alice/dev/", form, []).code, 200)
        self.assertEqual(set(self.simple_json().values()), {"bad"})
        self.add_index("alice", "prod")
        reply = self.request("PUSH", "/alice/dev", {"name": "pkg", "version": "1.0", "targetindex": "alice/prod"},
                             auth=ALICE)
        self.assertEqual(reply.code, 200, reply.body)
        pushed = self.stored(version_key("alice", "prod", "pkg", "1.0"))
        self.assertEqual([link.get("yanked") for link in pushed["+elinks"]], [None, None, None])

    def test_permissions(self) -> None:
        self.request("PATCH", "/alice/dev", ["acl_upload+=carol"], auth=ALICE)
        for path in ("/alice/dev/pkg/1.0", f"/{self.sdist}"):
            serial = self.server.store.serial
            for auth in (None, BOB):
                reply = self.request("PATCH", path, {"yanked": True}, auth=auth)
                self.assertEqual((reply.code, reply.json["code"]), (403, 403), (path, auth))
            self.assertUnchanged(serial)
            for auth in (ALICE, CAROL, self.root()):
                self.assertEqual(self.request("PATCH", path, {"yanked": str(auth[0])}, auth=auth).code, 200)

    def test_bad_requests(self) -> None:
        serial = self.server.store.serial
        tox = self.request("POST", f"/{self.sdist}", raw=b"{}").json["result"].split("#")[0]
        serial = self.server.store.serial
        too_long = "x" * (MAX_YANK_REASON_CHARS + 1)
        cases: list[tuple[str, Any, int, str]] = [
            ("/alice/dev/pkg/1.0", b"{", 400, "Bad request: could not decode json"),
            ("/alice/dev/pkg/1.0", ["yanked"], 400, 'yank request must be a JSON object like {"yanked": "reason"}'),
            ("/alice/dev/pkg/1.0", {}, 400, "yank request needs the key 'yanked' (true, false or a reason)"),
            ("/alice/dev/pkg/1.0", {"yanked": True, "why": 1}, 400, "unknown keys in yank request: why"),
            ("/alice/dev/pkg/1.0", {"yanked": 1}, 400, "'yanked' must be true, false or a reason string"),
            ("/alice/dev/pkg/1.0", {"yanked": too_long}, 400,
             f"yank reason is longer than {MAX_YANK_REASON_CHARS} characters"),
            ("/alice/dev/pkg/2.0", {"yanked": True}, 404, "The version 2.0 of project pkg does not exist."),
            ("/alice/dev/nope/1.0", {"yanked": True}, 404, "The version 1.0 of project nope does not exist."),
            (f"/{self.doc}", {"yanked": True}, 400, f"only release files can be yanked, not '{self.doc}'"),
            (f"/{tox}", {"yanked": True}, 400, f"only release files can be yanked, not '{tox}'"),
            ("/alice/dev/+f/000/0000000000000/pkg-2.0.tar.gz", {"yanked": True}, 404,
             "package 'alice/dev/+f/000/0000000000000/pkg-2.0.tar.gz' doesn't exist"),
            ("/alice/missing/pkg/1.0", {"yanked": True}, 404, "The stage alice/missing could not be found."),
        ]
        for path, body, code, message in cases:
            raw = body if isinstance(body, bytes) else None
            reply = self.request("PATCH", path, None if raw else body, raw=raw, auth=ALICE)
            self.assertEqual((reply.code, reply.message), (code, message), (path, body))
        reply = self.request("PATCH", "/root/pypi/pkg/1.0", {"yanked": True}, auth=self.root())
        self.assertEqual((reply.code, reply.message), (400, "cannot yank on mirror index root/pypi"))
        self.assertUnchanged(serial)

    def test_deleted_file(self) -> None:
        relpath = self.upload("vol", "pkg", "1.0")
        self.request("DELETE", f"/{relpath}", auth=ALICE)
        serial = self.server.store.serial
        reply = self.request("PATCH", f"/{relpath}", {"yanked": True}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (410, f"file '{relpath}' existed, deleted in later serial"))
        self.assertUnchanged(serial)

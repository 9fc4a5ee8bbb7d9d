"""Writes on ``+f`` file URLs: toxresult upload and file deletion (http-api.md §3.14, model.md §5.4, §7)."""
from __future__ import annotations

import hashlib
import json

from devpitx.storage.keys import file_key, project_key, version_key
from devpitx.web.fileops import MAX_TOXRESULT_BYTES, TOXRESULT_FORBIDDEN
from tests.helpers.testserver import BASE
from tests.web.test_projects import ALICE, BOB, CAROL, ReleaseTestCase

REPORT = {"reportversion": "1", "host": "ci", "platform": "linux",
          "testenvs": {"py311": {"test": [{"command": ["pytest"], "retcode": "0", "output": "ok"}]}}}


class ToxresultTests(ReleaseTestCase):
    def post_report(self, relpath: str, raw: bytes | None = None, *, auth: tuple[str, str] | None = None,
                    accept: str | None = "application/json") -> tuple[int, dict[str, str], bytes]:
        reply = self.request("POST", f"/{relpath}", raw=raw if raw is not None else json.dumps(REPORT).encode(),
                             auth=auth, accept=accept, headers={"Content-Type": "application/json"})
        return reply.code, reply.headers, reply.body

    def test_upload_names_links_and_serves_the_raw_body(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        raw = b'{"host": "ci",  "testenvs": {}}'      # odd spacing: stored as sent
        serial = self.server.store.serial
        code, headers, body = self.post_report(relpath, raw)
        self.assertEqual(code, 200, body)
        self.assertEqual(headers["x-devpi-serial"], str(serial + 1))
        result = json.loads(body)
        self.assertEqual(result["type"], "toxresultpath")
        stamp = "20231114221320"    # the test clock: 1_700_000_000
        sha = hashlib.sha256(raw).hexdigest()
        self.assertEqual(result["result"], f"{relpath}.toxresult-{stamp}-0#sha256={sha}")
        toxpath = f"{relpath}.toxresult-{stamp}-0"
        self.assertEqual((self.server.store.blobs.relpath_path(toxpath)).read_bytes(), raw)
        meta = self.request("GET", f"/{toxpath}").json["result"]
        self.assertEqual((meta["project"], meta["version"], meta["hashes"]), ("pkg", "1.0", {"sha256": sha}))
        # a second report for the same file counts up
        code, _headers, body = self.post_report(relpath)
        self.assertEqual(json.loads(body)["result"].split("#")[0], f"{relpath}.toxresult-{stamp}-1")
        links = self.request("GET", "/alice/dev/pkg").json["result"]["1.0"]["+links"]
        tox = [link for link in links if link["rel"] == "toxresult"]
        self.assertEqual(len(tox), 2)
        self.assertEqual({link["for_href"] for link in tox}, {f"{BASE}/{relpath}"})
        self.assertEqual(tox[0]["href"], f"{BASE}/{toxpath}")
        self.assertEqual([(e["what"], e["who"]) for e in tox[0]["log"]], [("upload", None)])

    def test_authenticated_uploader_is_logged(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        self.assertEqual(self.post_report(relpath, auth=BOB)[0], 200)
        versiondata = self.stored(version_key("alice", "dev", "pkg", "1.0"))
        self.assertEqual(versiondata["+elinks"][-1]["_log"][0]["who"], "bob")

    def test_forbidden(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        self.request("PATCH", "/alice/dev", ["acl_toxresult_upload="], auth=ALICE)
        serial = self.server.store.serial
        for auth in (None, BOB, ALICE):
            code, headers, body = self.post_report(relpath, auth=auth, accept=None)
            self.assertEqual(code, 403)
            self.assertEqual(headers["content-type"], "application/json")    # even without Accept
            self.assertEqual(json.loads(body)["message"], TOXRESULT_FORBIDDEN)
        self.request("PATCH", "/alice/dev", ["acl_toxresult_upload=:AUTHENTICATED:"], auth=ALICE)
        serial = self.server.store.serial
        self.assertEqual(self.post_report(relpath)[0], 403)
        self.assertUnchanged(serial)
        self.assertEqual(self.post_report(relpath, auth=CAROL)[0], 200)

    def test_not_a_release_file(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        doc = self.upload_doc("dev", "pkg", "1.0")
        toxpath = json.loads(self.post_report(relpath)[2])["result"].split("#")[0]
        serial = self.server.store.serial
        missing = "alice/dev/+f/000/0000000000000/pkg-9.0.tar.gz"
        wrong_index = relpath.replace("alice/dev/", "alice/vol/", 1)
        for target in (missing, doc, toxpath, wrong_index, "alice/dev/+e/https_host/pkg-1.0.zip"):
            code, _headers, body = self.post_report(target)
            self.assertEqual((code, json.loads(body)["message"]), (404, f"no release file found at {target}"))
        self.assertUnchanged(serial)

    def test_bad_body(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        serial = self.server.store.serial
        for raw in (b"", b"{not json", b'{"a": NaN}', b"\xff\xfe"):
            code, _headers, body = self.post_report(relpath, raw)
            self.assertEqual((code, json.loads(body)["message"]), (400, "Bad request: could not decode json"), raw)
        self.assertEqual(self.post_report(relpath, b"x" * (MAX_TOXRESULT_BYTES + 1))[0], 413)
        self.assertEqual(self.post_report("alice/missing/+f/a/b/pkg-1.0.tar.gz")[0], 404)
        self.assertUnchanged(serial)

    def test_replacing_the_release_file_drops_its_toxresults(self) -> None:
        relpath = self.upload("vol", "pkg", "1.0")
        toxpath = json.loads(self.post_report(relpath)[2])["result"].split("#")[0]
        self.upload("vol", "pkg", "1.0", content=b"a new build")
        self.assertEqual(self.file_code(toxpath), 410)


class DeleteFileTests(ReleaseTestCase):
    def test_delete_one_of_two_files(self) -> None:
        sdist = self.upload("vol", "pkg", "1.0")
        wheel = self.upload_wheel("vol", "pkg", "1.0")
        raw = json.dumps({"testenvs": {}}).encode()
        tox = self.request("POST", f"/{sdist}", raw=raw).json["result"].split("#")[0]
        serial = self.server.store.serial
        reply = self.request("DELETE", f"/{sdist}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, f"package '{sdist}' deleted"))
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertEqual((self.file_code(sdist), self.file_code(tox), self.file_code(wheel)), (410, 410, 200))
        links = self.request("GET", "/alice/vol/pkg/1.0").json["result"]["+links"]
        self.assertEqual([link["href"] for link in links], [f"{BASE}/{wheel}"])
        self.assertEqual(self.stored(file_key(sdist)), {})
        # 410 forever after, also for a second DELETE
        reply = self.request("DELETE", f"/{sdist}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (410, f"file '{sdist}' existed, deleted in later serial"))

    def test_last_file_takes_version_and_project_along(self) -> None:
        relpath = self.upload("vol", "pkg", "1.0")
        self.assertEqual(self.request("DELETE", f"/{relpath}", auth=ALICE).code, 200)
        self.assertIsNone(self.stored(version_key("alice", "vol", "pkg", "1.0")))
        self.assertIsNone(self.stored(project_key("alice", "vol", "pkg")))
        self.assertEqual(self.projects("vol"), [])

    def test_doczip_and_toxresult_can_be_deleted_alone(self) -> None:
        relpath = self.upload("vol", "pkg", "1.0")
        doc = self.upload_doc("vol", "pkg", "1.0")
        tox = self.request("POST", f"/{relpath}", raw=b"{}").json["result"].split("#")[0]
        for target in (doc, tox):
            self.assertEqual(self.request("DELETE", f"/{target}", auth=ALICE).code, 200, target)
        links = self.request("GET", "/alice/vol/pkg/1.0").json["result"]["+links"]
        self.assertEqual([link["rel"] for link in links], ["releasefile"])

    def test_non_volatile_needs_force(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        serial = self.server.store.serial
        reply = self.request("DELETE", f"/{relpath}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (403, "cannot delete version on non-volatile index"))
        self.assertUnchanged(serial)
        self.assertEqual(self.request("DELETE", f"/{relpath}?force", auth=ALICE).code, 200)
        self.assertEqual(self.file_code(relpath), 410)

    def test_unknown_file(self) -> None:
        serial = self.server.store.serial
        relpath = "alice/vol/+f/000/0000000000000/pkg-1.0.tar.gz"
        reply = self.request("DELETE", f"/{relpath}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, f"package '{relpath}' doesn't exist"))
        reply = self.request("DELETE", "/alice/missing/+f/000/0000000000000/pkg-1.0.tar.gz", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/missing could not be found."))
        self.assertUnchanged(serial)

    def test_permissions(self) -> None:
        self.request("PATCH", "/alice/vol", ["acl_upload+=carol"], auth=ALICE)
        for who, auth, expected in (("anonymous", None, 403), ("bob", BOB, 403), ("alice", ALICE, 200),
                                    ("carol", CAROL, 200), ("root", self.root(), 200)):
            relpath = self.upload("vol", "pkg", "1.0", content=who.encode())
            serial = self.server.store.serial
            reply = self.request("DELETE", f"/{relpath}", auth=auth)
            self.assertEqual(reply.code, expected, who)
            if expected == 403:
                self.assertEqual(reply.json["code"], 403)      # framework shape
                self.assertUnchanged(serial)

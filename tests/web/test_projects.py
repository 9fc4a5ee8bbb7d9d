"""Project and version routes ``/U/I/P`` and ``/U/I/P/V``: JSON views and deletion (http-api.md §3.12, §3.13).

``ReleaseTestCase`` (uploads through the real upload route) is shared by the
file-operation, push and yank tests.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, cast

from devpitx.model.ixconfig import new_index_config
from devpitx.model import views
from devpitx.model.users import new_user_record
from devpitx.storage.keys import file_key, index_key, mirrorlinks_key, project_key, user_key, version_key
from devpitx.web import projects as projects_area
from devpitx.web.simplepages import page_cache
from tests.helpers.forms import multipart, upload_fields, wheel_bytes
from tests.helpers.testserver import BASE, cheap_hash
from tests.mirror.harness import MirrorCase
from tests.web.test_api import Reply, ServerTestCase

ALICE = ("alice", "secret")
BOB = ("bob", "bobpw")
CAROL = ("carol", "carolpw")


class ReleaseTestCase(ServerTestCase):
    """alice owns ``alice/dev`` (non-volatile) and ``alice/vol`` (volatile); bob and carol exist."""

    def setUp(self) -> None:
        super().setUp()
        self.add_user("alice", "secret")
        self.add_user("bob", "bobpw")
        self.add_user("carol", "carolpw")
        self.add_index("alice", "dev", volatile=False)
        self.add_index("alice", "vol")

    def post_form(self, path: str, fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]],
                  auth: tuple[str, str] | None = ALICE) -> Reply:
        body, content_type = multipart(fields, files)
        return self.request("POST", path, raw=body, auth=auth, headers={"Content-Type": content_type})

    def upload(self, index: str, name: str, version: str, *, filename: str | None = None,
               content: bytes | None = None, user: str = "alice", auth: tuple[str, str] | None = ALICE,
               extra: Sequence[tuple[str, str]] = ()) -> str:
        """Upload an sdist (or the given file) and return its relpath."""
        filename = filename or f"{name}-{version}.tar.gz"
        content = content if content is not None else f"{filename} in {index}".encode()
        reply = self.post_form(f"/{user}/{index}/", upload_fields(name, version, content, extra=extra),
                               [("content", filename, content)], auth=auth)
        self.assertEqual(reply.code, 200, reply.body)
        sha = hashlib.sha256(content).hexdigest()
        return f"{user}/{index}/+f/{sha[:3]}/{sha[3:16]}/{filename}"

    def upload_wheel(self, index: str, name: str, version: str) -> str:
        filename, data, _metadata = wheel_bytes(name, version)
        return self.upload(index, name, version, filename=filename, content=data)

    def upload_doc(self, index: str, name: str, version: str, content: bytes = b"PK\x05\x06" + bytes(18)) -> str:
        fields = upload_fields(name, version, content, action="doc_upload")
        reply = self.post_form(f"/alice/{index}/", fields, [("content", "docs.zip", content)])
        self.assertEqual(reply.code, 200, reply.body)
        sha = hashlib.sha256(content).hexdigest()
        return f"alice/{index}/+f/{sha[:3]}/{sha[3:16]}/{name}-{version}.doc.zip"

    def stored(self, key: str) -> Any:
        """The stored record (``{}`` for a deleted file entry, None if absent)."""
        return self.server.store.get(key)

    def file_code(self, relpath: str) -> int:
        return self.request("HEAD", f"/{relpath}", accept=None).code   # no body: no producer to drive

    def projects(self, index: str) -> list[str]:
        result: list[str] = self.request("GET", f"/alice/{index}").json["result"]["projects"]
        return result

    def assertForbidden(self, reply: Reply, serial: int) -> None:
        self.assertEqual(reply.code, 403, reply.body)
        self.assertUnchanged(serial)


class ProjectGetTests(ReleaseTestCase):
    def test_links_are_absolute_with_logs(self) -> None:
        sdist = self.upload("dev", "Hello_Pkg", "1.0")
        wheel = self.upload_wheel("dev", "hello-pkg", "1.0")
        reply = self.request("GET", "/alice/dev/hello-pkg/")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json["type"], "projectconfig")
        data = reply.json["result"]["1.0"]
        self.assertEqual((data["name"], data["version"]), ("hello-pkg", "1.0"))   # the last upload's name
        self.assertNotIn("+elinks", data)
        self.assertNotIn("+shadowing", data)
        links = {link["href"]: link for link in data["+links"]}
        self.assertEqual(set(links), {f"{BASE}/{sdist}", f"{BASE}/{wheel}"})
        link = links[f"{BASE}/{sdist}"]
        sha = hashlib.sha256(b"Hello_Pkg-1.0.tar.gz in dev").hexdigest()
        self.assertEqual(link["rel"], "releasefile")
        self.assertEqual((link["hash_spec"], link["hashes"]), (f"sha256={sha}", {"sha256": sha}))
        self.assertEqual([(e["what"], e["who"], e["dst"]) for e in link["log"]], [("upload", "alice", "alice/dev")])
        self.assertNotIn("entrypath", link)
        self.assertNotIn("_log", link)
        self.assertEqual(self.request("GET", "/alice/dev/hello-pkg").json, reply.json)

    def test_hrefs_use_the_outside_url_with_its_prefix(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        headers = {"X-Outside-Url": "http://outside.example/devpi"}
        for path in ("/alice/dev/pkg/", "/devpi/alice/dev/pkg/"):
            reply = self.request("GET", path, headers=headers)
            self.assertEqual(reply.code, 200, path)
            hrefs = [link["href"] for link in reply.json["result"]["1.0"]["+links"]]
            self.assertEqual(hrefs, [f"http://outside.example/devpi/{relpath}"])

    def test_versions_through_bases_with_shadowing(self) -> None:
        self.add_index("alice", "prod")
        self.request("PATCH", "/alice/dev", ["bases+=alice/prod"], auth=ALICE)
        prod_10 = self.upload("prod", "pkg", "1.0")
        self.upload("prod", "pkg", "0.9")
        dev_10 = self.upload("dev", "pkg", "1.0", content=b"dev build")
        self.upload("dev", "pkg", "2.0")
        result = self.request("GET", "/alice/dev/pkg/").json["result"]
        self.assertEqual(list(result), ["0.9", "1.0", "2.0"])
        self.assertEqual([link["href"] for link in result["1.0"]["+links"]], [f"{BASE}/{dev_10}"])
        shadowed = result["1.0"]["+shadowing"]
        self.assertEqual([[link["href"] for link in s["+links"]] for s in shadowed], [[f"{BASE}/{prod_10}"]])
        self.assertNotIn("+shadowing", result["2.0"])
        own = self.request("GET", "/alice/dev/pkg/?ignore_bases=").json["result"]
        self.assertEqual(list(own), ["1.0", "2.0"])
        self.assertNotIn("+shadowing", own["1.0"])
        # a project only in the base: known (200, empty) with ignore_bases, listed without
        self.upload("prod", "other", "1.0")
        self.assertEqual(self.request("GET", "/alice/dev/other?ignore_bases").json["result"], {})
        self.assertEqual(list(self.request("GET", "/alice/dev/other").json["result"]), ["1.0"])

    def test_registered_version_without_files(self) -> None:
        reply = self.post_form("/alice/dev/", [(":action", "submit"), ("name", "pkg"), ("version", "3.0")], [])
        self.assertEqual(reply.code, 200)
        result = self.request("GET", "/alice/dev/pkg").json["result"]
        self.assertEqual(result["3.0"]["+links"], [])

    def test_accept_rules(self) -> None:
        self.upload("dev", "pkg", "1.0")
        for accept in ("*/*", None, "application/*"):
            reply = self.request("GET", "/alice/dev/pkg", accept=accept)
            self.assertEqual(reply.code, 415, accept)
            self.assertTrue(reply.message.startswith("unsupported media type"), reply.message)
        self.assertEqual(self.request("GET", "/alice/dev/pkg", accept="text/html").code, 404)

    def test_not_found(self) -> None:
        reply = self.request("GET", "/alice/dev/nope/")
        self.assertEqual((reply.code, reply.message), (404, "no project 'nope'"))
        reply = self.request("GET", "/alice/missing/pkg")
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/missing could not be found."))

    def test_non_normalized_name_redirects(self) -> None:
        self.upload("dev", "hello-pkg", "1.0")
        cases = [("/alice/dev/Hello_Pkg/?ignore_bases=", f"{BASE}/alice/dev/hello-pkg/"),
                 ("/alice/dev/Hello.Pkg", f"{BASE}/alice/dev/hello-pkg"),
                 ("/alice/dev/Hello_Pkg/1.0", f"{BASE}/alice/dev/hello-pkg/1.0")]
        for path, location in cases:
            response = self.successResultOf(cast(Any, self.http).get(BASE + path, allow_redirects=False,
                                                          headers={"Accept": "application/json"}))
            self.assertEqual((response.code, response.headers.getRawHeaders("location")), (302, [location]), path)

    def test_other_methods_are_404(self) -> None:
        self.upload("dev", "pkg", "1.0")
        serial = self.server.store.serial
        for method in ("PUT", "POST", "PATCH"):
            self.assertEqual(self.request(method, "/alice/dev/pkg", {}, auth=ALICE).code, 404, method)
        self.assertEqual(self.request("PUT", "/alice/dev/pkg/1.0", {}, auth=ALICE).code, 404)
        self.assertUnchanged(serial)


class VersionGetTests(ReleaseTestCase):
    def test_versiondata_with_shadowing(self) -> None:
        self.add_index("alice", "prod")
        self.request("PATCH", "/alice/dev", ["bases+=alice/prod"], auth=ALICE)
        prod = self.upload("prod", "pkg", "1.0")
        dev = self.upload("dev", "pkg", "1.0", content=b"other")
        reply = self.request("GET", "/alice/dev/pkg/1.0")
        self.assertEqual(reply.json["type"], "versiondata")
        result = reply.json["result"]
        self.assertEqual([link["href"] for link in result["+links"]], [f"{BASE}/{dev}"])
        self.assertEqual([link["href"] for link in result["+shadowing"][0]["+links"]], [f"{BASE}/{prod}"])
        self.assertEqual(self.request("GET", "/alice/dev/pkg/1.0/").json, reply.json)

    def test_missing_version(self) -> None:
        self.upload("dev", "pkg", "1.0")
        reply = self.request("GET", "/alice/dev/pkg/9.9")
        self.assertEqual((reply.code, reply.message), (404, "The version 9.9 of project pkg does not exist."))
        self.assertEqual(self.request("GET", "/alice/dev/pkg/1.0", accept="text/html").code, 404)


class DeleteProjectTests(ReleaseTestCase):
    def test_delete_on_volatile_index(self) -> None:
        first = self.upload("vol", "pkg", "1.0")
        second = self.upload("vol", "pkg", "2.0")
        self.upload("vol", "other", "1.0")
        serial = self.server.store.serial
        reply = self.request("DELETE", "/alice/vol/pkg", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, "project pkg deleted from stage alice/vol"))
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        self.assertEqual(self.projects("vol"), ["other"])
        self.assertEqual((self.file_code(first), self.file_code(second)), (410, 410))
        self.assertIsNone(self.stored(version_key("alice", "vol", "pkg", "1.0")))
        self.assertEqual(self.request("GET", "/alice/vol/pkg").code, 404)

    def test_non_volatile_needs_force(self) -> None:
        relpath = self.upload("dev", "Pkg", "1.0")
        serial = self.server.store.serial
        reply = self.request("DELETE", "/alice/dev/Pkg/", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (403, "project 'pkg' is on non-volatile index alice/dev"))
        self.assertUnchanged(serial)
        reply = self.request("DELETE", "/alice/dev/Pkg/?force=", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, "project pkg deleted from stage alice/dev"))
        self.assertEqual(self.file_code(relpath), 410)
        self.assertIsNone(self.stored(project_key("alice", "dev", "pkg")))

    def test_not_found(self) -> None:
        serial = self.server.store.serial
        for path in ("/alice/vol/nope", "/alice/dev/nope?force", "/root/pypi/pkg?force"):
            reply = self.request("DELETE", path, auth=self.root() if "root" in path else ALICE)
            self.assertEqual((reply.code, reply.message), (404, "project not found"), path)
        reply = self.request("DELETE", "/alice/missing/pkg", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/missing could not be found."))
        self.assertUnchanged(serial)

    def test_permissions(self) -> None:
        self.request("PATCH", "/alice/vol", ["acl_upload+=carol"], auth=ALICE)
        allowed = {"anonymous": False, "bob": False, "alice": True, "carol": True, "root": True}
        for who, expected in allowed.items():
            self.upload("vol", "pkg", "1.0")
            auth = {"anonymous": None, "bob": BOB, "alice": ALICE, "carol": CAROL, "root": self.root()}[who]
            serial = self.server.store.serial
            reply = self.request("DELETE", "/alice/vol/pkg", auth=auth)
            if expected:
                self.assertEqual(reply.code, 200, who)
            else:
                self.assertForbidden(reply, serial)
                self.assertEqual(reply.json["code"], 403)   # framework shape


class RestrictModifyTests(ReleaseTestCase):
    restrict_modify = ("carol",)

    def setUp(self) -> None:
        ServerTestCase.setUp(self)
        # With --restrict-modify only carol may create users and indexes: write them directly.
        with self.server.store.write() as tx:
            for name, password in (ALICE, BOB, CAROL):
                tx.set(user_key(name), new_user_record(cheap_hash(password), {}, tx.at))
            tx.set(index_key("alice", "rm"), new_index_config("alice", {}, base_exists=lambda b: True))

    def test_delete_and_yank_permissions(self) -> None:
        # del_*: acl_upload principals (alice) plus the restrict-modify list (carol); not root
        for who, auth, expected in (("root", self.root(), 403), ("bob", BOB, 403), ("anonymous", None, 403),
                                    ("carol", CAROL, 200), ("alice", ALICE, 200)):
            relpath = self.upload("rm", "pkg", "1.0", content=who.encode())
            for method, path, body in (("PATCH", "/alice/rm/pkg/1.0", {"yanked": True}),
                                       ("PATCH", f"/{relpath}", {"yanked": False}),
                                       ("DELETE", f"/{relpath}?force", None),
                                       ("DELETE", "/alice/rm/pkg/1.0?force", None),
                                       ("DELETE", "/alice/rm/pkg?force", None)):
                if method == "DELETE" and expected == 200:
                    self.upload("rm", "pkg", "1.0", content=who.encode())
                serial = self.server.store.serial
                reply = self.request(method, path, body, auth=auth)
                self.assertEqual(reply.code, expected, (who, method, path))
                if expected == 403:
                    self.assertUnchanged(serial)


class DeleteVersionTests(ReleaseTestCase):
    def test_delete_on_volatile_index(self) -> None:
        old = self.upload("vol", "pkg", "1.0")
        self.upload_doc("vol", "pkg", "1.0")
        new = self.upload("vol", "pkg", "2.0")
        reply = self.request("DELETE", "/alice/vol/pkg/1.0", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, "project 'pkg' version '1.0' deleted"))
        self.assertEqual(list(self.request("GET", "/alice/vol/pkg").json["result"]), ["2.0"])
        self.assertEqual((self.file_code(old), self.file_code(new)), (410, 200))
        reply = self.request("DELETE", "/alice/vol/pkg/2.0/", auth=ALICE)
        self.assertEqual(reply.code, 200)
        self.assertEqual(self.projects("vol"), [])

    def test_non_volatile_needs_force(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        serial = self.server.store.serial
        reply = self.request("DELETE", "/alice/dev/pkg/1.0", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (403, "cannot delete version on non-volatile index"))
        self.assertUnchanged(serial)
        self.assertEqual(self.request("DELETE", "/alice/dev/pkg/1.0?force", auth=ALICE).code, 200)
        self.assertEqual(self.file_code(relpath), 410)

    def test_not_found(self) -> None:
        self.upload("vol", "pkg", "1.0")
        serial = self.server.store.serial
        for path in ("/alice/vol/pkg/2.0", "/alice/vol/nope/1.0"):
            reply = self.request("DELETE", path, auth=ALICE)
            self.assertEqual(reply.code, 404, path)
        self.assertEqual(self.request("DELETE", "/alice/vol/pkg/2.0", auth=ALICE, accept="text/html").code, 404)
        self.assertUnchanged(serial)

    def test_permissions(self) -> None:
        self.upload("vol", "pkg", "1.0")
        serial = self.server.store.serial
        for auth in (None, BOB):
            reply = self.request("DELETE", "/alice/vol/pkg/1.0", auth=auth)
            self.assertForbidden(reply, serial)
        self.assertEqual(self.request("DELETE", "/alice/vol/pkg/1.0", auth=self.root()).code, 200)


def add_mirror(case: ReleaseTestCase, cached: tuple[str, ...] = ("pkg-1.0.tar.gz", "pkg-2.0.tar.gz",
                                                                  "pkg-2.0-py3-none-any.whl")) -> dict[str, str]:
    """Mirror ``alice/mirror`` with a link record of ``pkg`` (1.0 sdist, 2.0 sdist and wheel) whose
    ``cached`` files are downloaded already; returns basename -> relpath."""
    case.add_index("alice", "mirror", type="mirror", mirror_url="http://127.0.0.1:9/simple/")
    files: dict[str, str] = {}
    with case.server.store.write() as tx:
        links = []
        for basename in ("pkg-1.0.tar.gz", "pkg-2.0.tar.gz", "pkg-2.0-py3-none-any.whl"):
            content = basename.encode()
            sha = hashlib.sha256(content).hexdigest()
            relpath = f"alice/mirror/+f/{sha[:3]}/{sha[3:16]}/{basename}"
            links.append([basename, f"{relpath}#sha256={sha}"])
            files[basename] = relpath
            if basename in cached:
                case.server.store.blobs.put_bytes(content)
                tx.set(file_key(relpath), {"hash_spec": f"sha256={sha}", "hashes": {"sha256": sha},
                                           "last_modified": "Tue, 14 Nov 2023 22:13:20 GMT", "project": "pkg",
                                           "version": basename.split("-")[1].removesuffix(".tar.gz"),
                                           "url": f"http://127.0.0.1:9/files/{basename}"})
                tx.add_blob(sha)
        tx.set(mirrorlinks_key("alice", "mirror", "pkg"), {
            "links": links, "requires_python": [None, None, ">=3.8"], "yanked": [None, None, "bad"],
            "serial": 7, "etag": None, "+urls": [f"http://127.0.0.1:9/files/{b}" for b, _path in links]})
    return files


class MirrorTests(ReleaseTestCase):
    """Mirror data comes from link records (without an HTTP client the server is offline)."""

    def setUp(self) -> None:
        super().setUp()
        self.files = add_mirror(self)
        self.request("PATCH", "/alice/vol", ["bases=alice/mirror"], auth=ALICE)

    def test_mirror_versions_in_the_project_view(self) -> None:
        self.upload("vol", "other", "1.0")
        result = self.request("GET", "/alice/vol/pkg/").json["result"]
        self.assertEqual(list(result), ["1.0", "2.0"])
        self.assertEqual(result["2.0"]["name"], "pkg")
        hrefs = sorted(link["href"] for link in result["2.0"]["+links"])
        self.assertEqual(hrefs, sorted(f"{BASE}/{self.files[b]}" for b in ("pkg-2.0.tar.gz",
                                                                           "pkg-2.0-py3-none-any.whl")))
        self.assertEqual(result["2.0"]["yanked"], "bad")
        # a private pkg shadows the mirror (not whitelisted)
        self.upload("vol", "pkg", "3.0")
        self.assertEqual(list(self.request("GET", "/alice/vol/pkg/").json["result"]), ["3.0"])

    def test_delete_version_drops_cached_content_only(self) -> None:
        reply = self.request("DELETE", "/alice/mirror/pkg/2.0", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, "project 'pkg' version '2.0' deleted"))
        self.assertIsNone(self.stored(file_key(self.files["pkg-2.0.tar.gz"])))
        self.assertIsNotNone(self.stored(file_key(self.files["pkg-1.0.tar.gz"])))
        self.assertIsNotNone(self.stored(mirrorlinks_key("alice", "mirror", "pkg")))
        # the link is still there and its entry derived from the record again (downloadable)
        meta = self.request("GET", f"/{self.files['pkg-2.0.tar.gz']}").json["result"]
        self.assertNotIn("last_modified", meta)
        serial = self.server.store.serial
        self.assertEqual(self.request("DELETE", "/alice/mirror/pkg/9.0", auth=ALICE).code, 404)
        self.assertUnchanged(serial)

    def test_delete_project(self) -> None:
        serial = self.server.store.serial
        self.assertEqual(self.request("DELETE", "/alice/mirror/nope", auth=ALICE).json["message"], "project not found")
        self.assertUnchanged(serial)
        reply = self.request("DELETE", "/alice/mirror/pkg", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, "project pkg deleted from stage alice/mirror"))
        self.assertIsNone(self.stored(mirrorlinks_key("alice", "mirror", "pkg")))
        self.assertEqual([self.stored(file_key(r)) for r in self.files.values()], [None, None, None])

    def test_delete_file(self) -> None:
        wheel = self.files["pkg-2.0-py3-none-any.whl"]
        reply = self.request("DELETE", f"/{wheel}", auth=ALICE)
        self.assertEqual((reply.code, reply.message), (200, f"package '{wheel}' deleted"))
        self.assertIsNone(self.stored(file_key(wheel)))
        self.assertIsNotNone(self.stored(mirrorlinks_key("alice", "mirror", "pkg")))
        # no cached file left: the record goes too
        for basename in ("pkg-1.0.tar.gz", "pkg-2.0.tar.gz"):
            self.assertEqual(self.request("DELETE", f"/{self.files[basename]}", auth=ALICE).code, 200)
        self.assertIsNone(self.stored(mirrorlinks_key("alice", "mirror", "pkg")))

    def test_yank_is_refused(self) -> None:
        reply = self.request("PATCH", "/alice/mirror/pkg/2.0", {"yanked": True}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (400, "cannot yank on mirror index alice/mirror"))


class DocTests(ReleaseTestCase):
    def test_doczip_is_linked_and_served(self) -> None:
        self.upload("dev", "Pkg", "1.0")
        self.upload("dev", "Pkg", "2.0")
        content = b"PK\x05\x06" + bytes(18)
        fields = [(":action", "doc_upload"), ("name", "Pkg")]     # no version: the latest one
        self.assertEqual(self.post_form("/alice/dev/", fields, [("content", "x.zip", content)]).code, 200)
        links = self.request("GET", "/alice/dev/pkg/2.0").json["result"]["+links"]
        (doc,) = [link for link in links if link["rel"] == "doczip"]
        sha = hashlib.sha256(content).hexdigest()
        self.assertEqual(doc["href"], f"{BASE}/alice/dev/+f/{sha[:3]}/{sha[3:16]}/pkg-2.0.doc.zip")
        served = self.request("HEAD", doc["href"][len(BASE):], accept=None)
        self.assertEqual((served.code, served.headers["content-type"], served.headers["content-length"]),
                         (200, "application/zip", str(len(content))))
        # not a release: never in simple pages
        page = self.request("GET", "/alice/dev/+simple/pkg/", accept="text/html").body
        self.assertNotIn(b".doc.zip", page)


class ViewCacheTests(ReleaseTestCase):
    """The JSON views are rendered once per change of what they show, in the simple pages' cache."""

    def setUp(self) -> None:
        super().setUp()
        self.builds: list[str] = []
        real_project_view, real_version_view = views.project_view, views.version_view

        def project_view(*args: Any, **kwargs: Any) -> Any:
            self.builds.append("project")
            return real_project_view(*args, **kwargs)

        def version_view(*args: Any, **kwargs: Any) -> Any:
            self.builds.append("version")
            return real_version_view(*args, **kwargs)

        self.patch(projects_area, "project_view", project_view)
        self.patch(projects_area, "version_view", version_view)

    def versions(self, path: str) -> list[str]:
        reply = self.request("GET", path)
        self.assertEqual(reply.code, 200, reply.body)
        return list(reply.json["result"])

    def test_one_cache_with_the_simple_pages(self) -> None:
        simple = self.server.router.handler_for("simple.project").__self__  # type: ignore[union-attr]
        projects = self.server.router.handler_for("projects.project").__self__  # type: ignore[union-attr]
        self.assertIs(simple.pages, projects.pages)
        self.assertIs(projects.pages, page_cache(self.server.store))

    def test_project_view_is_built_once_per_change(self) -> None:
        self.upload("dev", "pkg", "1.0")
        first = self.request("GET", "/alice/dev/pkg")
        for path in ("/alice/dev/pkg", "/alice/dev/pkg/", "/alice/dev/pkg"):
            self.assertEqual(self.request("GET", path).body, first.body)
        self.assertEqual(self.builds, ["project"])
        self.request("GET", "/alice/dev/pkg?ignore_bases")        # another variant, another entry
        self.assertEqual(self.builds, ["project"] * 2)
        self.upload("dev", "other", "1.0")
        self.assertEqual(self.versions("/alice/dev/pkg"), ["1.0"])
        self.assertEqual(self.builds, ["project"] * 2)               # other projects do not invalidate
        self.upload("dev", "pkg", "1.1")
        self.assertEqual(self.versions("/alice/dev/pkg"), ["1.0", "1.1"])
        self.assertEqual(self.builds, ["project"] * 3)

    def test_version_view_is_built_once_per_change(self) -> None:
        self.upload("vol", "pkg", "1.0")
        first = self.request("GET", "/alice/vol/pkg/1.0")
        self.assertEqual(self.request("GET", "/alice/vol/pkg/1.0").body, first.body)
        self.assertEqual(self.builds, ["version"])
        reply = self.request("PATCH", "/alice/vol/pkg/1.0", {"yanked": "broken"}, auth=ALICE)
        self.assertEqual(reply.code, 200, reply.body)
        self.builds.clear()
        self.assertEqual(self.request("GET", "/alice/vol/pkg/1.0").json["result"]["+links"][0]["yanked"], "broken")
        self.assertEqual(self.builds, ["version"])
        self.assertEqual(self.request("DELETE", "/alice/vol/pkg/1.0", auth=ALICE).code, 200)
        self.assertEqual(self.request("GET", "/alice/vol/pkg/1.0").code, 404)

    def test_a_change_in_a_base_invalidates_the_inheriting_views(self) -> None:
        self.add_index("alice", "prod")
        self.add_index("alice", "stage", bases=["alice/prod"])
        self.request("PATCH", "/alice/dev", ["bases+=alice/stage"], auth=ALICE)   # dev -> stage -> prod
        self.upload("dev", "pkg", "1.0")
        self.assertEqual(self.versions("/alice/dev/pkg"), ["1.0"])
        self.assertNotIn("+shadowing", self.request("GET", "/alice/dev/pkg/1.0").json["result"])
        prod = self.upload("prod", "pkg", "1.0", content=b"prod build")
        self.upload("prod", "pkg", "0.9")
        self.assertEqual(self.versions("/alice/dev/pkg"), ["0.9", "1.0"])
        shadowing = self.request("GET", "/alice/dev/pkg/1.0").json["result"]["+shadowing"]
        self.assertEqual([link["href"] for s in shadowing for link in s["+links"]], [f"{BASE}/{prod}"])
        # an index configuration change: the base is gone from the order
        self.request("PATCH", "/alice/stage", ["bases-=alice/prod"], auth=ALICE)
        self.assertEqual(self.versions("/alice/dev/pkg"), ["1.0"])
        self.assertNotIn("+shadowing", self.request("GET", "/alice/dev/pkg/1.0").json["result"])

    def test_hrefs_follow_each_base_url(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        for _ in range(2):
            for base in ("http://one.example", "http://two.example/pi"):
                reply = self.request("GET", "/alice/dev/pkg", headers={"X-Outside-Url": base})
                hrefs = [link["href"] for link in reply.json["result"]["1.0"]["+links"]]
                self.assertEqual(hrefs, [f"{base}/{relpath}"])
        self.assertEqual(self.builds, ["project"] * 2)

    def test_mirror_link_change_invalidates(self) -> None:
        add_mirror(self)
        self.request("PATCH", "/alice/vol", ["bases=alice/mirror"], auth=ALICE)
        self.assertEqual(self.versions("/alice/vol/pkg"), ["1.0", "2.0"])
        record = self.stored(mirrorlinks_key("alice", "mirror", "pkg"))
        with self.server.store.write() as tx:           # what a page fetch with new links commits
            tx.set(mirrorlinks_key("alice", "mirror", "pkg"), {**record, "links": record["links"][:1],
                                                                "requires_python": [None], "yanked": [None]})
        self.assertEqual(self.versions("/alice/vol/pkg"), ["1.0"])
        self.assertEqual(self.request("GET", "/alice/vol/pkg/2.0").code, 404)

    def test_etag_and_if_none_match(self) -> None:
        self.upload("dev", "pkg", "1.0")
        for path in ("/alice/dev/pkg", "/alice/dev/pkg/1.0"):
            reply = self.request("GET", path)
            etag = reply.headers["etag"]
            self.assertTrue(etag.startswith('"'), etag)
            for value in (etag, f"W/{etag}", f'"other", {etag}'):
                cached = self.request("GET", path, headers={"If-None-Match": value})
                self.assertEqual((cached.code, cached.body, cached.headers["etag"]), (304, b"", etag), value)
            self.assertEqual(self.request("GET", path, headers={"If-None-Match": '"other"'}).body, reply.body)
        etags = {path: self.request("GET", path).headers["etag"] for path in ("/alice/dev/pkg", "/alice/dev/pkg/1.0")}
        self.upload_wheel("dev", "pkg", "1.0")
        for path, etag in etags.items():
            reply = self.request("GET", path, headers={"If-None-Match": etag})
            self.assertEqual(reply.code, 200, path)
            self.assertNotEqual(reply.headers["etag"], etag)


class MirrorFetchViewTests(MirrorCase):
    """A mirror page fetch that changes the links commits them, which invalidates the cached views."""

    def test_new_upstream_links_reach_the_project_view(self) -> None:
        self.upstream.add("pkg", "pkg-1.0.tar.gz")
        accept = {"Accept": "application/json"}
        self.assertEqual(list(self.get_json("/u/dev/pkg", accept)["result"]), ["1.0"])
        self.upstream.add("pkg", "pkg-2.0.tar.gz")
        self.assertEqual(list(self.get_json("/u/dev/pkg", accept)["result"]), ["1.0"])   # stored page still fresh
        self.clock.advance(1800)                                                          # now it is expired
        self.assertEqual(list(self.get_json("/u/dev/pkg", accept)["result"]), ["1.0", "2.0"])
        self.assertEqual(list(self.get_json("/u/dev/pkg/2.0", accept)["result"]["+links"][0]), ["rel", "hash_spec",
                                                                                            "hashes", "href"])

"""Simple pages through the whole web stack (http-api.md §3.11, PEP 503/691/700/658)."""
from __future__ import annotations

import json
import re
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse
from treq.testing import StubTreq

from devpitx.model.inherit import project_links
from devpitx.web import simple as simple_area
from tests.helpers.testserver import BASE, make_test_server
from tests.web.fixtures_records import add_file, delete_project, make_index, register

PIP_UA = 'pip/24.0 {"ci":null,"implementation":{"name":"CPython"}}'
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
PIP_HTML = {"User-Agent": PIP_UA, "Accept": "text/html"}
PIP_JSON = {"User-Agent": PIP_UA, "Accept": PIP_ACCEPT}
UV_JSON = {"User-Agent": "uv/0.4.0", "Accept": "application/vnd.pypi.simple.v1+json, "
           "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"}
BROWSER = {"User-Agent": "Mozilla/5.0", "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "text/html; charset=UTF-8"


class SimpleTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_test_server(self.mktemp(), clock=self.clock, **self.config())
        self.http = StubTreq(self.server.resource())
        make_index(self.server, "u", "dev", bases=["root/pypi"])

    def config(self) -> dict[str, Any]:
        return {}

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        d = cast(Any, self.http).request(method, BASE + path, headers=headers or {}, allow_redirects=False)
        self.http.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, body

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        return self.request("GET", path, headers)

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        response, body = self.get(path, headers or PIP_JSON)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(header(response, "content-type"), JSON_TYPE)
        return json.loads(body)


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def hrefs(body: bytes) -> list[str]:
    return re.findall(r'href="([^"]*)"', body.decode())


class ProjectPageTests(SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.sdist = add_file(self.server, "u", "dev", "Pkg", "1.0", "pkg-1.0.tar.gz", requires_python=">=3.8")
        self.wheel = add_file(self.server, "u", "dev", "Pkg", "1.1", "pkg-1.1-py3-none-any.whl",
                              core_metadata=b"Metadata-Version: 2.1\nName: Pkg\nVersion: 1.1\n",
                              upload_time=1_700_000_123.25)

    def metadata_sha256(self) -> str:
        entry = self.server.store.get(f"file/{self.wheel.relpath}")
        assert isinstance(entry, dict)
        return str(entry["+core_metadata"]["sha256"])

    def test_json_page_for_pip_and_uv(self) -> None:
        for headers in (PIP_JSON, UV_JSON):
            page = self.get_json("/u/dev/+simple/pkg/", headers)
            self.assertEqual(page["meta"], {"api-version": "1.1"})
            self.assertEqual(page["name"], "pkg")
            self.assertEqual(page["versions"], ["1.0", "1.1"])
            wheel, sdist = page["files"]
            self.assertEqual(sdist, {
                "filename": "pkg-1.0.tar.gz",
                "url": f"../../+f/{self.sdist.sha256[:3]}/{self.sdist.sha256[3:16]}/pkg-1.0.tar.gz",
                "hashes": {"sha256": self.sdist.sha256},
                "requires-python": ">=3.8",
                "size": self.sdist.size,
                "upload-time": "2023-11-14T22:13:20.000000Z",
            })
            metadata_sha256 = self.metadata_sha256()
            self.assertEqual(wheel["core-metadata"], {"sha256": metadata_sha256})
            self.assertEqual(wheel["dist-info-metadata"], {"sha256": metadata_sha256})
            self.assertEqual(wheel["upload-time"], "2023-11-14T22:15:23.250000Z")
            self.assertEqual(wheel["requires-python"], "")
            self.assertEqual(wheel["size"], self.wheel.size)

    def test_installer_html_page(self) -> None:
        response, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), HTML_TYPE)
        meta = self.metadata_sha256()
        w, s = self.wheel, self.sdist
        self.assertEqual(body.decode(), (
            '<!DOCTYPE html><html lang="en"><head><title>u/dev: links for pkg</title></head>'
            '<body><h1>u/dev: links for pkg</h1>\n'
            f'u/dev <a href="../../+f/{w.sha256[:3]}/{w.sha256[3:16]}/pkg-1.1-py3-none-any.whl#sha256={w.sha256}"'
            f' data-requires-python="" data-core-metadata="sha256={meta}"'
            f' data-dist-info-metadata="sha256={meta}">pkg-1.1-py3-none-any.whl</a><br>\n'
            f'u/dev <a href="../../+f/{s.sha256[:3]}/{s.sha256[3:16]}/pkg-1.0.tar.gz#sha256={s.sha256}"'
            ' data-requires-python="&gt;=3.8">pkg-1.0.tar.gz</a><br>\n'
            '</body></html>\n'))
        self.assertNotIn(b"<form", body)
        self.assertNotIn(b"<input", body)
        self.assertNotIn(b"INFO", body)

    def test_no_accept_header_gets_html(self) -> None:
        response, body = self.get("/u/dev/+simple/pkg/", {"User-Agent": "pip/1.0"})
        self.assertEqual(header(response, "content-type"), HTML_TYPE)

    def test_human_page_sorted_newest_first_installer_in_resolution_order(self) -> None:
        make_index(self.server, "u", "prod", bases=["u/dev"])
        add_file(self.server, "u", "prod", "pkg", "0.5", "pkg-0.5.tar.gz")
        add_file(self.server, "u", "prod", "pkg", "1.0", "pkg-1.0.zip")
        _, human = self.get("/u/prod/+simple/pkg/", BROWSER)
        names = [h.rsplit("/", 1)[1].split("#")[0] for h in hrefs(human)]
        self.assertEqual(names, ["pkg-1.1-py3-none-any.whl", "pkg-1.0.zip", "pkg-1.0.tar.gz", "pkg-0.5.tar.gz"])
        _, installer = self.get("/u/prod/+simple/pkg/", PIP_HTML)
        names = [h.rsplit("/", 1)[1].split("#")[0] for h in hrefs(installer)]
        self.assertEqual(names, ["pkg-1.0.zip", "pkg-0.5.tar.gz", "pkg-1.1-py3-none-any.whl", "pkg-1.0.tar.gz"])
        self.assertIn(b"u/dev <a", installer)
        self.assertIn(b"u/prod <a", installer)

    def test_relative_links_from_every_route(self) -> None:
        target = f"+f/{self.sdist.sha256[:3]}/{self.sdist.sha256[3:16]}/pkg-1.0.tar.gz#sha256={self.sdist.sha256}"
        for path, headers, prefix in [
            ("/u/dev/+simple/pkg/", PIP_HTML, "../../"),
            ("/u/dev/+simple/pkg", PIP_HTML, "../"),
            ("/u/dev/pkg", PIP_HTML, ""),
            ("/u/dev/pkg/", PIP_HTML, "../"),
            ("/u/dev/+simple/pkg/", BROWSER, "../../"),
        ]:
            response, body = self.get(path, headers)
            self.assertEqual(response.code, 200, path)
            self.assertIn(prefix + target, hrefs(body), path)

    def test_links_into_other_users_indexes(self) -> None:
        make_index(self.server, "x", "base")
        other = add_file(self.server, "x", "base", "other", "1.0", "other-1.0.tar.gz")
        make_index(self.server, "u", "prod", bases=["x/base"])
        _, body = self.get("/u/prod/+simple/other/", PIP_HTML)
        self.assertEqual(hrefs(body), [f"../../../../x/base/+f/{other.sha256[:3]}/{other.sha256[3:16]}"
                                       f"/other-1.0.tar.gz#sha256={other.sha256}"])
        self.assertIn(b"x/base <a", body)

    def test_absolute_links_on_request(self) -> None:
        expected = (f"{BASE}/u/dev/+f/{self.sdist.sha256[:3]}/{self.sdist.sha256[3:16]}/pkg-1.0.tar.gz"
                    f"#sha256={self.sdist.sha256}")
        _, body = self.get("/u/dev/+simple/pkg/", {**PIP_HTML, "X-Devpi-Absolute-Urls": ""})
        self.assertIn(expected, hrefs(body))
        page = self.get_json("/u/dev/+simple/pkg/", {**PIP_JSON, "X-Devpi-Absolute-Urls": "1"})
        self.assertEqual(page["files"][1]["url"], expected.split("#")[0])
        # and the cached relative page is still relative
        _, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertTrue(hrefs(body)[1].startswith("../../+f/"))

    def test_outside_url_with_mount_prefix(self) -> None:
        headers = {**PIP_HTML, "X-Outside-Url": "http://outside.test/devpi"}
        _, body = self.get("/devpi/u/dev/+simple/pkg/", headers)
        self.assertTrue(hrefs(body)[1].startswith("../../+f/"))
        _, body = self.get("/devpi/u/dev/+simple/pkg/", {**headers, "X-Devpi-Absolute-Urls": ""})
        self.assertTrue(hrefs(body)[1].startswith("http://outside.test/devpi/u/dev/+f/"))

    def test_markup_in_user_data_is_escaped(self) -> None:
        add_file(self.server, "u", "dev", "pkg", "2.0", 'pkg-2.0"<b>&.tar.gz', requires_python='<script>"x"')
        for headers in (PIP_HTML, BROWSER):
            _, body = self.get("/u/dev/+simple/pkg/", headers)
            self.assertNotIn(b"<script>", body)
            self.assertNotIn(b"<b>", body)
            self.assertIn(b'data-requires-python="&lt;script&gt;&quot;x&quot;"', body)
            self.assertIn(b">pkg-2.0&quot;&lt;b&gt;&amp;.tar.gz</a>", body)
            self.assertIn(b"/pkg-2.0%22%3Cb%3E&amp;.tar.gz#sha256=", body)
        page = self.get_json("/u/dev/+simple/pkg/")
        self.assertEqual(page["files"][0]["requires-python"], '<script>"x"')

    def test_requires_python_absent_means_no_attribute(self) -> None:
        register(self.server, "u", "dev", "bare", "1.0")
        with self.server.store.write() as tx:
            key = "version/u/dev/bare/1.0"
            data = dict(tx.get(key) or {})
            del data["requires_python"]
            tx.set(key, data)
        add_file(self.server, "u", "dev", "bare", "1.0", "bare-1.0.tar.gz")
        _, body = self.get("/u/dev/+simple/bare/", PIP_HTML)
        self.assertNotIn(b"data-requires-python", body)
        self.assertNotIn("requires-python", self.get_json("/u/dev/+simple/bare/")["files"][0])

    def test_size_of_entries_without_size_comes_from_the_blob(self) -> None:
        with self.server.store.write() as tx:
            key = f"file/{self.sdist.relpath}"
            entry = dict(tx.get(key) or {})
            del entry["+size"]
            tx.set(key, entry)
        sizes = {f["filename"]: f.get("size") for f in self.get_json("/u/dev/+simple/pkg/")["files"]}
        self.assertEqual(sizes["pkg-1.0.tar.gz"], self.sdist.size)

    def test_registered_project_without_files_is_an_empty_page(self) -> None:
        register(self.server, "u", "dev", "empty", "1.0")
        page = self.get_json("/u/dev/+simple/empty/")
        self.assertEqual((page["files"], page["versions"]), ([], ["1.0"]))

    def test_unknown_project_is_404_in_the_negotiated_shape(self) -> None:
        response, body = self.get("/u/dev/+simple/nope/", PIP_JSON)
        self.assertEqual(response.code, 404)
        self.assertIn("text/html", header(response, "content-type") or "")
        self.assertIn(b"The project nope does not exist.", body)
        response, body = self.get("/u/dev/+simple/nope/", {"Accept": "application/json"})
        self.assertEqual((response.code, json.loads(body)), (404, {"message": "The project nope does not exist."}))

    def test_unknown_index_is_404(self) -> None:
        response, body = self.get("/u/nope/+simple/pkg/", {"Accept": "application/json"})
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"message": "The stage u/nope could not be found."})
        response, _ = self.get("/u/nope/+simple/", PIP_JSON)
        self.assertEqual(response.code, 404)

    def test_mirror_index_has_no_projects_yet(self) -> None:
        response, _ = self.get("/root/pypi/+simple/requests/", PIP_JSON)
        self.assertEqual(response.code, 404)
        self.assertEqual(self.get_json("/root/pypi/+simple/", PIP_JSON)["projects"], [])

    def test_vary_and_identity_headers(self) -> None:
        response, _ = self.get("/u/dev/+simple/pkg/", PIP_JSON)
        self.assertEqual(header(response, "vary"), "Accept, User-Agent")
        for name in ("X-Devpi-Api-Version", "X-Devpi-Uuid", "X-Devpi-Serial", "X-Devpi-Server-Version",
                     "X-Devpi-Primary-Uuid", "X-Devpi-Master-Uuid"):
            self.assertIsNotNone(header(response, name), name)
        self.assertEqual(header(response, "X-Devpi-Serial"), str(self.server.store.serial))

    def test_head_has_headers_only(self) -> None:
        get, body = self.get("/u/dev/+simple/pkg/", PIP_JSON)
        head, empty = self.request("HEAD", "/u/dev/+simple/pkg/", PIP_JSON)
        self.assertEqual((head.code, empty), (200, b""))
        self.assertEqual(header(head, "content-length"), str(len(body)))
        self.assertEqual(header(head, "etag"), header(get, "etag"))

    def test_other_methods_are_404(self) -> None:
        for path in ("/u/dev/+simple/", "/u/dev/+simple/pkg/", "/u/dev/+simple/pkg", "/u/dev/+simple"):
            for method in ("POST", "PUT", "DELETE"):
                response, _ = self.request(method, path, PIP_HTML)
                self.assertEqual(response.code, 404, (method, path))


class RedirectTests(SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        add_file(self.server, "u", "dev", "foo.bar", "1.0", "foo.bar-1.0.tar.gz")

    def assert_redirect(self, path: str, headers: dict[str, str], location: str, vary: str) -> None:
        response, _ = self.get(path, headers)
        self.assertEqual(response.code, 302, path)
        self.assertEqual(header(response, "location"), BASE + location)
        self.assertEqual(header(response, "vary"), vary)
        self.assertIsNotNone(header(response, "x-devpi-serial"))

    def test_humans_get_the_trailing_slash(self) -> None:
        self.assert_redirect("/u/dev/+simple/foo-bar", BROWSER, "/u/dev/+simple/foo-bar/", "Accept, User-Agent")
        self.assert_redirect("/u/dev/+simple", BROWSER, "/u/dev/+simple/", "User-Agent")
        self.assert_redirect("/u/dev/+simple/foo-bar", {}, "/u/dev/+simple/foo-bar/", "Accept, User-Agent")

    def test_installers_and_json_are_served_without_slash(self) -> None:
        for headers in (PIP_HTML, PIP_JSON, {"Accept": JSON_TYPE}):
            response, _ = self.get("/u/dev/+simple/foo-bar", headers)
            self.assertEqual(response.code, 200)
            response, _ = self.get("/u/dev/+simple", headers)
            self.assertEqual(response.code, 200)

    def test_non_normalized_names_redirect_on_every_route(self) -> None:
        self.assert_redirect("/u/dev/+simple/Foo.Bar/", PIP_JSON, "/u/dev/+simple/foo-bar/", "Accept, User-Agent")
        self.assert_redirect("/u/dev/+simple/Foo.Bar", PIP_JSON, "/u/dev/+simple/foo-bar", "Accept, User-Agent")
        self.assert_redirect("/u/dev/+simple/Foo.Bar", BROWSER, "/u/dev/+simple/foo-bar", "Accept, User-Agent")
        self.assert_redirect("/u/dev/Foo.Bar", PIP_HTML, "/u/dev/foo-bar", "Accept, User-Agent")
        self.assert_redirect("/u/dev/Foo_Bar/?x=1", PIP_HTML, "/u/dev/foo-bar/", "Accept, User-Agent")

    def test_redirect_uses_the_outside_url(self) -> None:
        self.assert_redirect("/u/dev/+simple/foo-bar", {**BROWSER, "X-Outside-Url": BASE + "/devpi"},
                             "/devpi/u/dev/+simple/foo-bar/", "Accept, User-Agent")

    def test_unicode_project_names_are_refused(self) -> None:
        for path, headers in [("/u/dev/+simple/p%C3%A4/", PIP_JSON), ("/u/dev/+simple/p%C3%A4", BROWSER),
                              ("/u/dev/p%C3%A4", PIP_HTML)]:
            response, body = self.get(path, headers)
            self.assertEqual(response.code, 400, path)
            self.assertIn(b"unicode project names not allowed", body)
        response, body = self.get("/u/dev/+simple/p%C3%A4/", {"Accept": "application/json"})
        self.assertEqual(json.loads(body), {"message": "unicode project names not allowed"})

    def test_refresh_redirects_to_the_page(self) -> None:
        response, _ = self.request("POST", "/u/dev/+simple/Foo.Bar/refresh", BROWSER)
        self.assertEqual(response.code, 302)
        self.assertEqual(header(response, "location"), BASE + "/u/dev/+simple/foo-bar/")
        response, _ = self.get("/u/dev/+simple/foo-bar/refresh", BROWSER)
        self.assertEqual(response.code, 404)
        response, _ = self.request("POST", "/u/nope/+simple/foo-bar/refresh", BROWSER)
        self.assertEqual(response.code, 404)


class ShadowingTests(SimpleTestCase):
    INFO = (b"<p><strong>INFO:</strong> Because this project isn't in the <code>mirror_whitelist</code>,"
            b" no releases from <strong>root/pypi</strong> are included.</p>")

    def test_private_project_shows_the_info_line_to_humans_only(self) -> None:
        add_file(self.server, "u", "dev", "pkg", "1.0", "pkg-1.0.tar.gz")
        _, body = self.get("/u/dev/+simple/pkg/", BROWSER)
        self.assertIn(self.INFO, body)
        self.assertNotIn(b"<form", body)     # no mirror contributes
        _, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertNotIn(b"INFO", body)

    def test_whitelisted_project_has_no_info_line(self) -> None:
        make_index(self.server, "u", "dev", bases=["root/pypi"], whitelist=["pkg"])
        add_file(self.server, "u", "dev", "pkg", "1.0", "pkg-1.0.tar.gz")
        _, body = self.get("/u/dev/+simple/pkg/", BROWSER)
        self.assertNotIn(b"INFO", body)


class ProjectListTests(SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        make_index(self.server, "b", "base")
        make_index(self.server, "u", "prod", bases=["u/dev", "b/base"])
        register(self.server, "u", "dev", "hello2", "1.0")
        register(self.server, "u", "dev", "Hello1", "1.0")
        register(self.server, "b", "base", "hello1", "1.0")
        register(self.server, "b", "base", "zzz", "1.0")
        register(self.server, "u", "prod", "mine", "1.0")

    def test_json_list(self) -> None:
        self.assertEqual(self.get_json("/u/prod/+simple/"), {
            "meta": {"api-version": "1.1"},
            "projects": [{"name": "mine"}, {"name": "hello1"}, {"name": "hello2"}, {"name": "zzz"}],
        })

    def test_installer_list(self) -> None:
        response, body = self.get("/u/dev/+simple/", PIP_HTML)
        self.assertEqual(header(response, "content-type"), HTML_TYPE)
        self.assertEqual(hrefs(body), ["hello1/", "hello2/"])
        self.assertTrue(body.startswith(b'<!DOCTYPE html><html lang="en"><body>'))
        self.assertEqual(header(response, "vary"), "Accept, User-Agent")

    def test_human_list(self) -> None:
        _, body = self.get("/u/prod/+simple/", BROWSER)
        text = body.decode()
        self.assertIn("<title>u/prod: simple list (including inherited indices)</title>", text)
        self.assertIn("<h2>u/prod (bases: u/dev,b/base)</h2>\n<a href=\"mine/\">mine</a><br>", text)
        self.assertIn("<h2>u/dev (bases: root/pypi)</h2>\n<a href=\"hello1/\">hello1</a><br>\n"
                      "<a href=\"hello2/\">hello2</a><br>\n<h2>b/base</h2>\n<a href=\"zzz/\">zzz</a><br>", text)
        _, body = self.get("/root/pypi/+simple/", BROWSER)
        self.assertIn(b"root/pypi: simple list", body)

    def test_installer_shortcuts(self) -> None:
        for path in ("/u/dev", "/u/dev/"):
            response, body = self.get(path, PIP_HTML)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(hrefs(body), ["hello1/", "hello2/"])
            self.assertEqual([p["name"] for p in self.get_json(path, PIP_JSON)["projects"]], ["hello1", "hello2"])

    def test_new_projects_in_a_base_appear(self) -> None:
        self.get_json("/u/prod/+simple/")
        register(self.server, "b", "base", "aaa", "1.0")
        names = [p["name"] for p in self.get_json("/u/prod/+simple/")["projects"]]
        self.assertEqual(names, ["mine", "hello1", "hello2", "aaa", "zzz"])
        delete_project(self.server, "u", "dev", "hello2")
        names = [p["name"] for p in self.get_json("/u/prod/+simple/")["projects"]]
        self.assertEqual(names, ["mine", "hello1", "aaa", "zzz"])

    def test_changed_bases_change_the_list(self) -> None:
        self.get_json("/u/prod/+simple/")
        make_index(self.server, "u", "prod", bases=[])
        self.assertEqual(self.get_json("/u/prod/+simple/")["projects"], [{"name": "mine"}])


class CacheTests(SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        add_file(self.server, "u", "dev", "pkg", "1.0", "pkg-1.0.tar.gz")
        self.walks = 0
        original = project_links

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.walks += 1
            return original(*args, **kwargs)
        self.patch(simple_area, "project_links", counting)

    def test_pages_are_rendered_once_per_change(self) -> None:
        first = self.get("/u/dev/+simple/pkg/", PIP_JSON)[1]
        for _ in range(3):
            self.assertEqual(self.get("/u/dev/+simple/pkg/", PIP_JSON)[1], first)
        self.assertEqual(self.walks, 1)
        self.get("/u/dev/+simple/pkg/", PIP_HTML)          # another variant is another page
        self.assertEqual(self.walks, 2)
        register(self.server, "u", "dev", "unrelated", "1.0")
        self.get("/u/dev/+simple/pkg/", PIP_JSON)
        self.assertEqual(self.walks, 2)                    # other projects do not invalidate
        add_file(self.server, "u", "dev", "pkg", "1.1", "pkg-1.1.tar.gz")
        page = json.loads(self.get("/u/dev/+simple/pkg/", PIP_JSON)[1])
        self.assertEqual(self.walks, 3)
        self.assertEqual(page["versions"], ["1.0", "1.1"])

    def test_etag_and_if_none_match(self) -> None:
        response, body = self.get("/u/dev/+simple/pkg/", PIP_JSON)
        etag = header(response, "etag")
        assert etag is not None and etag.startswith('"')
        for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            response, body = self.get("/u/dev/+simple/pkg/", {**PIP_JSON, "If-None-Match": value})
            self.assertEqual((response.code, body), (304, b""), value)
            self.assertEqual(header(response, "etag"), etag)
            self.assertEqual(header(response, "vary"), "Accept, User-Agent")
            self.assertIsNotNone(header(response, "x-devpi-serial"))
        response, _ = self.get("/u/dev/+simple/pkg/", {**PIP_JSON, "If-None-Match": '"other"'})
        self.assertEqual(response.code, 200)
        html, _ = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertNotEqual(header(html, "etag"), etag)
        add_file(self.server, "u", "dev", "pkg", "1.1", "pkg-1.1.tar.gz")
        response, _ = self.get("/u/dev/+simple/pkg/", {**PIP_JSON, "If-None-Match": etag})
        self.assertEqual(response.code, 200)
        self.assertNotEqual(header(response, "etag"), etag)

    def test_changes_in_a_base_index_invalidate(self) -> None:
        make_index(self.server, "u", "prod", bases=["u/dev"])
        self.assertEqual(len(self.get_json("/u/prod/+simple/pkg/")["files"]), 1)
        add_file(self.server, "u", "dev", "pkg", "2.0", "pkg-2.0.tar.gz")
        self.assertEqual(len(self.get_json("/u/prod/+simple/pkg/")["files"]), 2)
        make_index(self.server, "u", "prod", bases=[])
        response, _ = self.get("/u/prod/+simple/pkg/", PIP_JSON)
        self.assertEqual(response.code, 404)

    def test_metadata_change_alone_invalidates(self) -> None:
        self.assertEqual(self.get_json("/u/dev/+simple/pkg/")["files"][0]["requires-python"], "")
        register(self.server, "u", "dev", "pkg", "1.0", requires_python=">=3.12")
        self.assertEqual(self.get_json("/u/dev/+simple/pkg/")["files"][0]["requires-python"], ">=3.12")

    def test_deleted_project_is_gone(self) -> None:
        self.get_json("/u/dev/+simple/pkg/")
        delete_project(self.server, "u", "dev", "pkg")
        response, _ = self.get("/u/dev/+simple/pkg/", PIP_JSON)
        self.assertEqual(response.code, 404)

    def test_cache_is_bounded_by_bytes(self) -> None:
        pages = self.server.router.handler_for("simple.project").__self__.pages  # type: ignore[union-attr]
        pages._max_bytes = 2000
        for n in range(20):
            self.get("/u/dev/+simple/pkg/", {**PIP_JSON, "X-Devpi-Absolute-Urls": "",
                                             "X-Outside-Url": f"http://host{n}.test"})
        self.assertLessEqual(pages._bytes, 2000)
        self.assertLess(len(pages), 20)


class AbsoluteUrlOptionTests(SimpleTestCase):
    def config(self) -> dict[str, Any]:
        return {"absolute_urls": True, "outside_url": "http://out.test/pi"}

    def test_option_makes_links_absolute(self) -> None:
        stored = add_file(self.server, "u", "dev", "pkg", "1.0", "pkg-1.0.tar.gz")
        _, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertEqual(hrefs(body), [f"http://out.test/pi/{stored.relpath}#sha256={stored.sha256}"])

"""Mirror project pages through the whole web stack against a fake upstream (mirror.md §2-§4, §7, §9)."""
from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urljoin

from treq.testing import StubTreq

from devpitx.storage.keys import mirrorlinks_key
from devpitx.version import DEVPITX_VERSION
from tests.mirror.harness import BROWSER, MIRROR_URL, PIP_HTML, PIP_JSON, MirrorCase, header
from tests.helpers.testserver import make_test_server
from tests.web.fixtures_records import add_file, make_index

NO_CACHE = "max-age=0, must-revalidate, no-cache, no-store"


class AnyWith:
    """Equal to any mapping with these items."""

    def __init__(self, **items: Any) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and all(other.get(k) == v for k, v in self.items.items())

    def __repr__(self) -> str:
        return f"AnyWith({self.items!r})"


class JsonUpstreamTests(MirrorCase):
    def setUp(self) -> None:
        super().setUp()
        self.wheel = self.upstream.add("Pkg", "pkg-1.0-py3-none-any.whl", requires_python=">=3.8",
                                       metadata=b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
        self.sdist = self.upstream.add("Pkg", "pkg-0.9.tar.gz", yanked="broken")

    def test_everything_upstream_publishes_passes_through(self) -> None:
        page = self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(page["name"], "pkg")
        self.assertEqual(page["versions"], ["0.9", "1.0"])
        wheel, sdist = page["files"]
        self.assertEqual(wheel, {
            "filename": "pkg-1.0-py3-none-any.whl",
            "url": f"../../+f/{self.wheel.sha256[:3]}/{self.wheel.sha256[3:16]}/pkg-1.0-py3-none-any.whl",
            "hashes": {"sha256": self.wheel.sha256}, "requires-python": ">=3.8",
            "size": len(self.wheel.content), "upload-time": "2024-05-01T12:00:00.000000Z",
            "core-metadata": {"sha256": hashlib.sha256(self.wheel.metadata or b"").hexdigest()},
            "dist-info-metadata": {"sha256": hashlib.sha256(self.wheel.metadata or b"").hexdigest()},
        })
        self.assertEqual(sdist["yanked"], "broken")
        self.assertNotIn("requires-python", sdist)

    def test_upstream_is_asked_for_json_with_our_user_agent(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(self.upstream.requests, ["/simple/", "/simple/pkg/"])
        sent = self.upstream.headers_seen[-1]
        self.assertTrue(sent["accept"].startswith("application/vnd.pypi.simple.v1+json"), sent)
        self.assertIn(f"devpitx/{DEVPITX_VERSION}", sent["user-agent"])
        self.assertNotIn("authorization", sent)

    def test_inherited_through_a_private_index(self) -> None:
        _, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertIn(b'root/pypi <a href="../../../../root/pypi/+f/', body)
        self.assertIn(b'data-requires-python="&gt;=3.8"', body)
        self.assertIn(b'data-yanked="broken"', body)

    def test_fresh_answer_is_cacheable_cached_one_is_not(self) -> None:
        response, _ = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertIsNone(header(response, "cache-control"))
        self.assertEqual(header(response, "x-pypi-last-serial"), "1000")
        response, _ = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual(self.upstream_paths("/simple/pkg/"), ["/simple/pkg/"])      # within expiry
        self.assertEqual(header(response, "cache-control"), NO_CACHE)
        self.assertEqual(header(response, "pragma"), "no-cache")
        self.assertIsNotNone(header(response, "expires"))
        response, _ = self.get("/u/dev/+simple/pkg/", PIP_JSON)
        self.assertEqual(header(response, "cache-control"), NO_CACHE)
        self.assertIsNone(header(response, "x-pypi-last-serial"))      # only on the mirror's own page

    def test_revalidation_with_etag_commits_nothing(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        serial = self.server.store.serial
        self.clock.advance(1800)
        response, _ = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual(self.upstream_paths("/simple/pkg/"), ["/simple/pkg/"] * 2)
        self.assertIn("if-none-match", self.upstream.headers_seen[-1])
        self.assertIsNone(header(response, "cache-control"))           # confirmed by the 304
        self.assertEqual(self.server.store.serial, serial)

    def test_unchanged_page_produces_no_serial_changed_page_does(self) -> None:
        self.upstream.send_etag = False
        self.get_json("/root/pypi/+simple/pkg/")
        serial = self.server.store.serial
        self.clock.advance(1800)
        self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(len(self.upstream_paths("/simple/pkg/")), 2)
        self.assertEqual(self.server.store.serial, serial)
        self.upstream.add("pkg", "pkg-1.1.tar.gz")
        self.clock.advance(1800)
        page = self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(self.server.store.serial, serial + 1)
        self.assertEqual(page["versions"], ["0.9", "1.0", "1.1"])

    def test_mirror_cache_expiry_of_the_index(self) -> None:
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": MIRROR_URL, "mirror_cache_expiry": 10})
        self.get_json("/root/pypi/+simple/pkg/")
        self.clock.advance(9)
        self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(len(self.upstream_paths("/simple/pkg/")), 1)
        self.clock.advance(1)
        self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(len(self.upstream_paths("/simple/pkg/")), 2)

    def test_concurrent_requests_share_one_fetch(self) -> None:
        self.upstream.hold.add("/simple/pkg/")
        pending = [self.start("GET", "/root/pypi/+simple/pkg/", PIP_JSON) for _ in range(10)]
        self.assertEqual(self.upstream.release("/simple/pkg/"), 1)
        for d in pending:
            self.assertEqual(self.finish(d).code, 200)
        self.assertEqual(self.upstream_paths("/simple/pkg/"), ["/simple/pkg/"])

    def test_serial_regression_is_an_upstream_error(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        self.upstream.serial = 999
        self.upstream.add("pkg", "pkg-2.0.tar.gz")
        self.clock.advance(1800)
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual(header(response, "cache-control"), NO_CACHE)        # the stored page, stale
        self.assertNotIn("2.0", json.loads(body)["versions"])
        self.assertEqual(header(response, "x-pypi-last-serial"), "1000")

    def test_serial_header_ignored_when_configured(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": MIRROR_URL,
                                         "mirror_ignore_serial_header": True})
        self.upstream.serial = 5
        self.upstream.add("pkg", "pkg-2.0.tar.gz")
        self.clock.advance(1800)
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertIn("2.0", json.loads(body)["versions"])
        self.assertIsNone(header(response, "x-pypi-last-serial"))
        self.assertEqual(self.server.store.get(mirrorlinks_key("root", "pypi", "pkg")), AnyWith(serial=-1))

    def test_refresh_refetches_at_once(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        self.upstream.add("pkg", "pkg-2.0.tar.gz")
        response, _ = self.request("POST", "/u/dev/+simple/Pkg/refresh", BROWSER)
        self.assertEqual(response.code, 302)
        self.assertEqual(header(response, "location"), "http://devpitx.test/u/dev/+simple/pkg/")
        self.assertIn("2.0", self.get_json("/root/pypi/+simple/pkg/")["versions"])
        self.assertEqual(len(self.upstream_paths("/simple/pkg/")), 2)

    def test_human_page_offers_the_refresh_form(self) -> None:
        _, body = self.get("/root/pypi/+simple/pkg/", BROWSER)
        self.assertIn(b'<form action="http://devpitx.test/root/pypi/+simple/pkg/refresh" method="post">'
                      b'<input name="refresh" type="submit" value="Refresh"></form>', body)
        _, body = self.get("/u/dev/+simple/pkg/", BROWSER)
        self.assertIn(b'value="Refresh mirror links"', body)
        _, body = self.get("/u/dev/+simple/pkg/", PIP_HTML)
        self.assertNotIn(b"<form", body)

    def test_credentials_go_upstream_but_are_never_stored(self) -> None:
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": "http://me:s3cret@upstream.example/simple/"})
        self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(self.upstream.headers_seen[-1]["authorization"], "Basic bWU6czNjcmV0")
        self.assertNotIn("s3cret", json.dumps(self.server.store.get(mirrorlinks_key("root", "pypi", "pkg"))))


    def test_redirects_are_followed_and_links_resolve_against_the_final_url(self) -> None:
        self.upstream.redirect["/simple/pkg/"] = "http://upstream.example/moved/pkg/"
        page = self.get_json("/root/pypi/+simple/pkg/")
        self.assertEqual(len(page["files"]), 2)
        self.assertEqual(self.upstream_paths("/moved/"), ["/moved/pkg/"])
        record = self.server.store.get(mirrorlinks_key("root", "pypi", "pkg")) or {}
        # "../../files/x" from /moved/pkg/ is /files/x, the same as from /simple/pkg/.
        self.assertEqual(record["+urls"], ["http://upstream.example/files/pkg-1.0-py3-none-any.whl",
                                           "http://upstream.example/files/pkg-0.9.tar.gz"])


class DevpitxUpstreamTests(MirrorCase):
    """Any simple index can be mirrored, another devpitx index included."""

    def test_mirror_of_a_devpitx_index(self) -> None:
        other = make_test_server(self.mktemp(), clock=self.clock)
        make_index(other, "alice", "dev")
        stored = add_file(other, "alice", "dev", "Private.Pkg", "1.0", "private_pkg-1.0-py3-none-any.whl",
                          requires_python=">=3.9")
        self.routing.stub = StubTreq(other.resource())
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": "http://upstream.example/alice/dev/+simple/"})
        self.assertEqual(self.get_json("/root/pypi/+simple/")["projects"], [{"name": "private-pkg"}])
        page = self.get_json("/root/pypi/+simple/private-pkg/")
        [item] = page["files"]
        self.assertEqual((item["filename"], item["hashes"], item["requires-python"]),
                         ("private_pkg-1.0-py3-none-any.whl", {"sha256": stored.sha256}, ">=3.9"))
        response, body = self.get(urljoin("/root/pypi/+simple/private-pkg/", item["url"]))
        self.assertEqual((response.code, body), (200, stored.content))


class HtmlOnlyUpstreamTests(MirrorCase):
    def setUp(self) -> None:
        super().setUp()
        self.upstream.html_only = True
        self.sdist = self.upstream.add("pkg", "pkg-1.0.tar.gz", requires_python=">=3.9", yanked=True)
        self.zip = self.upstream.add("pkg", "pkg-0.5.zip", with_hash=False)

    def test_links_from_html(self) -> None:
        page = self.get_json("/root/pypi/+simple/pkg/")
        sdist, zipped = page["files"]
        self.assertEqual(sdist["hashes"], {"sha256": self.sdist.sha256})
        self.assertEqual((sdist["requires-python"], sdist["yanked"]), (">=3.9", True))
        self.assertEqual(zipped["url"], "../../+e/http_upstream.example_files/pkg-0.5.zip")
        self.assertEqual(zipped["hashes"], {})
        self.assertEqual(page["versions"], ["0.5", "1.0"])

    def test_html_upstream_page_for_pip(self) -> None:
        _, body = self.get("/root/pypi/+simple/pkg/", PIP_HTML)
        self.assertIn(f'href="../../+f/{self.sdist.sha256[:3]}/{self.sdist.sha256[3:16]}/pkg-1.0.tar.gz#sha256='
                      f'{self.sdist.sha256}" data-requires-python="&gt;=3.9" data-yanked=""'.encode(), body)
        self.assertIn(b'href="../../+e/http_upstream.example_files/pkg-0.5.zip">pkg-0.5.zip</a>', body)


class UpstreamTroubleTests(MirrorCase):
    request_timeout = 5.0

    def setUp(self) -> None:
        super().setUp()
        self.upstream.add("pkg", "pkg-1.0.tar.gz")
        self.assertEqual(self.get_json("/root/pypi/+simple/pkg/")["versions"], ["1.0"])
        self.upstream.add("pkg", "pkg-2.0.tar.gz")
        self.clock.advance(1800)                     # the stored page is now expired

    def versions(self, response_body: bytes) -> list[str]:
        return list(json.loads(response_body)["versions"])

    def test_slow_upstream_stale_served_fetch_finishes_in_background(self) -> None:
        self.upstream.hold.add("/simple/pkg/")
        pending = self.start("GET", "/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertNoResult(pending)
        self.clock.advance(self.request_timeout)
        response = self.finish(pending)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "cache-control"), NO_CACHE)
        self.assertEqual(self.versions(self.body(response)), ["1.0"])
        # While upstream is known to be slow, answers come from the store at once.
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual(self.versions(body), ["1.0"])
        self.assertEqual(self.upstream_paths("/simple/pkg/"), ["/simple/pkg/"] * 2)   # no second fetch
        self.upstream.release("/simple/pkg/")
        self.pump()
        self.assertEqual(self.versions(self.get("/root/pypi/+simple/pkg/", PIP_JSON)[1]), ["1.0", "2.0"])

    def test_slow_upstream_with_nothing_cached_is_504(self) -> None:
        self.upstream.add("other", "other-1.0.tar.gz")
        self.clock.advance(1800)                     # the project list is due again
        self.upstream.hold.add("/simple/other/")
        pending = self.start("GET", "/root/pypi/+simple/other/", PIP_JSON)
        self.clock.advance(self.request_timeout)
        response = self.finish(pending)
        self.assertEqual(response.code, 504)
        self.assertIn(b"<p>timeout after 5s getting http://upstream.example/simple/other/</p>",
                      self.body(response))
        self.upstream.release()
        self.pump()
        self.assertEqual(self.get_json("/root/pypi/+simple/other/")["versions"], ["1.0"])

    def test_500_serves_stale_copy(self) -> None:
        self.upstream.status["/simple/pkg/"] = 500
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.versions(body), ["1.0"])
        self.assertEqual(header(response, "cache-control"), NO_CACHE)
        del self.upstream.status["/simple/pkg/"]
        self.clock.advance(60)
        self.pump()
        self.assertEqual(self.versions(self.get("/root/pypi/+simple/pkg/", PIP_JSON)[1]), ["1.0", "2.0"])

    def test_500_with_nothing_cached_is_502_for_the_mirror_and_404_through_a_base(self) -> None:
        self.upstream.add("other", "other-1.0.tar.gz")
        self.clock.advance(1800)
        for code in (500, 501, 502, 503):
            self.upstream.status["/simple/other/"] = code
            self.clock.advance(60)
            response, body = self.get("/root/pypi/+simple/other/", PIP_JSON)
            self.assertEqual(response.code, 502)
            # A negotiated error: HTML for pip's Accept header.
            self.assertIn(f"<p>error {code} getting http://upstream.example/simple/other/</p>".encode(), body)
        response, _ = self.get("/u/dev/+simple/other/", PIP_JSON)
        self.assertEqual(response.code, 404)

    def test_project_gone_upstream_keeps_being_served(self) -> None:
        self.upstream.status["/simple/pkg/"] = 404
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual((response.code, self.versions(body)), (200, ["1.0"]))


class WhichNamesGoUpstreamTests(MirrorCase):
    def setUp(self) -> None:
        super().setUp()
        self.upstream.add("pkg", "pkg-1.0.tar.gz")

    def test_names_not_in_the_upstream_list_are_never_fetched(self) -> None:
        for path in ("/root/pypi/+simple/secret-internal/", "/u/dev/+simple/secret-internal/"):
            response, _ = self.get(path, PIP_JSON)
            self.assertEqual(response.code, 404)
        self.assertEqual(self.upstream.requests, ["/simple/"])     # the list only, once

    def test_private_upload_shadows_the_mirror(self) -> None:
        private = add_file(self.server, "u", "dev", "pkg", "0.1", "pkg-0.1.tar.gz")
        page = self.get_json("/u/dev/+simple/pkg/")
        self.assertEqual([f["filename"] for f in page["files"]], ["pkg-0.1.tar.gz"])
        self.assertEqual(self.upstream_paths("/simple/pkg/"), [])  # the mirror was not even asked
        _, body = self.get("/u/dev/+simple/pkg/", BROWSER)
        self.assertIn(b"no releases from <strong>root/pypi</strong> are included", body)
        self.set_index("u", "dev", {"type": "stage", "bases": ["root/pypi"], "mirror_whitelist": ["pkg"],
                                    "mirror_whitelist_inheritance": "intersection"})
        page = self.get_json("/u/dev/+simple/pkg/")
        self.assertEqual([f["filename"] for f in page["files"]], ["pkg-0.1.tar.gz", "pkg-1.0.tar.gz"])
        self.assertEqual(page["files"][0]["url"], f"../../+f/{private.sha256[:3]}/{private.sha256[3:16]}/"
                                                  "pkg-0.1.tar.gz")

    def test_the_project_list(self) -> None:
        self.upstream.add("Other.Name", "other.name-1.0.tar.gz")
        listed = self.get_json("/root/pypi/+simple/")
        self.assertEqual(listed["projects"], [{"name": "other-name"}, {"name": "pkg"}])
        result = self.get_json("/root/pypi", {"Accept": "application/json"})["result"]
        self.assertEqual(result["projects"], ["other-name", "pkg"])
        self.assertEqual(self.upstream.requests, ["/simple/"])

    def test_stale_project_list_on_upstream_errors(self) -> None:
        self.get_json("/root/pypi/+simple/pkg/")
        self.upstream.status["/simple/"] = 503
        self.clock.advance(1800)
        self.assertEqual(self.get_json("/root/pypi/+simple/")["projects"], [{"name": "pkg"}])


class NoProjectListTests(MirrorCase):
    def mirror_config(self) -> dict[str, Any]:
        return {"mirror_no_project_list": True}

    def test_pages_are_asked_directly_and_the_root_never(self) -> None:
        self.upstream.add("pkg", "pkg-1.0.tar.gz")
        self.assertEqual(self.get_json("/root/pypi/+simple/")["projects"], [])
        self.assertEqual(self.get_json("/root/pypi/+simple/pkg/")["versions"], ["1.0"])
        response, _ = self.get("/root/pypi/+simple/nope/", PIP_JSON)
        self.assertEqual(response.code, 404)
        self.assertEqual(self.get_json("/root/pypi/+simple/")["projects"], [{"name": "pkg"}])
        self.assertEqual(self.upstream.requests, ["/simple/pkg/", "/simple/nope/"])
        self.get("/root/pypi/+simple/nope/", PIP_JSON)
        self.assertEqual(self.upstream.requests, ["/simple/pkg/", "/simple/nope/"])    # the 404 is remembered


class OfflineTests(MirrorCase):
    def config(self) -> dict[str, Any]:
        return {"offline_mode": True}

    def test_only_stored_files_are_listed_and_nothing_is_fetched(self) -> None:
        stored = add_file(self.server, "root", "pypi", "pkg", "1.0", "pkg-1.0.tar.gz")
        with self.server.store.write() as tx:
            tx.set(mirrorlinks_key("root", "pypi", "pkg"), {
                "links": [["pkg-1.0.tar.gz", f"{stored.relpath}#sha256={stored.sha256}"],
                          ["pkg-2.0.tar.gz", f"root/pypi/+f/{'b' * 3}/{'b' * 13}/pkg-2.0.tar.gz#sha256={'b' * 64}"]],
                "requires_python": [None, None], "yanked": [None, None], "serial": 3, "etag": None})
        response, body = self.get("/root/pypi/+simple/pkg/", PIP_JSON)
        self.assertEqual([f["filename"] for f in json.loads(body)["files"]], ["pkg-1.0.tar.gz"])
        self.assertEqual(header(response, "cache-control"), NO_CACHE)
        self.assertEqual(self.get_json("/root/pypi/+simple/")["projects"], [{"name": "pkg"}])
        response, _ = self.get("/root/pypi/+simple/other/", PIP_JSON)
        self.assertEqual(response.code, 404)
        self.assertEqual(self.upstream.requests, [])

"""Parsing upstream project pages and lists into link records (mirror.md §2.2, §4.3, §4.4; model.md §5.1)."""
from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from devpitx.mirror.links import (
    PageFormatError, UpstreamLink, build_record, deduplicate, e_dirname, entry_from_record, find_record_link,
    link_relpath, parse_html_page, parse_json_page, parse_project_page,
)
from devpitx.mirror.projectlist import parse_project_list
from devpitx.mirror.upstream import MirrorUrl, strip_credentials
from devpitx.model.inherit import stored_mirror_project
from devpitx.model.indexes import Stage

PAGE = "https://upstream.example/simple/pkg/"
H = "a" * 64


def json_page(files: list[dict[str, object]], version: str = "1.1") -> bytes:
    return json.dumps({"meta": {"api-version": version}, "name": "pkg", "files": files}).encode()


class JsonPageTests(SynchronousTestCase):
    def test_fields_pass_through(self) -> None:
        [link] = parse_json_page(json_page([{
            "filename": "pkg-1.0-py3-none-any.whl", "url": "../../files/pkg-1.0-py3-none-any.whl",
            "hashes": {"md5": "0" * 32, "sha256": H}, "requires-python": ">=3.8", "yanked": "broken",
            "size": 1234, "upload-time": "2024-05-01T12:00:00.000000Z", "core-metadata": {"sha256": "b" * 64},
        }]), PAGE)
        self.assertEqual(link, UpstreamLink(
            url="https://upstream.example/files/pkg-1.0-py3-none-any.whl", basename="pkg-1.0-py3-none-any.whl",
            hash_type="sha256", hash_value=H, requires_python=">=3.8", yanked="broken", size=1234,
            upload_time=1714564800.0, core_metadata_sha256="b" * 64))

    def test_first_hash_when_no_sha256_and_defaults(self) -> None:
        [link] = parse_json_page(json_page([{"filename": "pkg-1.0.zip", "url": "https://files.example/p/pkg-1.0.zip",
                                             "hashes": {"md5": "ABCDEF"}, "yanked": False}]), PAGE)
        self.assertEqual((link.hash_type, link.hash_value, link.yanked, link.requires_python, link.size),
                         ("md5", "abcdef", None, None, None))
        [link] = parse_json_page(json_page([{"filename": "pkg-1.0.zip", "url": "x/pkg-1.0.zip", "hashes": {},
                                             "yanked": True, "requires-python": ""}]), PAGE)
        self.assertEqual((link.hash_type, link.yanked, link.requires_python), (None, True, None))
        self.assertEqual(link.url, PAGE + "x/pkg-1.0.zip")

    def test_dist_info_metadata_is_the_old_name_of_core_metadata(self) -> None:
        [link] = parse_json_page(json_page([{"filename": "pkg-1.0.whl", "url": "pkg-1.0.whl", "hashes": {},
                                             "dist-info-metadata": {"sha256": "C" * 64}}]), PAGE)
        self.assertEqual(link.core_metadata_sha256, "c" * 64)

    def test_credentials_never_reach_stored_urls(self) -> None:
        [link] = parse_json_page(json_page([{"filename": "pkg-1.0.zip", "hashes": {},
                                             "url": "https://user:secret@files.example/pkg-1.0.zip#frag"}]), PAGE)
        self.assertEqual(link.url, "https://files.example/pkg-1.0.zip")

    def test_api_version_2_is_refused(self) -> None:
        with self.assertRaises(PageFormatError):
            parse_json_page(json_page([], version="2.0"), PAGE)
        with self.assertRaises(PageFormatError):
            parse_json_page(b"{not json", PAGE)

    def test_unsafe_basenames_are_skipped(self) -> None:
        links = parse_json_page(json_page([{"filename": "x", "url": "../", "hashes": {}},
                                           {"filename": "x", "url": "a%2Fb.zip", "hashes": {}},
                                           {"filename": "x", "url": "ftp://h/pkg-1.0.zip", "hashes": {}}]), PAGE)
        self.assertEqual(links, [])


class HtmlPageTests(SynchronousTestCase):
    def test_attributes_and_hash_fragments(self) -> None:
        body = (f'<a href="../../files/pkg-1.0.tar.gz#sha256={H.upper()}" data-requires-python="&gt;=3.8">x</a>'
                '<a href="/files/pkg-1.1.zip#egg=pkg-1.1" data-yanked="">x</a>'
                '<a href="/files/pkg-1.2.zip#md5=0123abcd" data-yanked="bad build">x</a>'
                '<a href="/files/pkg-1.3.zip#nothash=00">x</a>').encode()
        links = parse_html_page(body, PAGE, "pkg")
        self.assertEqual([(l.basename, l.hash_type, l.hash_value, l.requires_python, l.yanked) for l in links], [
            ("pkg-1.0.tar.gz", "sha256", H, ">=3.8", None),
            ("pkg-1.1.zip", None, None, None, ""),
            ("pkg-1.2.zip", "md5", "0123abcd", None, "bad build"),
            ("pkg-1.3.zip", None, None, None, None),
        ])
        self.assertEqual(links[0].url, "https://upstream.example/files/pkg-1.0.tar.gz")

    def test_base_href_and_archive_filter(self) -> None:
        body = (b'<html><head><base href="https://files.example/dist/"></head><body>'
                b'<a href="pkg-1.0.tar.gz">ok</a><a href="Pkg_Extra-1.0.whl">prefix counts</a>'
                b'<a href="other-1.0.tar.gz">other project</a><a href="pkg-1.0.txt">no archive</a>'
                b'<a href="mailto:pkg-1.0.zip">no http</a><a href="pkg%2D2.0.ZIP">decoded</a></body></html>')
        links = parse_html_page(body, PAGE, "pkg")
        self.assertEqual([(l.url, l.basename) for l in links], [
            ("https://files.example/dist/pkg-1.0.tar.gz", "pkg-1.0.tar.gz"),
            ("https://files.example/dist/Pkg_Extra-1.0.whl", "Pkg_Extra-1.0.whl"),
            ("https://files.example/dist/pkg%2D2.0.ZIP", "pkg-2.0.ZIP"),
        ])

    def test_percent_decoded_basenames(self) -> None:
        [link] = parse_html_page(b'<a href="/f/pkg-1%212017.4%2Bdevpi.zip">x</a>', PAGE, "pkg")
        self.assertEqual(link.basename, "pkg-1!2017.4+devpi.zip")

    def test_content_type_decides_the_parser(self) -> None:
        html = b'<a href="/f/pkg-1.0.zip">x</a>'
        self.assertEqual(len(parse_project_page(html, "text/html", PAGE, "pkg")), 1)
        with self.assertRaises(PageFormatError):
            parse_project_page(html, "application/vnd.pypi.simple.v1+json", PAGE, "pkg")


class DeduplicationTests(SynchronousTestCase):
    def link(self, name: str = "pkg-1.0.zip", url: str = "u", hash_value: str | None = None,
             requires_python: str | None = None) -> UpstreamLink:
        return UpstreamLink(url=url, basename=name, hash_type="sha256" if hash_value else None,
                            hash_value=hash_value, requires_python=requires_python)

    def test_rules(self) -> None:
        plain, hashed, other_hashed = self.link(url="1"), self.link(url="2", hash_value=H), self.link(url="3",
                                                                                                       hash_value=H)
        self.assertEqual(deduplicate([plain, hashed, other_hashed]), [hashed])      # hash wins, first hash stays
        self.assertEqual(deduplicate([hashed, plain]), [hashed])
        with_rp = self.link(url="4", requires_python=">=3")
        self.assertEqual(deduplicate([plain, with_rp]), [with_rp])                  # neither hashed: rp wins
        self.assertEqual(deduplicate([with_rp, plain]), [with_rp])
        self.assertEqual(deduplicate([plain, self.link(url="5")]), [plain])         # otherwise first wins
        self.assertEqual(deduplicate([plain, self.link("pkg-2.0.zip")]), [plain, self.link("pkg-2.0.zip")])


class RelpathTests(SynchronousTestCase):
    def test_f_with_hash_e_without(self) -> None:
        hashed = UpstreamLink(url="https://x/pkg-1.0.zip", basename="pkg-1.0.zip", hash_type="md5",
                              hash_value="0123456789abcdef0123")
        self.assertEqual(link_relpath("root", "pypi", hashed), "root/pypi/+f/012/3456789abcdef/pkg-1.0.zip")
        plain = UpstreamLink(url="https://upstream.example/pkg-1.0.zip", basename="pkg-1.0.zip")
        self.assertEqual(link_relpath("root", "pypi", plain), "root/pypi/+e/https_upstream.example/pkg-1.0.zip")
        self.assertEqual(e_dirname("http://h:8080/simple/pkg/pkg-1.0.zip"), "http_h_8080_simple_pkg")
        self.assertEqual(e_dirname("http://u:p@h/a b/c~d/pkg.zip"), "http_h_a_b_c_d")

    def test_record_round_trip_to_simple_links_and_entries(self) -> None:
        links = [UpstreamLink(url="https://f.example/pkg-1.0.tar.gz", basename="pkg-1.0.tar.gz",
                              hash_type="sha256", hash_value=H, requires_python=">=3.8", size=10,
                              upload_time=5.0, core_metadata_sha256="b" * 64),
                 UpstreamLink(url="https://f.example/pkg-0.9.zip", basename="pkg-0.9.zip", yanked="")]
        record = build_record("root", "pypi", links, serial=7, etag='"e"')
        self.assertEqual(record["links"], [
            ["pkg-1.0.tar.gz", f"root/pypi/+f/{H[:3]}/{H[3:16]}/pkg-1.0.tar.gz#sha256={H}"],
            ["pkg-0.9.zip", "root/pypi/+e/https_f.example/pkg-0.9.zip"]])
        self.assertEqual((record["requires_python"], record["yanked"], record["serial"], record["etag"]),
                         ([">=3.8", None], [None, ""], 7, '"e"'))
        stage = Stage("root", "pypi", {"type": "mirror"})
        mirrored = stored_mirror_project(_View({"mirrorlinks/root/pypi/pkg": record}), stage, "pkg")
        assert mirrored is not None
        self.assertEqual(mirrored.versions, ("0.9", "1.0"))
        first, second = mirrored.links
        self.assertEqual((first.entrypath, first.hash_spec, first.size, first.upload_time, first.owner,
                          first.core_metadata_sha256),
                         (f"root/pypi/+f/{H[:3]}/{H[3:16]}/pkg-1.0.tar.gz", f"sha256={H}", 10, 5.0, "root/pypi",
                          "b" * 64))
        self.assertEqual((second.hash_spec, second.yanked), (None, True))
        found = find_record_link(record, f"root/pypi/+f/{H[:3]}/{H[3:16]}/pkg-1.0.tar.gz")
        assert found is not None
        self.assertEqual(entry_from_record(found, "pkg"), {
            "project": "pkg", "hash_spec": f"sha256={H}", "hashes": {"sha256": H}, "version": "1.0",
            "url": "https://f.example/pkg-1.0.tar.gz", "+upstream_core_metadata": {"sha256": "b" * 64}})


class _View:
    def __init__(self, values: dict[str, object]) -> None:
        self._values = values

    def get(self, key: str) -> object | None:
        return self._values.get(key)

    def children(self, prefix: str) -> list[str]:
        return []


class ProjectListTests(SynchronousTestCase):
    def test_json(self) -> None:
        body = json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": "Foo_Bar"}, {"name": "baz"}]})
        self.assertEqual(parse_project_list(body.encode(), "application/vnd.pypi.simple.v1+json",
                                            "https://upstream.example/simple/"), {"foo-bar", "baz"})

    def test_html_rules(self) -> None:
        body = (b'<a href="foo/">Foo.Bar</a><a href="/simple/relative/"></a>'
                b'<a href="https://upstream.example/simple/same-host/"></a>'
                b'<a href="https://elsewhere.example/simple/other-host/">ignored</a>'
                b'<a href="https://upstream.example/outside/">ignored</a>')
        self.assertEqual(parse_project_list(body, "text/html", "https://upstream.example/simple/"),
                         {"foo-bar", "relative", "same-host"})


class MirrorUrlTests(SynchronousTestCase):
    def test_credentials_are_split_off_and_hidden(self) -> None:
        mirror = MirrorUrl.parse("https://us%40er:p%3Ass@upstream.example/simple")
        self.assertEqual(mirror.url, "https://upstream.example/simple/")
        self.assertEqual(mirror.authorization, b"Basic dXNAZXI6cDpzcw==")    # us@er:p:ss
        self.assertNotIn("p%3Ass", repr(mirror))
        self.assertNotIn("dXNAZXI", repr(mirror))
        self.assertEqual(mirror.auth_for("https://upstream.example:443/files/x.zip"), mirror.authorization)
        self.assertIsNone(mirror.auth_for("https://files.example/x.zip"))       # never to another host
        self.assertIsNone(mirror.auth_for("http://upstream.example/x.zip"))
        self.assertEqual(strip_credentials("http://a:b@h:1/p?q#f"), "http://h:1/p?q")

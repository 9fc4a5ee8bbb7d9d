"""The view versiondata of model/views.py: +links, +shadowing, inheritance and mirror synthesis."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from devpitx.model.indexes import Stage, sro
from devpitx.model.inherit import MirrorProject, SimpleLink
from devpitx.model.views import mirror_versiondata, project_view, version_view, view_link, view_versiondata
from devpitx.storage.keys import index_key, project_key, version_key


def url_for(relpath: str) -> str:
    return f"http://outside.example/prefix/{relpath}"


class FakeView:
    """Just enough of a read view: keys and their children."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        return self.data.get(key)

    def children(self, prefix: str) -> list[str]:
        below = prefix + "/"
        return sorted({k[len(below):].split("/", 1)[0] for k in self.data if k.startswith(below)})

    def index(self, user: str, index: str, **config: Any) -> None:
        self.data[index_key(user, index)] = {"type": "stage", "bases": [], "mirror_whitelist": [],
                                             "mirror_whitelist_inheritance": "intersection", **config}

    def version(self, user: str, index: str, project: str, version: str, *files: str) -> None:
        self.data[project_key(user, index, project)] = {"name": project}
        self.data[version_key(user, index, project, version)] = {
            "name": project, "version": version,
            "+elinks": [{"rel": "releasefile", "entrypath": f"{user}/{index}/+f/abc/def/{f}",
                         "hash_spec": "sha256=00", "hashes": {"sha256": "00"}, "_log": [{"what": "upload"}]}
                        for f in files]}


class ViewLinkTests(SynchronousTestCase):
    def test_link(self) -> None:
        link = {"rel": "toxresult", "entrypath": "u/i/+f/a/b/p-1.tgz.toxresult-1-0", "for_entrypath": "u/i/+f/a/b/p-1.tgz",
                "hash_spec": "sha256=ab", "hashes": {"sha256": "ab"}, "_log": [{"what": "upload", "who": "u"}]}
        self.assertEqual(view_link(link, url_for), {
            "rel": "toxresult", "href": url_for("u/i/+f/a/b/p-1.tgz.toxresult-1-0"),
            "for_href": url_for("u/i/+f/a/b/p-1.tgz"), "hash_spec": "sha256=ab", "hashes": {"sha256": "ab"},
            "log": [{"what": "upload", "who": "u"}]})
        self.assertEqual(link["_log"], [{"what": "upload", "who": "u"}])    # the stored record is untouched

    def test_versiondata_without_and_with_shadowing(self) -> None:
        stored = {"name": "p", "version": "1", "summary": "s",
                  "+elinks": [{"rel": "releasefile", "entrypath": "u/i/+f/a/b/p-1.tgz", "yanked": "bad"}]}
        other = {"name": "p", "version": "1", "+elinks": []}
        view = view_versiondata(stored, url_for)
        self.assertEqual(view, {"name": "p", "version": "1", "summary": "s",
                                "+links": [{"rel": "releasefile", "href": url_for("u/i/+f/a/b/p-1.tgz"),
                                            "yanked": "bad"}]})
        self.assertEqual(view_versiondata(stored, url_for, [other])["+shadowing"],
                         [{"name": "p", "version": "1", "+links": []}])
        self.assertNotIn("+links", view_versiondata({"name": "p", "version": "1"}, url_for))

    def test_mirror_versiondata(self) -> None:
        links = [SimpleLink("p-1.zip", "root/pypi/+f/aaa/bbb/p-1.zip", "root/pypi", "1", "sha256", "aa", ">=3"),
                 SimpleLink("p-1.whl", "root/pypi/+e/https_h/p-1.whl", "root/pypi", "1", yanked="why"),
                 SimpleLink("p-2.zip", "root/pypi/+f/ccc/ddd/p-2.zip", "root/pypi", "2", "sha256", "cc")]
        self.assertEqual(mirror_versiondata("P", "1", links), {
            "name": "p", "version": "1", "requires_python": ">=3", "yanked": "why",
            "+elinks": [{"rel": "releasefile", "entrypath": "root/pypi/+f/aaa/bbb/p-1.zip", "hash_spec": "sha256=aa",
                         "hashes": {"sha256": "aa"}},
                        {"rel": "releasefile", "entrypath": "root/pypi/+e/https_h/p-1.whl"}]})


class ProjectViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.view = FakeView()
        self.view.index("u", "base")
        self.view.index("u", "mid", bases=["u/base"])
        self.view.index("u", "top", bases=["u/mid", "u/base"])
        self.view.version("u", "base", "p", "1.0", "p-1.0.tgz")
        self.view.version("u", "base", "p", "0.5", "p-0.5.tgz")
        self.view.version("u", "top", "p", "1.0", "p-1.0.zip")

    def test_first_index_wins_later_ones_shadow_once(self) -> None:
        result, exists = project_view(self.view, sro(self.view, "u", "top"), "p", url_for)
        self.assertTrue(exists)
        self.assertEqual(list(result), ["0.5", "1.0"])
        self.assertEqual([link["href"] for link in result["1.0"]["+links"]], [url_for("u/top/+f/abc/def/p-1.0.zip")])
        # base is reachable twice (top -> mid -> base, top -> base) but shadows once
        self.assertEqual([[link["href"] for link in s["+links"]] for s in result["1.0"]["+shadowing"]],
                         [[url_for("u/base/+f/abc/def/p-1.0.tgz")]])

    def test_only_the_index_itself(self) -> None:
        top = sro(self.view, "u", "top")[:1]
        result, exists = project_view(self.view, top, "P", url_for)
        self.assertEqual((list(result), exists), (["1.0"], True))
        mid = sro(self.view, "u", "mid")[:1]
        self.assertEqual(project_view(self.view, mid, "p", url_for), ({}, False))

    def test_version_view(self) -> None:
        order = sro(self.view, "u", "top")
        self.assertEqual(version_view(self.view, order, "p", "0.5", url_for)["+links"][0]["href"],  # type: ignore[index]
                         url_for("u/base/+f/abc/def/p-0.5.tgz"))
        self.assertIsNone(version_view(self.view, order, "p", "9", url_for))
        self.assertIsNone(version_view(self.view, order, "q", "1.0", url_for))


class FakeMirrors:
    """A MirrorSource whose root/pypi has ``p`` 2.0."""

    def __init__(self) -> None:
        link = SimpleLink("p-2.0.zip", "root/pypi/+f/aaa/bbb/p-2.0.zip", "root/pypi", "2.0", "sha256", "aa")
        self.mirrored = MirrorProject((link,), ("2.0",))
        self.asked: list[str] = []

    def mirror_project(self, view: Any, mirror: Stage, project: str) -> MirrorProject | None:
        self.asked.append(project)
        return self.mirrored if project == "p" else None

    def mirror_project_names(self, view: Any, mirror: Stage) -> list[str]:
        return ["p"]


class MirrorContributionTests(SynchronousTestCase):
    """Mirrors enter through a MirrorSource; whitelisting decides whether they are asked."""

    def setUp(self) -> None:
        self.view = FakeView()
        self.view.data[index_key("root", "pypi")] = {"type": "mirror"}
        self.view.index("u", "dev", bases=["root/pypi"])
        self.mirrors = FakeMirrors()

    def test_mirror_versions_join_when_not_shadowed(self) -> None:
        result, exists = project_view(self.view, sro(self.view, "u", "dev"), "p", url_for, self.mirrors)
        self.assertTrue(exists)
        self.assertEqual(result["2.0"]["+links"], [{"rel": "releasefile", "href": url_for("root/pypi/+f/aaa/bbb/p-2.0.zip"),
                                                    "hash_spec": "sha256=aa", "hashes": {"sha256": "aa"}}])
        self.assertEqual(result["2.0"]["name"], "p")

    def test_private_project_blocks_the_mirror_unless_whitelisted(self) -> None:
        self.view.version("u", "dev", "p", "1.0", "p-1.0.zip")
        result, _exists = project_view(self.view, sro(self.view, "u", "dev"), "p", url_for, self.mirrors)
        self.assertEqual(list(result), ["1.0"])
        self.assertEqual(self.mirrors.asked, [])      # a blocked mirror is not even asked
        self.view.index("u", "dev", bases=["root/pypi"], mirror_whitelist=["p"])
        result, _exists = project_view(self.view, sro(self.view, "u", "dev"), "p", url_for, self.mirrors)
        self.assertEqual(list(result), ["1.0", "2.0"])

    def test_stored_records_by_default(self) -> None:
        self.assertEqual(project_view(self.view, sro(self.view, "u", "dev"), "p", url_for), ({}, False))

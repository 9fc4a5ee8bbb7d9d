"""Inheritance reads: merged links, whitelist and private shadowing, project lists (model.md §6)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import pytest

from devpitx.model import inherit
from devpitx.model.indexes import Stage, sro
from devpitx.model.inherit import MirrorProject, SimpleLink, project_links, project_list, walk_project


class DictView:
    """A read view over a plain dict of records: what model functions need from a Store."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        return self.records.get(key)

    def children(self, prefix: str) -> Iterable[str]:
        start = prefix + "/"
        return {key[len(start):].split("/", 1)[0] for key in self.records if key.startswith(start)}

    # -- builders
    def stage(self, name: str, *, bases: Iterable[str] = (), whitelist: Iterable[str] = (),
              inheritance: str | None = "intersection") -> None:
        config: dict[str, Any] = {"type": "stage", "bases": list(bases), "mirror_whitelist": list(whitelist)}
        if inheritance is not None:
            config["mirror_whitelist_inheritance"] = inheritance
        self.records[f"index/{name}"] = config

    def mirror(self, name: str) -> None:
        self.records[f"index/{name}"] = {"type": "mirror", "mirror_url": "http://upstream.test/simple/"}

    def release(self, index: str, project: str, version: str, *basenames: str, rel: str = "releasefile",
                requires_python: str | None = "", entry: dict[str, Any] | None = None) -> list[str]:
        self.records[f"project/{index}/{project}"] = {"name": project}
        key = f"version/{index}/{project}/{version}"
        data = self.records.setdefault(key, {"name": project, "version": version, "+elinks": []})
        if requires_python is not None:
            data["requires_python"] = requires_python
        relpaths = []
        for basename in basenames:
            sha = hashlib.sha256(f"{index}/{basename}".encode()).hexdigest()
            relpath = f"{index}/+f/{sha[:3]}/{sha[3:16]}/{basename}"
            data["+elinks"].append({"rel": rel, "entrypath": relpath, "hash_spec": f"sha256={sha}",
                                    "hashes": {"sha256": sha}})
            default = {"hashes": {"sha256": sha}, "+size": 10}
            self.records[f"file/{relpath}"] = dict(entry if entry is not None else default)
            relpaths.append(relpath)
        return relpaths


def names(links: Iterable[SimpleLink]) -> list[tuple[str, str]]:
    return [(link.owner, link.basename) for link in links]


@pytest.fixture
def view() -> DictView:
    return DictView()


class FakeMirrors:
    """Stands in for the mirror seam; records which mirrors were asked about which project."""

    def __init__(self, projects: dict[str, dict[str, list[str]]]) -> None:
        self.projects = projects
        self.asked: list[tuple[str, str]] = []

    def project(self, view: Any, mirror: Stage, project: str) -> MirrorProject | None:
        self.asked.append((mirror.name, project))
        files = self.projects.get(mirror.name, {}).get(project)
        if files is None:
            return None
        links = tuple(SimpleLink(basename=f, entrypath=f"{mirror.name}/+e/up/{f}", owner=mirror.name,
                                 version=f.split("-")[1].removesuffix(".zip")) for f in files)
        return MirrorProject(links, tuple(link.version for link in links))

    def names(self, view: Any, mirror: Stage) -> list[str]:
        return sorted(self.projects.get(mirror.name, {}))


@pytest.fixture
def mirrors(monkeypatch: pytest.MonkeyPatch) -> FakeMirrors:
    fake = FakeMirrors({})
    monkeypatch.setattr(inherit, "mirror_project", fake.project)
    monkeypatch.setattr(inherit, "mirror_project_names", fake.names)
    return fake


# -- merged links ----------------------------------------------------------------------------------
def test_links_follow_the_resolution_order_of_the_spec_example(view: DictView) -> None:
    view.mirror("root/pypi")
    view.stage("u1/dev")
    view.stage("u2/dev", bases=["u1/dev"])
    view.stage("u3/dev", bases=["u2/dev", "root/pypi"])
    view.release("u1/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    view.release("u2/dev", "pkg", "2.0", "pkg-2.0.tar.gz")
    view.release("u3/dev", "pkg", "3.0", "pkg-3.0.tar.gz")
    assert [stage.name for stage in sro(view, "u3", "dev")] == ["u3/dev", "u2/dev", "u1/dev", "root/pypi"]
    found = project_links(view, "u3", "dev", "pkg")
    assert names(found.links) == [("u3/dev", "pkg-3.0.tar.gz"), ("u2/dev", "pkg-2.0.tar.gz"),
                                  ("u1/dev", "pkg-1.0.tar.gz")]
    assert found.exists
    assert found.versions == ("1.0", "2.0", "3.0")


def test_first_index_wins_for_the_same_basename(view: DictView) -> None:
    view.stage("u1/dev")
    view.stage("u2/dev", bases=["u1/dev"])
    (older,) = view.release("u1/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    (newer,) = view.release("u2/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    found = project_links(view, "u2", "dev", "pkg")
    assert [link.entrypath for link in found.links] == [newer]
    assert older != newer


def test_a_base_reachable_twice_contributes_once(view: DictView) -> None:
    view.stage("a/dev")
    view.stage("b/dev", bases=["a/dev"])
    view.stage("c/dev", bases=["a/dev", "b/dev", "c/dev"])
    view.release("a/dev", "pkg", "1.0", "pkg-1.0.tar.gz", "pkg-1.0.zip")
    found = project_links(view, "c", "dev", "pkg")
    assert names(found.links) == [("a/dev", "pkg-1.0.tar.gz"), ("a/dev", "pkg-1.0.zip")]


def test_cyclic_bases_terminate(view: DictView) -> None:
    view.stage("a/dev", bases=["b/dev"])
    view.stage("b/dev", bases=["a/dev"])
    view.release("b/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    assert names(project_links(view, "a", "dev", "pkg").links) == [("b/dev", "pkg-1.0.tar.gz")]


def test_only_release_files_are_links(view: DictView) -> None:
    view.stage("u/dev")
    view.release("u/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    view.release("u/dev", "pkg", "1.0", "pkg-1.0.doc.zip", rel="doczip")
    view.release("u/dev", "pkg", "1.0", "pkg-1.0.tar.gz.toxresult-20240101000000-0", rel="toxresult")
    assert names(project_links(view, "u", "dev", "pkg").links) == [("u/dev", "pkg-1.0.tar.gz")]


def test_versions_are_newest_first_within_an_index(view: DictView) -> None:
    view.stage("u/dev")
    for version in ("1.0", "10.0", "2.0rc1", "2.0"):
        view.release("u/dev", "pkg", version, f"pkg-{version}.tar.gz")
    found = project_links(view, "u", "dev", "pkg")
    assert [link.version for link in found.links] == ["10.0", "2.0", "2.0rc1", "1.0"]
    assert found.versions == ("1.0", "2.0rc1", "2.0", "10.0")


def test_link_carries_entry_and_version_data(view: DictView) -> None:
    view.stage("u/dev")
    view.release("u/dev", "pkg", "1.0", "pkg-1.0-py3-none-any.whl", requires_python=">=3.8",
                 entry={"+size": 1234, "+upload_time": 1700000000.5, "+core_metadata": {"sha256": "ab" * 32}})
    view.release("u/dev", "pkg", "0.9", "pkg-0.9.tar.gz", requires_python=None, entry={})
    wheel, sdist = project_links(view, "u", "dev", "pkg").links
    assert (wheel.size, wheel.upload_time, wheel.core_metadata_sha256) == (1234, 1700000000.5, "ab" * 32)
    assert wheel.requires_python == ">=3.8"
    assert wheel.hash_type == "sha256" and wheel.hash_spec == f"sha256={wheel.hash_value}"
    assert (sdist.size, sdist.upload_time, sdist.core_metadata_sha256, sdist.requires_python) == (
        None, None, None, None)


def test_registered_project_without_files_exists(view: DictView) -> None:
    view.stage("u/dev")
    view.release("u/dev", "pkg", "1.0")
    found = project_links(view, "u", "dev", "pkg")
    assert found.links == () and found.exists and found.versions == ("1.0",)


def test_unknown_project_and_unknown_index(view: DictView) -> None:
    view.stage("u/dev")
    assert not project_links(view, "u", "dev", "nope").exists
    missing = project_links(view, "nobody", "dev", "pkg")
    assert (missing.links, missing.exists) == ((), False)


def test_project_name_is_normalized(view: DictView) -> None:
    view.stage("u/dev")
    view.release("u/dev", "my-pkg", "1.0", "my_pkg-1.0.tar.gz")
    found = project_links(view, "u", "dev", "My_Pkg")
    assert found.project == "my-pkg" and len(found.links) == 1


def test_mirrors_have_no_projects_until_mirroring_exists(view: DictView) -> None:
    view.mirror("root/pypi")
    view.stage("u/dev", bases=["root/pypi"])
    found = project_links(view, "u", "dev", "requests")
    assert (found.links, found.exists, found.contributing_mirrors) == ((), False, ())
    assert project_list(view, sro(view, "root", "pypi"))[0].names == ()


# -- whitelist and shadowing ---------------------------------------------------------------------
def test_mirror_contributes_after_private_indexes(view: DictView, mirrors: FakeMirrors) -> None:
    view.mirror("root/pypi")
    view.stage("u/dev", bases=["root/pypi"], whitelist=["pkg"])
    view.release("u/dev", "pkg", "2.0", "pkg-2.0.tar.gz")
    mirrors.projects["root/pypi"] = {"pkg": ["pkg-1.0.zip", "pkg-2.0.tar.gz"]}
    found = project_links(view, "u", "dev", "pkg")
    assert names(found.links) == [("u/dev", "pkg-2.0.tar.gz"), ("root/pypi", "pkg-1.0.zip")]
    assert found.contributing_mirrors == ("root/pypi",) and found.blocked_mirrors == ()


def test_private_project_blocks_mirror_without_asking_it(view: DictView, mirrors: FakeMirrors) -> None:
    view.mirror("root/pypi")
    view.stage("u/dev", bases=["root/pypi"])
    view.release("u/dev", "pkg", "2.0", "pkg-2.0.tar.gz")
    mirrors.projects["root/pypi"] = {"pkg": ["pkg-1.0.zip"]}
    found = project_links(view, "u", "dev", "pkg")
    assert names(found.links) == [("u/dev", "pkg-2.0.tar.gz")]
    assert found.blocked_mirrors == ("root/pypi",) and found.contributing_mirrors == ()
    assert mirrors.asked == []


def test_project_only_on_the_mirror_is_served_from_it(view: DictView, mirrors: FakeMirrors) -> None:
    view.mirror("root/pypi")
    view.stage("u/dev", bases=["root/pypi"])
    mirrors.projects["root/pypi"] = {"requests": ["requests-2.0.zip"]}
    found = project_links(view, "u", "dev", "requests")
    assert names(found.links) == [("root/pypi", "requests-2.0.zip")]
    assert found.exists and found.versions == ("2.0",)


@pytest.mark.parametrize("whitelist", [["pkg"], ["*"]])
def test_whitelisted_project_is_mixed_with_the_mirror(view: DictView, mirrors: FakeMirrors,
                                                      whitelist: list[str]) -> None:
    view.mirror("root/pypi")
    view.stage("u/dev", bases=["root/pypi"], whitelist=whitelist)
    view.release("u/dev", "pkg", "2.0", "pkg-2.0.tar.gz")
    mirrors.projects["root/pypi"] = {"pkg": ["pkg-1.0.zip"]}
    assert project_links(view, "u", "dev", "pkg").contributing_mirrors == ("root/pypi",)


@pytest.mark.parametrize(("inheritance", "blocked"), [("intersection", True), ("union", False), (None, False)])
def test_whitelist_of_a_base_counts_only_with_union(view: DictView, mirrors: FakeMirrors,
                                                    inheritance: str | None, blocked: bool) -> None:
    """The requested index's mode decides; stored configs without the key behave like union."""
    view.mirror("root/pypi")
    view.stage("b/dev", bases=["root/pypi"], whitelist=["pkg"])
    view.stage("u/dev", bases=["b/dev"], inheritance=inheritance)
    view.release("b/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    mirrors.projects["root/pypi"] = {"pkg": ["pkg-0.5.zip"]}
    found = project_links(view, "u", "dev", "pkg")
    assert found.blocked_mirrors == (("root/pypi",) if blocked else ())
    assert len(found.links) == (1 if blocked else 2)


def test_whitelist_of_the_requested_index_is_enough(view: DictView, mirrors: FakeMirrors) -> None:
    view.mirror("root/pypi")
    view.stage("b/dev", bases=["root/pypi"])
    view.stage("u/dev", bases=["b/dev"], whitelist=["pkg"])
    view.release("b/dev", "pkg", "1.0", "pkg-1.0.tar.gz")
    mirrors.projects["root/pypi"] = {"pkg": ["pkg-0.5.zip"]}
    # Whitelisted at u/dev, before the intersection with b/dev's empty list: once whitelisted,
    # a later private copy does not shadow the mirror.
    found = project_links(view, "u", "dev", "pkg")
    assert (found.blocked_mirrors, found.contributing_mirrors) == ((), ("root/pypi",))


def test_walk_with_an_empty_order() -> None:
    found = walk_project(DictView(), [], "Pkg")
    assert (found.project, found.links, found.exists) == ("pkg", (), False)


# -- project lists -------------------------------------------------------------------------------
def test_project_list_sections_in_resolution_order(view: DictView, mirrors: FakeMirrors) -> None:
    view.mirror("root/pypi")
    view.stage("b/dev")
    view.stage("u/dev", bases=["b/dev", "root/pypi"])
    view.release("u/dev", "zeta", "1.0")
    view.release("u/dev", "alpha", "1.0")
    view.release("b/dev", "alpha", "1.0")
    view.release("b/dev", "beta", "1.0")
    mirrors.projects["root/pypi"] = {"beta": [], "django": []}
    sections = project_list(view, sro(view, "u", "dev"))
    assert [(s.index, s.bases, s.names) for s in sections] == [
        ("u/dev", ("b/dev", "root/pypi"), ("alpha", "zeta")),
        ("b/dev", (), ("beta",)),
        ("root/pypi", (), ("django",)),
    ]

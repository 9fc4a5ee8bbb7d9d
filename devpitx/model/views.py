"""The JSON views of a project and a version (http-api.md §3.12, §3.13, model.md §6.4).

*View versiondata* is the stored versiondata of the first index in the
resolution order that has a version, with the internal ``+elinks`` turned
into ``+links`` (absolute ``href``/``for_href``, ``log`` instead of ``_log``)
and the same version from later indexes listed under ``+shadowing``.
devpi-client's ``list``, ``remove`` and ``test`` read these links and
compare their hrefs by string prefix with the index URL from ``+api``, so
both are built by the caller from one base URL: everything here takes a
``url_for(relpath) -> absolute URL`` function and does no I/O.

Which indexes contribute follows the whitelist walk of ``inherit.py``:
every private index that has the project, and the mirrors that walk did not
block. Mirror versiondata is synthesized from the mirror's links.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from devpitx.model.indexes import Stage
from devpitx.model.inherit import STORED_MIRRORS, MirrorSource, SimpleLink, walk_project
from devpitx.model.names import normalize_project_name
from devpitx.model.projects import get_versiondata, has_project, version_names
from devpitx.model.versions import version_sort_key

UrlFor = Callable[[str], str]
"""relpath (``u/i/+f/...``) -> absolute URL built from the request's base URL."""


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


@dataclass(frozen=True)
class Contribution:
    """One index's stored (or synthesized) versiondata of a project, by version."""

    stage: Stage
    versions: Mapping[str, Mapping[str, Any]]


# -- one versiondata ---------------------------------------------------------------------------
def view_link(link: Mapping[str, Any], url_for: UrlFor) -> dict[str, Any]:
    """A stored link as ``+links`` shows it: ``entrypath`` -> ``href``, ``_log`` -> ``log``."""
    result = {k: copy.deepcopy(v) for k, v in link.items()
              if k not in ("entrypath", "for_entrypath", "_log")}
    result["href"] = url_for(str(link["entrypath"]))
    for_entrypath = link.get("for_entrypath")
    if isinstance(for_entrypath, str):
        result["for_href"] = url_for(for_entrypath)
    if "_log" in link:
        result["log"] = copy.deepcopy(list(link["_log"]))
    return result


def view_versiondata(versiondata: Mapping[str, Any], url_for: UrlFor,
                     shadowing: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The view of one stored versiondata; ``shadowing`` are stored versiondata of later indexes."""
    result = {k: copy.deepcopy(v) for k, v in versiondata.items() if k not in ("+elinks", "+shadowing")}
    elinks = versiondata.get("+elinks")
    if isinstance(elinks, list):
        result["+links"] = [view_link(link, url_for) for link in elinks
                            if isinstance(link, Mapping) and isinstance(link.get("entrypath"), str)]
    if shadowing:
        result["+shadowing"] = [view_versiondata(other, url_for) for other in shadowing]
    return result


def mirror_versiondata(project: str, version: str, links: Iterable[SimpleLink]) -> dict[str, Any]:
    """Versiondata of a mirror, made from its cached links of ``version`` (model.md §6.4).

    ``requires_python`` and ``yanked`` come from the last link that has a value.
    """
    data: dict[str, Any] = {"name": normalize_project_name(project), "version": version}
    elinks: list[dict[str, Any]] = []
    for link in links:
        if link.version != version:
            continue
        item: dict[str, Any] = {"rel": "releasefile", "entrypath": link.entrypath}
        if link.hash_type and link.hash_value:
            item["hash_spec"] = link.hash_spec
            item["hashes"] = {link.hash_type: link.hash_value}
        elinks.append(item)
        if link.requires_python is not None:
            data["requires_python"] = link.requires_python
        if link.yanked:
            data["yanked"] = link.yanked
    data["+elinks"] = elinks
    return data


# -- walking the resolution order --------------------------------------------------------------
def contributions(view: Reader, order: Sequence[Stage], project: str,
                  mirrors: MirrorSource = STORED_MIRRORS) -> tuple[list[Contribution], bool]:
    """The indexes of ``order`` that contribute versions of ``project``, in order, and whether
    any index of ``order`` has the project at all (for 404 decisions).

    ``mirrors`` is where mirror data comes from (the running server's mirror component,
    which has brought its records up to date before this synchronous read).
    """
    project = normalize_project_name(project)
    walk = walk_project(view, order, project, mirrors)
    found: list[Contribution] = []
    for stage in order:
        if stage.is_mirror:
            if stage.name not in walk.contributing_mirrors:
                continue
            mirrored = mirrors.mirror_project(view, stage, project)
            if mirrored is None:
                continue
            versions = {v: mirror_versiondata(project, v, mirrored.links) for v in mirrored.versions}
            found.append(Contribution(stage, versions))
            continue
        if not has_project(view, stage.user, stage.index, project):
            continue
        stored: dict[str, Mapping[str, Any]] = {}
        for version in version_names(view, stage.user, stage.index, project):
            data = get_versiondata(view, stage.user, stage.index, project, version)
            if isinstance(data, dict):
                stored[version] = data
        found.append(Contribution(stage, stored))
    return found, walk.exists


def project_view(view: Reader, order: Sequence[Stage], project: str, url_for: UrlFor,
                 mirrors: MirrorSource = STORED_MIRRORS) -> tuple[dict[str, dict[str, Any]], bool]:
    """``projectconfig`` result: version -> view versiondata over ``order``, ascending by version;
    and whether the project exists anywhere in ``order``."""
    found, exists = contributions(view, order, project, mirrors)
    by_version: dict[str, list[Mapping[str, Any]]] = {}
    for contribution in found:
        for version, data in contribution.versions.items():
            by_version.setdefault(version, []).append(data)
    result = {}
    for version in sorted(by_version, key=version_sort_key):
        first, *later = by_version[version]
        result[version] = view_versiondata(first, url_for, later)
    return result, exists or bool(found)


def version_view(view: Reader, order: Sequence[Stage], project: str, version: str, url_for: UrlFor,
                 mirrors: MirrorSource = STORED_MIRRORS) -> dict[str, Any] | None:
    """``versiondata`` result for one version over ``order``; None if no index has it."""
    found, _exists = contributions(view, order, project, mirrors)
    datas = [c.versions[version] for c in found if version in c.versions]
    if not datas:
        return None
    first, *later = datas
    return view_versiondata(first, url_for, later)

"""Reads through inheritance: merged simple links, versions and project lists (model.md §6.2, §6.3, §6.5).

A read of project ``P`` through index ``S`` walks the stage resolution order
(``indexes.sro``) with the whitelist rules of §6.2: once a private index on
the way has ``P`` and ``P`` is not whitelisted, mirrors after it are blocked
("private shadowing"), so a private ``P`` cannot be mixed with an unrelated
upstream ``P``. Contributing indexes' release links are concatenated in walk
order, first basename wins.

Mirror data enters in exactly one place, :func:`mirror_project` (and
:func:`mirror_project_names` for lists). Mirror fetching is not written yet,
so both answer "nothing" and mirrors contribute no projects; the walk around
them is complete, so the mirror code only has to fill in those two functions.

Everything here is a pure function of a read view; no I/O, no HTTP.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devpitx.model.indexes import Stage, sro
from devpitx.model.names import normalize_project_name
from devpitx.model.projects import get_file_entry, get_versiondata, has_project, project_names, version_names
from devpitx.model.versions import version_sort_key

# Stored configurations without the key are old ones; they behave like "union" (model.md §3.2).
_LEGACY_INHERITANCE = "union"


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


@dataclass(frozen=True)
class SimpleLink:
    """One release file as a simple page shows it."""

    basename: str
    entrypath: str                    # relpath, no fragment: "u/i/+f/abc/def.../pkg-1.0.tgz"
    owner: str                        # "u/i" of the index that holds the file
    version: str
    hash_type: str | None = None      # "sha256" for uploads
    hash_value: str | None = None
    requires_python: str | None = None
    yanked: bool | str | None = None  # True or the reason (PEP 592); None when not yanked
    size: int | None = None
    upload_time: float | None = None  # unix seconds
    core_metadata_sha256: str | None = None

    @property
    def hash_spec(self) -> str | None:
        if self.hash_type is None or self.hash_value is None:
            return None
        return f"{self.hash_type}={self.hash_value}"


@dataclass(frozen=True)
class MirrorProject:
    """What a mirror knows about one project: its links (and versions derived from them)."""

    links: tuple[SimpleLink, ...]
    versions: tuple[str, ...]


@dataclass(frozen=True)
class ProjectLinks:
    """The result of walking the resolution order for one project."""

    project: str                                    # normalized
    links: tuple[SimpleLink, ...]                   # merged, walk order, first basename wins
    versions: tuple[str, ...]                       # union over contributing indexes, ascending
    exists: bool                                    # some index in the order has the project (§6.5)
    contributing_mirrors: tuple[str, ...] = ()      # mirrors whose links are included
    blocked_mirrors: tuple[str, ...] = ()           # mirrors not consulted because of private shadowing


@dataclass(frozen=True)
class ListSection:
    """One index's part of a project list: names not already listed by an earlier index."""

    index: str
    bases: tuple[str, ...]
    names: tuple[str, ...] = field(default=())


# -- the mirror seam --------------------------------------------------------------------------
def mirror_project(view: Reader, mirror: Stage, project: str) -> MirrorProject | None:
    """The links mirror ``mirror`` has for ``project``, or None if it does not have it.

    Mirror fetching is a later issue: until then mirrors have no projects.
    """
    return None


def mirror_project_names(view: Reader, mirror: Stage) -> list[str]:
    """The normalized project names mirror ``mirror`` lists (none until mirrors fetch)."""
    return []


# -- private indexes ---------------------------------------------------------------------------
def _link_from(view: Reader, stage: Stage, version: str, versiondata: dict[str, Any],
               link: dict[str, Any]) -> SimpleLink:
    entrypath = str(link["entrypath"])
    hash_type: str | None = None
    hash_value: str | None = None
    hash_spec = link.get("hash_spec")
    if isinstance(hash_spec, str) and "=" in hash_spec:
        hash_type, _, hash_value = hash_spec.partition("=")
    entry = get_file_entry(view, entrypath) or {}
    core = entry.get("+core_metadata")
    size = entry.get("+size")
    upload_time = entry.get("+upload_time")
    requires_python = versiondata.get("requires_python")
    yanked = link.get("yanked")     # true or a reason, set by the yank API (model/links.py)
    return SimpleLink(
        basename=entrypath.rsplit("/", 1)[-1],
        entrypath=entrypath,
        owner=stage.name,
        version=version,
        hash_type=hash_type,
        hash_value=hash_value,
        requires_python=requires_python if isinstance(requires_python, str) else None,
        yanked=yanked if isinstance(yanked, (bool, str)) and yanked not in (False, "") else None,
        size=size if isinstance(size, int) else None,
        upload_time=float(upload_time) if isinstance(upload_time, (int, float)) else None,
        core_metadata_sha256=core.get("sha256") if isinstance(core, dict) else None,
    )


def private_links(view: Reader, stage: Stage, project: str) -> tuple[list[SimpleLink], list[str]]:
    """Release-file links and version names of ``project`` in one private index.

    Versions newest first, links in stored order within a version: a stable
    order that does not depend on how the store enumerates keys.
    """
    versions = sorted(version_names(view, stage.user, stage.index, project), key=version_sort_key, reverse=True)
    links: list[SimpleLink] = []
    for version in versions:
        versiondata = get_versiondata(view, stage.user, stage.index, project, version)
        if not versiondata:
            continue
        for link in versiondata.get("+elinks", ()):
            # Only release files appear in simple pages (model.md §5.8): no doczips, no toxresults.
            if link.get("rel") == "releasefile" and link.get("entrypath"):
                links.append(_link_from(view, stage, version, versiondata, link))
    return links, versions


# -- the walk ----------------------------------------------------------------------------------
def _inheritance_mode(start: Stage) -> str:
    mode = start.config.get("mirror_whitelist_inheritance", _LEGACY_INHERITANCE)
    return mode if mode in ("intersection", "union") else _LEGACY_INHERITANCE


def _whitelist_of(stage: Stage) -> set[str]:
    stored = stage.config.get("mirror_whitelist") or ()
    return {entry for entry in stored if isinstance(entry, str)}


def walk_project(view: Reader, order: Sequence[Stage], project: str) -> ProjectLinks:
    """Merged links of ``project`` over the resolution order ``order`` (model.md §6.2, §6.3).

    ``order[0]`` is the requested index; its ``mirror_whitelist_inheritance``
    decides how the whitelists along the way combine.
    """
    project = normalize_project_name(project)
    if not order:
        return ProjectLinks(project, (), (), False)
    mode = _inheritance_mode(order[0])
    whitelist: set[str] | None = None
    whitelisted = False
    private_hit = False
    exists = False
    links: list[SimpleLink] = []
    seen_basenames: set[str] = set()
    versions: set[str] = set()
    contributing: list[str] = []
    blocked: list[str] = []

    def take(found: Iterable[SimpleLink]) -> None:
        for link in found:
            if link.basename not in seen_basenames:
                seen_basenames.add(link.basename)
                links.append(link)

    for stage in order:
        if stage.is_mirror:
            if private_hit and not whitelisted:
                # Not even asked: a shadowed project must never cost an upstream fetch.
                # (Existence is already settled by the private hit.)
                blocked.append(stage.name)
                continue
            mirrored = mirror_project(view, stage, project)
            if mirrored is None:
                continue
            exists = True
            contributing.append(stage.name)
            take(mirrored.links)
            versions.update(mirrored.versions)
            continue
        own = _whitelist_of(stage)
        if whitelist is None:
            whitelist = own
        elif mode == "union":
            whitelist = whitelist | own
        else:
            whitelist = whitelist & own
        has = has_project(view, stage.user, stage.index, project)
        if "*" in whitelist or project in whitelist:
            whitelisted = True
        elif has:
            private_hit = True
        if has:
            exists = True
            found, found_versions = private_links(view, stage, project)
            take(found)
            versions.update(found_versions)
    return ProjectLinks(
        project=project,
        links=tuple(links),
        versions=tuple(sorted(versions, key=version_sort_key)),
        exists=exists,
        contributing_mirrors=tuple(contributing),
        blocked_mirrors=tuple(blocked),
    )


def project_links(view: Reader, user: str, index: str, project: str) -> ProjectLinks:
    """:func:`walk_project` over the resolution order of ``user/index``."""
    return walk_project(view, sro(view, user, index), project)


def _bases_of(stage: Stage) -> tuple[str, ...]:
    stored = stage.config.get("bases") or ()
    return tuple(base for base in stored if isinstance(base, str))


def project_list(view: Reader, order: Sequence[Stage]) -> list[ListSection]:
    """Per index in resolution order, its project names not listed before (§6.5; no whitelist).

    Names are normalized and sorted within a section; callers wanting the
    flat list concatenate the sections (first appearance order).
    """
    listed: set[str] = set()
    sections: list[ListSection] = []
    for stage in order:
        if stage.is_mirror:
            names = mirror_project_names(view, stage)
        else:
            names = project_names(view, stage.user, stage.index)
        fresh = sorted({normalize_project_name(name) for name in names} - listed)
        listed.update(fresh)
        sections.append(ListSection(stage.name, _bases_of(stage), tuple(fresh)))
    return sections

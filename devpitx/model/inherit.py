"""Reads through inheritance: merged simple links, versions and project lists (model.md §6.2, §6.3, §6.5).

A read of project ``P`` through index ``S`` walks the stage resolution order
(``indexes.sro``) with the whitelist rules of §6.2: once a private index on
the way has ``P`` and ``P`` is not whitelisted, mirrors after it are blocked
("private shadowing"), so a private ``P`` cannot be mixed with an unrelated
upstream ``P``. Contributing indexes' release links are concatenated in walk
order, first basename wins.

Mirror data enters in exactly one place, a :class:`MirrorSource`
(``mirror_project`` and ``mirror_project_names``). The default source reads
what is stored: a mirror has a project iff it has a link record
``mirrorlinks/<u>/<i>/<p>`` (format in ``devpitx/mirror/links.py``), and
lists the projects it has records for. The running server passes its mirror
component instead, which adds the upstream project list and offline-mode
filtering; it has brought the records up to date *before* the walk (upstream
I/O is async, this module is not), asking upstream only for the mirrors
:func:`consulted_mirrors` names.

Everything here is a pure function of a read view; no I/O, no HTTP.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devpitx.model.indexes import Stage, sro
from devpitx.model.names import normalize_project_name
from devpitx.model.projects import get_file_entry, get_versiondata, has_project, project_names, version_names
from devpitx.model.versions import split_filename, version_sort_key
from devpitx.storage.keys import mirrorlinks_key

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
class MirrorSource(Protocol):
    """Where a walk gets mirror data from."""

    def mirror_project(self, view: Reader, mirror: Stage, project: str) -> MirrorProject | None: ...
    def mirror_project_names(self, view: Reader, mirror: Stage) -> Iterable[str]: ...


def _column(record: dict[str, Any], name: str, i: int) -> Any:
    column = record.get(name)
    return column[i] if isinstance(column, list) and i < len(column) else None


def _has_content(view: Reader, relpath: str) -> bool:
    entry = get_file_entry(view, relpath) or {}
    return bool(entry.get("last_modified")) and bool((entry.get("hashes") or {}).get("sha256"))


def stored_mirror_project(view: Reader, mirror: Stage, project: str, *,
                          content_only: bool = False) -> MirrorProject | None:
    """The links of ``project`` in ``mirror``'s stored record; None if there is no record.

    ``content_only`` keeps only files whose content is stored (offline mode, mirror.md §7).
    """
    record = view.get(mirrorlinks_key(mirror.user, mirror.index, normalize_project_name(project)))
    if not isinstance(record, dict):
        return None
    links: list[SimpleLink] = []
    for i, pair in enumerate(record.get("links") or ()):
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        basename = str(pair[0])
        entrypath, _, fragment = str(pair[1]).partition("#")
        if content_only and not _has_content(view, entrypath):
            continue
        hash_type, sep, hash_value = fragment.partition("=")
        requires_python = _column(record, "requires_python", i)
        yanked = _column(record, "yanked", i)
        size = _column(record, "+sizes", i)
        if not isinstance(size, int):
            size = (get_file_entry(view, entrypath) or {}).get("+size")
        upload_time = _column(record, "+upload_times", i)
        core = _column(record, "+core_metadata", i)
        links.append(SimpleLink(
            basename=basename,
            entrypath=entrypath,
            owner=mirror.name,
            version=split_filename(basename)[1],
            hash_type=hash_type if sep else None,
            hash_value=hash_value if sep else None,
            requires_python=requires_python if isinstance(requires_python, str) and requires_python else None,
            # "" is yanked without a reason (mirror.md §4.4): a SimpleLink says that with True.
            yanked=(True if yanked == "" else yanked) if yanked is True or isinstance(yanked, str) else None,
            size=size if isinstance(size, int) else None,
            upload_time=float(upload_time) if isinstance(upload_time, (int, float)) else None,
            core_metadata_sha256=core if isinstance(core, str) else None,
        ))
    versions = sorted({link.version for link in links if link.version}, key=version_sort_key)
    return MirrorProject(tuple(links), tuple(versions))


def stored_mirror_names(view: Reader, mirror: Stage) -> list[str]:
    """The projects ``mirror`` has a stored link record for (its locally known names)."""
    return sorted(view.children(f"mirrorlinks/{mirror.user}/{mirror.index}"))


def mirror_project(view: Reader, mirror: Stage, project: str) -> MirrorProject | None:
    """The stored links mirror ``mirror`` has for ``project``, or None if it does not have it."""
    return stored_mirror_project(view, mirror, project)


def mirror_project_names(view: Reader, mirror: Stage) -> list[str]:
    """The normalized project names mirror ``mirror`` has stored."""
    return stored_mirror_names(view, mirror)


class _StoredMirrors:
    def mirror_project(self, view: Reader, mirror: Stage, project: str) -> MirrorProject | None:
        return mirror_project(view, mirror, project)

    def mirror_project_names(self, view: Reader, mirror: Stage) -> Iterable[str]:
        return mirror_project_names(view, mirror)


STORED_MIRRORS: MirrorSource = _StoredMirrors()


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


def _walk_roles(view: Reader, order: Sequence[Stage], project: str) -> Iterator[tuple[Stage, str]]:
    """The whitelist walk of §6.2: each index with its role for ``project``.

    Roles: ``"private"`` (a private index, with or without the project),
    ``"mirror"`` (a mirror to consult), ``"blocked"`` (a mirror skipped because
    a private index before it has the project and it is not whitelisted).
    ``order[0]``'s ``mirror_whitelist_inheritance`` decides how whitelists combine.
    """
    if not order:
        return
    mode = _inheritance_mode(order[0])
    whitelist: set[str] | None = None
    whitelisted = False
    private_hit = False
    for stage in order:
        if stage.is_mirror:
            # A blocked mirror is not even asked: a shadowed project must never cost an
            # upstream fetch (existence is already settled by the private hit).
            yield stage, ("blocked" if private_hit and not whitelisted else "mirror")
            continue
        own = _whitelist_of(stage)
        if whitelist is None:
            whitelist = own
        elif mode == "union":
            whitelist = whitelist | own
        else:
            whitelist = whitelist & own
        if "*" in whitelist or project in whitelist:
            whitelisted = True
        elif has_project(view, stage.user, stage.index, project):
            private_hit = True
        yield stage, "private"


def consulted_mirrors(view: Reader, order: Sequence[Stage], project: str) -> list[Stage]:
    """The mirrors a read of ``project`` through ``order`` asks: upstream I/O happens for these only."""
    project = normalize_project_name(project)
    return [stage for stage, role in _walk_roles(view, order, project) if role == "mirror"]


def walk_project(view: Reader, order: Sequence[Stage], project: str,
                 mirrors: MirrorSource = STORED_MIRRORS) -> ProjectLinks:
    """Merged links of ``project`` over the resolution order ``order`` (model.md §6.2, §6.3).

    ``order[0]`` is the requested index; its ``mirror_whitelist_inheritance``
    decides how the whitelists along the way combine.
    """
    project = normalize_project_name(project)
    if not order:
        return ProjectLinks(project, (), (), False)
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

    for stage, role in _walk_roles(view, order, project):
        if role == "blocked":
            blocked.append(stage.name)
        elif role == "mirror":
            mirrored = mirrors.mirror_project(view, stage, project)
            if mirrored is None:
                continue
            exists = True
            contributing.append(stage.name)
            take(mirrored.links)
            versions.update(mirrored.versions)
        elif has_project(view, stage.user, stage.index, project):
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


def project_links(view: Reader, user: str, index: str, project: str,
                  mirrors: MirrorSource = STORED_MIRRORS) -> ProjectLinks:
    """:func:`walk_project` over the resolution order of ``user/index``."""
    return walk_project(view, sro(view, user, index), project, mirrors)


def _bases_of(stage: Stage) -> tuple[str, ...]:
    stored = stage.config.get("bases") or ()
    return tuple(base for base in stored if isinstance(base, str))


def project_list(view: Reader, order: Sequence[Stage],
                 mirrors: MirrorSource = STORED_MIRRORS) -> list[ListSection]:
    """Per index in resolution order, its project names not listed before (§6.5; no whitelist).

    Names are normalized and sorted within a section; callers wanting the
    flat list concatenate the sections (first appearance order).
    """
    listed: set[str] = set()
    sections: list[ListSection] = []
    for stage in order:
        if stage.is_mirror:
            names = mirrors.mirror_project_names(view, stage)
        else:
            names = project_names(view, stage.user, stage.index)
        fresh = sorted({normalize_project_name(name) for name in names} - listed)
        listed.update(fresh)
        sections.append(ListSection(stage.name, _bases_of(stage), tuple(fresh)))
    return sections

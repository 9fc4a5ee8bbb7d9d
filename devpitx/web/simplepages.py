"""Simple pages as bytes (PEP 503 HTML, PEP 691/700 JSON) and the in-memory cache that serves them.

Rendering: pure functions from the inheritance results of ``model/inherit.py``
to response bodies (http-api.md §3.11, with the foundation issue's api 1.1
additions: ``size``, ``upload-time``, ``versions``, PEP 658/714 core metadata).
Every user-supplied string is HTML-escaped.

Caching (DESIGN.md §3): a page is rendered once per change and then served
from memory with an ETag. The same cache (one per store, ``page_cache``)
also holds the JSON views of ``/U/I/P`` and ``/U/I/P/V`` (web/projects.py),
which depend on exactly what a project page depends on. Validity is checked
with *stamps* instead of scanning anything: a commit listener bumps a
generation counter for every project, index project set or index
configuration it touches, and a cached page remembers the generations it
was built from. A request compares one or two integers (project pages) or
one per index in the resolution order (project lists), whatever the number
of projects. The cache is bounded by bytes (least recently used pages go
first), because keys include the base URL of absolute links, which clients
choose.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any

from twisted.web.iweb import IRequest

from devpitx.model.indexes import Stage
from devpitx.model.inherit import ListSection, ProjectLinks, SimpleLink
from devpitx.model.names import normalize_project_name
from devpitx.model.versions import split_filename, version_sort_key
from devpitx.storage.store import Store

API_VERSION = "1.1"
SIMPLE_JSON_TYPE = b"application/vnd.pypi.simple.v1+json"
HTML_TYPE = b"text/html; charset=UTF-8"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024

Href = Callable[[SimpleLink], str]


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def upload_time_text(seconds: float) -> str:
    """PEP 700 ``upload-time``: ISO 8601 in UTC with a ``Z`` suffix."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- project pages -----------------------------------------------------------------------------
def project_json(page: ProjectLinks, href: Href) -> bytes:
    """PEP 691 project page, api-version 1.1 (PEP 700): every file with its size."""
    files = []
    for link in page.links:
        item: dict[str, Any] = {"filename": link.basename, "url": href(link).partition("#")[0]}
        item["hashes"] = {link.hash_type: link.hash_value} if link.hash_type and link.hash_value else {}
        if link.requires_python is not None:
            item["requires-python"] = link.requires_python
        if link.yanked:
            item["yanked"] = link.yanked
        if link.size is not None:
            item["size"] = link.size
        if link.upload_time is not None:
            item["upload-time"] = upload_time_text(link.upload_time)
        if link.core_metadata_sha256:
            core = {"sha256": link.core_metadata_sha256}
            item["core-metadata"] = core
            item["dist-info-metadata"] = core   # the PEP 658 name older clients read
        files.append(item)
    return _json_bytes({
        "meta": {"api-version": API_VERSION},
        "name": page.project,
        "files": files,
        "versions": list(page.versions),
    })


def _link_line(link: SimpleLink, href: Href) -> str:
    attrs = [f'href="{escape(href(link))}"']
    if link.requires_python is not None:
        attrs.append(f'data-requires-python="{escape(link.requires_python)}"')
    if link.yanked:
        reason = "" if link.yanked is True else str(link.yanked)
        attrs.append(f'data-yanked="{escape(reason)}"')
    if link.core_metadata_sha256:
        spec = escape(f"sha256={link.core_metadata_sha256}")
        attrs.append(f'data-core-metadata="{spec}"')
        attrs.append(f'data-dist-info-metadata="{spec}"')
    return f"{escape(link.owner)} <a {' '.join(attrs)}>{escape(link.basename)}</a><br>\n"


def human_order(links: Iterable[SimpleLink]) -> list[SimpleLink]:
    """Newest first by (parsed version, normalized name, extension) (http-api.md §3.11.4)."""
    def key(link: SimpleLink) -> tuple[Any, ...]:
        name, version, ext = split_filename(link.basename)
        return (version_sort_key(version), normalize_project_name(name), ext)
    return sorted(links, key=key, reverse=True)


@dataclass(frozen=True)
class HumanExtras:
    """What only a human's page shows above the links."""

    refresh_action: str | None = None    # absolute URL of the refresh form, if a mirror contributes
    refresh_label: str = "Refresh mirror links"
    blocked_mirrors: Sequence[str] = ()


def project_html(index_name: str, page: ProjectLinks, href: Href, human: HumanExtras | None) -> bytes:
    """PEP 503 project page; ``human`` None is the installer form (no forms, resolution order)."""
    title = escape(f"{index_name}: links for {page.project}")
    parts = [f'<!DOCTYPE html><html lang="en"><head><title>{title}</title></head><body><h1>{title}</h1>\n']
    links: Iterable[SimpleLink] = page.links
    if human is not None:
        if human.refresh_action:
            parts.append(f'<form action="{escape(human.refresh_action)}" method="post">'
                         f'<input name="refresh" type="submit" value="{escape(human.refresh_label)}"></form>\n')
        for mirror in human.blocked_mirrors:
            parts.append("<p><strong>INFO:</strong> Because this project isn't in the <code>mirror_whitelist</code>,"
                         f" no releases from <strong>{escape(mirror)}</strong> are included.</p>\n")
        links = human_order(page.links)
    parts.extend(_link_line(link, href) for link in links)
    parts.append("</body></html>\n")
    return "".join(parts).encode()


# -- project lists -----------------------------------------------------------------------------
def _flat_names(sections: Iterable[ListSection]) -> list[str]:
    return [name for section in sections for name in section.names]


def list_json(sections: Sequence[ListSection]) -> bytes:
    return _json_bytes({
        "meta": {"api-version": API_VERSION},
        "projects": [{"name": name} for name in _flat_names(sections)],
    })


def list_installer_html(sections: Sequence[ListSection]) -> bytes:
    lines = [f'<a href="{escape(name)}/">{escape(name)}</a>\n' for name in _flat_names(sections)]
    return ('<!DOCTYPE html><html lang="en"><body>' + "".join(lines) + "</body></html>\n").encode()


def list_human_html(index_name: str, sections: Sequence[ListSection]) -> bytes:
    title = escape(f"{index_name}: simple list (including inherited indices)")
    parts = [f'<!DOCTYPE html><html lang="en"><head><title>{title}</title></head><body><h1>{title}</h1>\n']
    for section in sections:
        bases = f" (bases: {','.join(section.bases)})" if section.bases else ""
        parts.append(f"<h2>{escape(section.index + bases)}</h2>\n")
        parts.extend(f'<a href="{escape(name)}/">{escape(name)}</a><br>\n' for name in section.names)
    parts.append("</body></html>\n")
    return "".join(parts).encode()


def respond_with_page(request: IRequest, page: RenderedPage) -> bytes:
    """A cached page as the answer: its ETag, and 304 when the client has it already."""
    request.setHeader(b"etag", page.etag)
    if etag_matches(request, page.etag):
        request.setResponseCode(304)
        return b""
    request.setHeader(b"content-type", page.content_type)
    return page.body


def etag_matches(request: IRequest, etag: bytes) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 wants for it)."""
    value = request.getHeader(b"if-none-match")
    if value is None:
        return False
    raw = value.encode("latin-1") if isinstance(value, str) else value
    for candidate in raw.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == etag:
            return True
    return False


# -- the cache ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderedPage:
    body: bytes
    content_type: bytes
    etag: bytes          # quoted, ready for the header

    @classmethod
    def of(cls, body: bytes, content_type: bytes) -> RenderedPage:
        digest = hashlib.sha256(content_type + b"\n" + body).hexdigest()[:40]
        return cls(body, content_type, f'"{digest}"'.encode())


Stamp = tuple[int, ...]


class SimplePageCache:
    """Rendered pages by variant key, valid while the generations they were built from hold."""

    def __init__(self, store: Store, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._pages: OrderedDict[Hashable, tuple[Stamp, RenderedPage]] = OrderedDict()
        self._generation = 0
        self._config_generation = 0
        self._project_generation: dict[str, int] = {}
        self._index_generation: dict[str, int] = {}
        self._orders: dict[tuple[str, str], list[Stage]] = {}
        store.add_listener(self.committed)

    # -- what pages depend on
    def project_stamp(self, project: str) -> Stamp:
        return (self._config_generation, self._project_generation.get(project, 0))

    def list_stamp(self, order: Sequence[Stage]) -> Stamp:
        return (self._config_generation, *(self._index_generation.get(stage.name, 0) for stage in order))

    def resolution_order(self, user: str, index: str, compute: Callable[[], list[Stage]]) -> list[Stage]:
        """The resolution order of ``user/index``, computed once per configuration change."""
        key = (user, index)
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = compute()
        return order

    # -- pages
    def lookup(self, key: Hashable, stamp: Stamp) -> RenderedPage | None:
        cached = self._pages.get(key)
        if cached is None:
            return None
        if cached[0] != stamp:
            self._drop(key)
            return None
        self._pages.move_to_end(key)
        return cached[1]

    def store(self, key: Hashable, stamp: Stamp, body: bytes, content_type: bytes) -> RenderedPage:
        page = RenderedPage.of(body, content_type)
        self._drop(key)
        if len(body) <= self._max_bytes:
            self._pages[key] = (stamp, page)
            self._bytes += len(body)
            while self._bytes > self._max_bytes:
                self._drop(next(iter(self._pages)))
        return page

    def _drop(self, key: Hashable) -> None:
        cached = self._pages.pop(key, None)
        if cached is not None:
            self._bytes -= len(cached[1].body)

    def __len__(self) -> int:
        return len(self._pages)

    # -- invalidation
    def invalidate_project(self, project: str) -> None:
        """For derived data that is not journaled (mirror page caches): pages of ``project`` are stale."""
        self._generation += 1
        self._project_generation[normalize_project_name(project)] = self._generation

    def committed(self, serial: int, changes: Mapping[str, Any]) -> None:
        """Store listener: bump the generations of what ``changes`` touch (cost ~ len(changes))."""
        self._generation += 1
        generation = self._generation
        for key, value in changes.items():
            kind, _, rest = key.partition("/")
            if kind == "index":
                self._config_generation = generation
                self._orders.clear()
            elif kind == "project":
                user_index, _, project = rest.rpartition("/")
                self._index_generation[user_index] = generation
                self._project_generation[project] = generation
            elif kind in ("version", "mirrorlinks"):
                parts = rest.split("/")
                if len(parts) >= 3:
                    self._project_generation[parts[2]] = generation
            elif kind == "file":
                for project in _projects_of_file(rest, value):
                    self._project_generation[project] = generation


_CACHES: weakref.WeakKeyDictionary[Store, SimplePageCache] = weakref.WeakKeyDictionary()


def page_cache(store: Store) -> SimplePageCache:
    """The page cache of ``store``, shared by every area that caches rendered responses.

    One instance per store: one commit listener, one byte budget, one
    resolution-order cache. The registry holds stores weakly; a store keeps
    its cache alive through the listener, and the cache holds no reference
    back, so the two go away together.
    """
    cache = _CACHES.get(store)
    if cache is None:
        cache = _CACHES[store] = SimplePageCache(store)
    return cache


def _projects_of_file(relpath: str, entry: Any) -> set[str]:
    """Projects a file entry change can affect: the entry's own, or the one its name implies.

    A deleted entry (``{}``) no longer names its project; its file name still does.
    """
    projects = set()
    if isinstance(entry, dict) and isinstance(entry.get("project"), str):
        projects.add(normalize_project_name(entry["project"]))
    name, _version, _ext = split_filename(relpath.rsplit("/", 1)[-1])
    if name:
        projects.add(normalize_project_name(name))
    return projects

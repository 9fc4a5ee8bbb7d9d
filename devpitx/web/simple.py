"""The simple index area (http-api.md §3.11): project lists and project pages, HTML and JSON.

Handlers translate the request into (index, project, variant), ask the page
cache (web/simplepages.py) and only on a miss walk the inheritance
(model/inherit.py) and render. Redirect and negotiation rules:

* non-ASCII project segments -> 400; non-normalized ones -> 302 to the same
  route with the normalized name (GET/HEAD);
* humans (not an installer, HTML negotiated) asking without the trailing
  slash -> 302 to the slash form; installers and simple-json requests are
  served directly;
* installer shortcuts ``/U/I[/]`` and ``/U/I/P[/]`` (routes 17, 18);
* ``If-None-Match`` with the page's ETag -> 304.

Mirrors: before a page is looked up, the handler awaits the mirror step
(``server.mirrors.ensure_project`` / ``ensure_lists``), which talks to
upstream for the mirrors the whitelist walk consults and stores what changed;
the page itself is then built synchronously from the store. A page that
used cached mirror data without upstream confirming it in this request is
sent with no-cache headers; a mirror's own page carries its upstream serial
as ``X-Pypi-Last-Serial``.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.web.iweb import IRequest

from devpitx.model.indexes import Stage, get_stage, not_found_message, sro
from devpitx.mirror.mirrors import PageFreshness
from devpitx.mirror.pages import MirrorUnavailable
from devpitx.model.inherit import SimpleLink, project_links, project_list
from devpitx.model.projects import http_date
from devpitx.model.names import normalize_project_name
from devpitx.web.errors import FrameworkError, NegotiatedError
from devpitx.web.negotiate import OutsideUrl, is_installer, outside_url, relative_href, simple_format
from devpitx.web.routes import Router
from devpitx.web.simplepages import (
    HTML_TYPE,
    SIMPLE_JSON_TYPE,
    HumanExtras,
    RenderedPage,
    SimplePageCache,
    Stamp,
    list_human_html,
    list_installer_html,
    list_json,
    page_cache,
    project_html,
    project_json,
    respond_with_page,
)

if TYPE_CHECKING:
    from devpitx.server import Server

_NOT_FOUND = "The requested resource could not be found."
_VARY_PAGE = b"Accept, User-Agent"
_NO_CACHE = b"max-age=0, must-revalidate, no-cache, no-store"
_FRESH = PageFreshness()


def _require_read(request: IRequest) -> None:
    # Matched routes answer 404, never 405, for methods they do not serve (http-api.md §2.1).
    if request.method not in (b"GET", b"HEAD"):
        raise FrameworkError(404, _NOT_FOUND)


def _check_project_segment(project: str) -> str:
    """The normalized name; 400 for non-ASCII segments (http-api.md §2.2)."""
    if not project.isascii():
        raise NegotiatedError(400, "unicode project names not allowed")
    return normalize_project_name(project)


def _redirect(request: IRequest, location: str, vary: bytes) -> bytes:
    request.setResponseCode(302)
    # The base URL came from latin-1 headers or options; the path part is percent-encoded.
    request.setHeader(b"location", location.encode("latin-1", "replace"))
    request.setHeader(b"vary", vary)
    return b""


def _absolute_links(request: IRequest, configured: bool) -> bool:
    return configured or request.requestHeaders.hasHeader(b"x-devpi-absolute-urls")


class Routes:
    def __init__(self, server: Server) -> None:
        self._store = server.store
        self._config = server.config
        self._clock = server.clock
        self._mirrors = server.mirrors
        self.pages: SimplePageCache = page_cache(server.store)

    def install(self, router: Router) -> None:
        add = router.add
        add("simple.list", self.list_slash)
        add("simple.list_noslash", self.list_noslash)
        add("simple.project", self.project_slash)
        add("simple.project_noslash", self.project_noslash)
        add("simple.installer_list", self.installer_list)
        add("simple.installer_project", self.installer_project)
        add("simple.refresh", self.refresh)

    # -- helpers ---------------------------------------------------------------------------
    def _outside(self, request: IRequest) -> OutsideUrl:
        return outside_url(request, self._config.outside_url)

    def _stage(self, user: str, index: str) -> Stage:
        stage = get_stage(self._store, user, index)
        if stage is None:
            raise NegotiatedError(404, not_found_message(user, index))
        return stage

    def _order(self, stage: Stage) -> list[Stage]:
        return self.pages.resolution_order(stage.user, stage.index,
                                           lambda: sro(self._store, stage.user, stage.index))

    @staticmethod
    def _machine(request: IRequest) -> bool:
        """Installers and simple-json requests: no redirects, no human extras (http-api.md §2.4)."""
        return is_installer(request) or simple_format(request) == "json"

    @staticmethod
    def _variant(request: IRequest) -> str:
        if simple_format(request) == "json":
            return "json"
        return "installer" if is_installer(request) else "human"

    def _mark_stale(self, request: IRequest) -> None:
        """Cached mirror data not confirmed by upstream now: no HTTP cache may keep it (§3.11.4)."""
        now = http_date(self._clock.seconds()).encode()
        request.setHeader(b"cache-control", _NO_CACHE)
        request.setHeader(b"pragma", b"no-cache")
        request.setHeader(b"expires", now)
        request.setHeader(b"last-modified", now)

    def _respond(self, request: IRequest, page: RenderedPage) -> bytes:
        request.setHeader(b"vary", _VARY_PAGE)
        return respond_with_page(request, page)

    # -- project lists ---------------------------------------------------------------------
    async def list_slash(self, request: IRequest, user: str, index: str) -> bytes:
        _require_read(request)
        return await self._project_list(request, user, index)

    async def list_noslash(self, request: IRequest, user: str, index: str) -> bytes:
        _require_read(request)
        if not self._machine(request):
            self._stage(user, index)
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/"), b"User-Agent")
        return await self._project_list(request, user, index)

    async def installer_list(self, request: IRequest, user: str, index: str) -> bytes:
        return await self._project_list(request, user, index)

    async def _project_list(self, request: IRequest, user: str, index: str) -> bytes:
        await self._mirrors.ensure_lists(self._order(self._stage(user, index)))
        stage = self._stage(user, index)          # re-read: the world may have moved while we waited
        order = self._order(stage)
        variant = self._variant(request)
        key: Hashable = ("list", stage.name, variant)
        stamp = self.pages.list_stamp(order) + self._mirrors.list_generations(order)
        page = self.pages.lookup(key, stamp)
        if page is None:
            sections = project_list(self._store, order, self._mirrors)
            if variant == "json":
                page = self.pages.store(key, stamp, list_json(sections), SIMPLE_JSON_TYPE)
            elif variant == "installer":
                page = self.pages.store(key, stamp, list_installer_html(sections), HTML_TYPE)
            else:
                page = self.pages.store(key, stamp, list_human_html(stage.name, sections), HTML_TYPE)
        return self._respond(request, page)

    # -- project pages ---------------------------------------------------------------------
    async def project_slash(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        _require_read(request)
        name = _check_project_segment(project)
        if name != project:
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)
        return await self._project_page(request, user, index, name, f"/{user}/{index}/+simple/{name}/")

    async def project_noslash(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        _require_read(request)
        name = _check_project_segment(project)
        outside = self._outside(request)
        if name != project:
            return _redirect(request, outside.url(f"/{user}/{index}/+simple/{name}"), _VARY_PAGE)
        if not self._machine(request):
            self._stage(user, index)
            return _redirect(request, outside.url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)
        return await self._project_page(request, user, index, name, f"/{user}/{index}/+simple/{name}")

    async def installer_project(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        name = _check_project_segment(project)
        slash = "/" if request.path.endswith(b"/") else ""
        if name != project:
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/{name}{slash}"), _VARY_PAGE)
        return await self._project_page(request, user, index, name, f"/{user}/{index}/{name}{slash}")

    async def _ensure_mirrors(self, user: str, index: str, project: str) -> PageFreshness:
        """The mirror step: upstream I/O for the mirrors the walk consults (502/504 when it fails
        for the requested mirror itself and nothing is cached)."""
        order = self._order(self._stage(user, index))
        if not any(stage.is_mirror for stage in order):
            return _FRESH       # nothing to ask upstream: skip the whitelist walk
        try:
            return await self._mirrors.ensure_project(order, project)
        except MirrorUnavailable as exc:
            raise NegotiatedError(exc.code, exc.message) from None

    async def _project_page(self, request: IRequest, user: str, index: str, project: str, path: str) -> bytes:
        """Serve the page of ``project`` as seen from the request path ``path`` (mount prefix removed)."""
        freshness = await self._ensure_mirrors(user, index, project)
        # The page shows the state after the mirror step's commit: say so (a replica asking for
        # this page waits for exactly that serial, mirror.md §8).
        request.setHeader(b"X-Devpi-Serial", str(self._store.serial).encode())
        stage = self._stage(user, index)          # re-read: the world may have moved while we waited
        if freshness.stale:
            self._mark_stale(request)
        if stage.is_mirror:
            serial = self._mirrors.upstream_serial(stage, project)
            if serial > 0:
                request.setHeader(b"x-pypi-last-serial", str(serial).encode())
        variant = self._variant(request)
        absolute = _absolute_links(request, self._config.absolute_urls)
        outside = self._outside(request)
        # The base URL matters for absolute links and for the human page's refresh form.
        base = outside.base if absolute or variant == "human" else None
        key: Hashable = ("project", stage.name, project, variant, path, base)
        stamp = self.pages.project_stamp(project)
        page = self.pages.lookup(key, stamp)
        if page is None:
            page = self._render_project(stage, project, variant, path, outside if absolute else None, outside,
                                        key, stamp)
        return self._respond(request, page)

    def _render_project(self, stage: Stage, project: str, variant: str, path: str,
                        absolute: OutsideUrl | None, outside: OutsideUrl, key: Hashable,
                        stamp: Stamp) -> RenderedPage:
        found = project_links(self._store, stage.user, stage.index, project, self._mirrors)
        if not found.links and not found.exists:
            raise NegotiatedError(404, f"The project {project} does not exist.")
        if any(link.size is None for link in found.links):
            found = replace(found, links=tuple(self._with_size(link) for link in found.links))

        def href(link: SimpleLink) -> str:
            fragment = f"#{link.hash_spec}" if link.hash_spec else ""
            if absolute is not None:
                return absolute.url(f"/{link.entrypath}") + fragment
            return relative_href(path, f"/{link.entrypath}{fragment}")

        if variant == "json":
            return self.pages.store(key, stamp, project_json(found, href), SIMPLE_JSON_TYPE)
        human: HumanExtras | None = None
        if variant == "human":
            human = HumanExtras(
                refresh_action=(outside.url(f"/{stage.name}/+simple/{project}/refresh")
                                if found.contributing_mirrors else None),
                refresh_label="Refresh" if stage.is_mirror else "Refresh mirror links",
                blocked_mirrors=found.blocked_mirrors,
            )
        return self.pages.store(key, stamp, project_html(stage.name, found, href, human), HTML_TYPE)

    def _with_size(self, link: SimpleLink) -> SimpleLink:
        """api 1.1 wants every file's size: entries written before ``+size`` existed ask the blob."""
        if link.size is not None or link.hash_type != "sha256" or not link.hash_value:
            return link
        try:
            return replace(link, size=self._store.blobs.size(link.hash_value))
        except (OSError, ValueError):
            return link

    # -- refresh ---------------------------------------------------------------------------
    async def refresh(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        """POST: every mirror in the order forgets its links of the project and fetches them
        again, then back to the page (http-api.md §3.11.6). No permission check (spec)."""
        if request.method != b"POST":
            raise FrameworkError(404, _NOT_FOUND)
        name = _check_project_segment(project)
        await self._mirrors.refresh(self._order(self._stage(user, index)), name)
        self._stage(user, index)
        return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)

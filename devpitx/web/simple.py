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
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.web.iweb import IRequest

from devpitx.model.indexes import Stage, get_stage, not_found_message, sro
from devpitx.model.inherit import SimpleLink, project_links, project_list
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
    etag_matches,
    list_human_html,
    list_installer_html,
    list_json,
    project_html,
    project_json,
)

if TYPE_CHECKING:
    from devpitx.server import Server

_NOT_FOUND = "The requested resource could not be found."
_VARY_PAGE = b"Accept, User-Agent"


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
        self.pages = SimplePageCache(server.store)

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

    def _respond(self, request: IRequest, page: RenderedPage) -> bytes:
        request.setHeader(b"vary", _VARY_PAGE)
        request.setHeader(b"etag", page.etag)
        if etag_matches(request, page.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", page.content_type)
        return page.body

    # -- project lists ---------------------------------------------------------------------
    def list_slash(self, request: IRequest, user: str, index: str) -> bytes:
        _require_read(request)
        return self._project_list(request, user, index)

    def list_noslash(self, request: IRequest, user: str, index: str) -> bytes:
        _require_read(request)
        if not self._machine(request):
            self._stage(user, index)
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/"), b"User-Agent")
        return self._project_list(request, user, index)

    def installer_list(self, request: IRequest, user: str, index: str) -> bytes:
        return self._project_list(request, user, index)

    def _project_list(self, request: IRequest, user: str, index: str) -> bytes:
        stage = self._stage(user, index)
        order = self._order(stage)
        variant = self._variant(request)
        key: Hashable = ("list", stage.name, variant)
        stamp = self.pages.list_stamp(order)
        page = self.pages.lookup(key, stamp)
        if page is None:
            sections = project_list(self._store, order)
            if variant == "json":
                page = self.pages.store(key, stamp, list_json(sections), SIMPLE_JSON_TYPE)
            elif variant == "installer":
                page = self.pages.store(key, stamp, list_installer_html(sections), HTML_TYPE)
            else:
                page = self.pages.store(key, stamp, list_human_html(stage.name, sections), HTML_TYPE)
        return self._respond(request, page)

    # -- project pages ---------------------------------------------------------------------
    def project_slash(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        _require_read(request)
        name = _check_project_segment(project)
        if name != project:
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)
        return self._project_page(request, user, index, name, f"/{user}/{index}/+simple/{name}/")

    def project_noslash(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        _require_read(request)
        name = _check_project_segment(project)
        outside = self._outside(request)
        if name != project:
            return _redirect(request, outside.url(f"/{user}/{index}/+simple/{name}"), _VARY_PAGE)
        if not self._machine(request):
            self._stage(user, index)
            return _redirect(request, outside.url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)
        return self._project_page(request, user, index, name, f"/{user}/{index}/+simple/{name}")

    def installer_project(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        name = _check_project_segment(project)
        slash = "/" if request.path.endswith(b"/") else ""
        if name != project:
            return _redirect(request, self._outside(request).url(f"/{user}/{index}/{name}{slash}"), _VARY_PAGE)
        return self._project_page(request, user, index, name, f"/{user}/{index}/{name}{slash}")

    def _project_page(self, request: IRequest, user: str, index: str, project: str, path: str) -> bytes:
        """Serve the page of ``project`` as seen from the request path ``path`` (mount prefix removed)."""
        stage = self._stage(user, index)
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
        found = project_links(self._store, stage.user, stage.index, project)
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
    def refresh(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        """POST: forget mirror links of the project, then back to its page (http-api.md §3.11.6).

        Mirrors hold no links yet, so there is nothing to forget; the redirect is what clients use.
        """
        if request.method != b"POST":
            raise FrameworkError(404, _NOT_FOUND)
        name = _check_project_segment(project)
        self._stage(user, index)
        return _redirect(request, self._outside(request).url(f"/{user}/{index}/+simple/{name}/"), _VARY_PAGE)

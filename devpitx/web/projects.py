"""Projects and versions over HTTP: ``/U/I/P`` and ``/U/I/P/V`` (http-api.md §3.12, §3.13).

GET answers the JSON views of ``model/views.py`` (``projectconfig`` and
``versiondata``) with absolute ``+links`` hrefs built from the same base URL
as ``+api``'s index URL, which devpi-client compares them with. DELETE
removes a project or a version from this index only, refused on
non-volatile indexes unless ``?force`` is given (mirrors: the cached files,
model.md §7). PATCH on a version yanks or
unyanks all its release files (PEP 592; docs/yanking.md).

A non-normalized project segment in a GET is redirected to the normalized
name (§2.2); other methods use the normalized name silently.

Both GET views are cached as rendered bytes in the store's page cache
(web/simplepages.py), keyed by index, project (and version), base URL and
``ignore_bases``, and stamped with the project's generation: a view depends
on exactly what the project's simple page depends on (versiondata, project
records and mirror links of that project in any index, file entries for
offline mirrors, index configurations). They carry an ETag; a matching
``If-None-Match`` gets 304.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.mirror.pages import MirrorUnavailable
from devpitx.model.indexes import Stage, get_stage, is_volatile, not_found_message, sro
from devpitx.model.inherit import walk_project
from devpitx.model.links import delete_mirror_project, delete_mirror_version, parse_yank_body, yank_version
from devpitx.model.names import normalize_project_name
from devpitx.model.projects import get_versiondata, has_project
from devpitx.model.releases import ReleaseError, delete_project, delete_version
from devpitx.model.views import UrlFor, project_view, version_view
from devpitx.web.api import (
    READ_METHODS, envelope, has_query_flag, message_response, read_json_body, refusal, report_commit,
    require_json_view, require_method,
)
from devpitx.web.errors import JSON_TYPE, ApiError, NegotiatedError
from devpitx.web.negotiate import OutsideUrl, json_preferred, outside_url
from devpitx.web.simplepages import SimplePageCache, page_cache, respond_with_page

if TYPE_CHECKING:
    from devpitx.server import Server


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store
        self.pages: SimplePageCache = page_cache(server.store)

    def install(self, router: Any) -> None:
        router.add("projects.project", self.project)
        router.add("projects.version", self.version)

    # -- dispatch ------------------------------------------------------------------------------
    async def project(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        method = require_method(request, *READ_METHODS, b"DELETE")
        if method == b"DELETE":
            return await self._delete_project(request, user, index, normalize_project_name(project))
        return await self._get_project(request, user, index, project)

    async def version(self, request: IRequest, user: str, index: str, project: str, version: str) -> bytes:
        method = require_method(request, *READ_METHODS, b"DELETE", b"PATCH")
        if method == b"DELETE":
            return await self._delete_version(request, user, index, normalize_project_name(project), version)
        if method == b"PATCH":
            return await self._yank_version(request, user, index, normalize_project_name(project), version)
        return await self._get_version(request, user, index, project, version)

    # -- helpers -------------------------------------------------------------------------------
    def _stage(self, user: str, index: str) -> Stage:
        stage = get_stage(self._store, user, index)
        if stage is None:
            raise NegotiatedError(404, not_found_message(user, index))
        return stage

    def _url_for(self, request: IRequest) -> UrlFor:
        return _url_for(outside_url(request, self._server.config.outside_url))

    def _order(self, stage: Stage) -> list[Stage]:
        """The resolution order, computed once per configuration change (shared with the simple pages)."""
        return self.pages.resolution_order(stage.user, stage.index,
                                           lambda: sro(self._store, stage.user, stage.index))

    def _redirect_to_normalized(self, request: IRequest, path: str) -> bytes:
        """302 to the same route with the normalized name; the query string is dropped (§2.2)."""
        slash = "/" if request.path.endswith(b"/") else ""
        location = outside_url(request, self._server.config.outside_url).url(path + slash)
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("latin-1", "replace"))
        return b""

    async def _ensure_mirrors(self, order: list[Stage], project: str) -> None:
        """Upstream I/O for the mirrors the walk consults, before the synchronous read (502/504
        when the requested mirror itself fails with nothing stored)."""
        if not any(stage.is_mirror for stage in order):
            return          # nothing to ask upstream: skip the whitelist walk
        try:
            await self._server.mirrors.ensure_project(order, project)
        except MirrorUnavailable as exc:
            raise NegotiatedError(exc.code, exc.message) from None

    # -- GET -----------------------------------------------------------------------------------
    async def _get_project(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        require_json_view(request)
        name = normalize_project_name(project)
        if name != project:
            return self._redirect_to_normalized(request, f"/{user}/{index}/{name}")
        if not json_preferred(request):
            accept = (request.getHeader(b"accept") or b"").decode("latin-1")
            raise ApiError(415, f"unsupported media type: the project view needs 'application/json' in Accept, "
                                f"got {accept!r}")
        ignore_bases = has_query_flag(request, "ignore_bases")
        stage = self._stage(user, index)
        await self._ensure_mirrors([stage] if ignore_bases else self._order(stage), name)
        stage = self._stage(user, index)          # re-read after the await
        outside = outside_url(request, self._server.config.outside_url)
        key: Hashable = ("projectconfig", stage.name, name, outside.base, ignore_bases)
        stamp = self.pages.project_stamp(name)
        page = self.pages.lookup(key, stamp)
        if page is None:
            full_order = self._order(stage)
            order = [stage] if ignore_bases else full_order
            result, exists = project_view(self._store, order, name, _url_for(outside), self._server.mirrors)
            if not result and not exists and not (
                    ignore_bases and walk_project(self._store, full_order, name, self._server.mirrors).exists):
                # Known only in a base (with ignore_bases) is an empty answer, not a 404.
                raise NegotiatedError(404, f"no project '{name}'")
            page = self.pages.store(key, stamp, envelope(request, "projectconfig", result), JSON_TYPE)
        return respond_with_page(request, page)

    async def _get_version(self, request: IRequest, user: str, index: str, project: str, version: str) -> bytes:
        require_json_view(request)
        name = normalize_project_name(project)
        if name != project:
            return self._redirect_to_normalized(request, f"/{user}/{index}/{name}/{version}")
        await self._ensure_mirrors(self._order(self._stage(user, index)), name)
        stage = self._stage(user, index)
        outside = outside_url(request, self._server.config.outside_url)
        key: Hashable = ("versiondata", stage.name, name, version, outside.base)
        stamp = self.pages.project_stamp(name)
        page = self.pages.lookup(key, stamp)
        if page is None:
            result = version_view(self._store, self._order(stage), name, version, _url_for(outside),
                                  self._server.mirrors)
            if result is None:
                raise ApiError(404, f"The version {version} of project {name} does not exist.")
            page = self.pages.store(key, stamp, envelope(request, "versiondata", result), JSON_TYPE)
        return respond_with_page(request, page)

    # -- DELETE --------------------------------------------------------------------------------
    async def _delete_project(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        stage = self._stage(user, index)
        await self._server.identity.require(request, "del_project", url_user=user, index_config=stage.config)
        stage = self._stage(user, index)   # re-read after the await
        if not is_volatile(stage.config) and not has_query_flag(request, "force"):
            raise ApiError(403, f"project '{project}' is on non-volatile index {stage.name}")
        try:
            with self._store.write() as tx:
                if stage.is_mirror:
                    delete_mirror_project(tx, stage, project)
                elif not has_project(tx, user, index, project):
                    raise ReleaseError(404, "project not found")
                else:
                    delete_project(tx, user, index, project)
        except ReleaseError as exc:
            raise ApiError(exc.code, exc.message) from None
        report_commit(request, tx)
        return message_response(request, f"project {project} deleted from stage {stage.name}")

    async def _delete_version(self, request: IRequest, user: str, index: str, project: str, version: str) -> bytes:
        stage = self._stage(user, index)
        await self._server.identity.require(request, "del_verdata", url_user=user, index_config=stage.config)
        stage = self._stage(user, index)
        if not is_volatile(stage.config) and not has_query_flag(request, "force"):
            raise NegotiatedError(403, "cannot delete version on non-volatile index")
        try:
            with self._store.write() as tx:
                if stage.is_mirror:
                    delete_mirror_version(tx, stage, project, version)
                elif get_versiondata(tx, user, index, project, version) is None:
                    raise ReleaseError(404, f"The version {version} of project {project} does not exist.")
                else:
                    delete_version(tx, user, index, project, version)
        except ReleaseError as exc:
            raise NegotiatedError(exc.code, exc.message) from None
        report_commit(request, tx)
        return message_response(request, f"project '{project}' version '{version}' deleted")

    # -- PATCH: yank ---------------------------------------------------------------------------
    async def _yank_version(self, request: IRequest, user: str, index: str, project: str, version: str) -> bytes:
        stage = self._stage(user, index)
        await self._server.identity.require(request, "del_verdata", url_user=user, index_config=stage.config)
        stage = self._stage(user, index)
        try:
            yanked = parse_yank_body(read_json_body(request))
            with self._store.write() as tx:
                yank_version(tx, stage, project, version, yanked)
        except ReleaseError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        result = version_view(self._store, [stage], project, version, self._url_for(request))
        what = "unyanked" if yanked is False else "yanked"
        return envelope(request, "versiondata", result, message=f"project '{project}' version '{version}' {what}")


def _url_for(outside: OutsideUrl) -> UrlFor:
    return lambda relpath: outside.url("/" + relpath)

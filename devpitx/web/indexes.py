"""Indexes over HTTP: ``/{user}/{index}`` GET/PUT/PATCH/DELETE (http-api.md §3.7).

``POST``/``PUSH`` on the same URL are routed to the upload area before they
get here (routes.py). The order of checks on PUT is the reference's
(§3.7.3): owner, existence, permission, then the body.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.model.indexes import (
    StageError, create_index, delete_index, get_index_config, get_stage, modify_index, not_found_message,
    stage_project_names,
)
from devpitx.model.users import get_user
from devpitx.web.api import (
    READ_METHODS, envelope, has_query_flag, message_response, read_json_body, refusal, report_commit,
    require_method,
)
from devpitx.web.errors import ApiError, NegotiatedError
from devpitx.web.negotiate import SIMPLE_JSON, select_view

if TYPE_CHECKING:
    from devpitx.server import Server

JSON = "application/json"


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store

    def install(self, router: Any) -> None:
        router.add("indexes.index", self.index)

    async def index(self, request: IRequest, user: str, index: str) -> bytes:
        method = require_method(request, *READ_METHODS, b"PUT", b"PATCH", b"DELETE")
        if method == b"PUT":
            return await self._create(request, user, index)
        if method == b"PATCH":
            return await self._modify(request, user, index)
        if method == b"DELETE":
            return await self._delete(request, user, index)
        return await self._get(request, user, index)

    async def _get(self, request: IRequest, user: str, index: str) -> bytes:
        view = select_view(request, (JSON, SIMPLE_JSON))
        if view is None:
            raise NegotiatedError(404, f"The stage {user}/{index} is not available in the requested format.")
        stage = get_stage(self._store, user, index)
        if stage is None:
            raise NegotiatedError(404, not_found_message(user, index))
        if view == SIMPLE_JSON:
            return await self._simple_project_list(request, user, index)
        config = dict(stage.config)
        if not has_query_flag(request, "no_projects"):
            if stage.is_mirror:
                # The upstream project list (or, without one, the locally known names).
                mirrors = self._server.mirrors
                await mirrors.ensure_lists([stage])
                stage = get_stage(self._store, user, index) or stage   # re-read after the wait
                config["projects"] = sorted(mirrors.mirror_project_names(self._store, stage))
            else:
                config["projects"] = stage_project_names(self._store, stage)
        return envelope(request, "indexconfig", config)

    async def _simple_project_list(self, request: IRequest, user: str, index: str) -> bytes:
        """§3.7.2: the same answer as ``GET /U/I/+simple/``, so the simple area produces it."""
        handler = self._server.router.handler_for("simple.list")
        if handler is None:
            raise NegotiatedError(404, "simple pages are not available")
        result = handler(request, user=user, index=index)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, bytes)
        return result

    async def _create(self, request: IRequest, user: str, index: str) -> bytes:
        identity = await self._server.identity.identify(request)
        permitted = self._server.identity.permitted
        create_owner = False
        if get_user(self._store, user) is None:
            # Only a user known to an auth plugin may create itself this way.
            if identity.username != user:
                raise NegotiatedError(404, f"no user '{user}'")
            if not permitted("user_create", identity, url_user=user):
                raise ApiError(403, f"no permission to create user {user}")
            create_owner = True
        if get_index_config(self._store, user, index) is not None:
            raise ApiError(409, f"index '{user}/{index}' exists")
        if not permitted("index_create", identity, url_user=user):
            raise ApiError(403, f"no permission to create index {user}/{index}")
        body = read_json_body(request)
        try:
            with self._store.write() as tx:
                config = create_index(tx, user, index, body, create_owner=create_owner, now=tx.at)
        except StageError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        return envelope(request, "indexconfig", config)

    async def _modify(self, request: IRequest, user: str, index: str) -> bytes:
        ixconfig = self._existing(user, index)
        await self._server.identity.require(request, "index_modify", url_user=user, index_config=ixconfig)
        body = read_json_body(request)
        error_on_noop = has_query_flag(request, "error_on_noop")
        try:
            with self._store.write() as tx:
                config = modify_index(tx, user, index, body, error_on_noop=error_on_noop)
        except StageError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        return envelope(request, "indexconfig", config)

    async def _delete(self, request: IRequest, user: str, index: str) -> bytes:
        ixconfig = self._existing(user, index)
        await self._server.identity.require(request, "index_delete", url_user=user, index_config=ixconfig)
        try:
            with self._store.write() as tx:
                delete_index(tx, user, index, tx.at)
        except StageError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        return message_response(request, f"index {user}/{index} deleted", code=201)

    def _existing(self, user: str, index: str) -> dict[str, Any]:
        ixconfig = get_index_config(self._store, user, index)
        if ixconfig is None:
            raise NegotiatedError(404, not_found_message(user, index))
        return ixconfig

"""Users over HTTP: ``GET /`` (all users) and ``/{user}`` GET/PUT/PATCH/DELETE (http-api.md §3.5, §3.6).

Thin: permission checks (auth.md §7.3, §8), body parsing and hashing here;
the rules are in ``model/users.py`` and ``model/indexes.py``. Passwords are
hashed before the write transaction opens, because hashing awaits the pool.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.auth.tokens import LOGIN_TOKEN_SECONDS
from devpitx.model.indexes import StageError, delete_user
from devpitx.model.users import (
    UserError, create_user, get_user, is_password_only, modify_user, parse_new_user, parse_user_patch,
    user_config_view, user_names,
)
from devpitx.web.api import (
    READ_METHODS, envelope, message_response, read_json_body, refusal, report_commit, require_json_view,
    require_method,
)
from devpitx.web.errors import ApiError, NegotiatedError

if TYPE_CHECKING:
    from devpitx.server import Server


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store

    def install(self, router: Any) -> None:
        router.add("root.users", self.list_users)
        router.add("users.user", self.user)

    def list_users(self, request: IRequest) -> bytes:
        require_method(request, *READ_METHODS)
        require_json_view(request)
        result = {name: user_config_view(self._store, name) for name in user_names(self._store)}
        return envelope(request, "list:userconfig", result)

    async def user(self, request: IRequest, user: str) -> bytes:
        method = require_method(request, *READ_METHODS, b"PUT", b"PATCH", b"DELETE")
        if method == b"PUT":
            return await self._create(request, user)
        if method == b"PATCH":
            return await self._modify(request, user)
        if method == b"DELETE":
            return await self._delete(request, user)
        require_json_view(request)
        config = user_config_view(self._store, user)
        if config is None:
            raise NegotiatedError(404, f"no user '{user}'")
        return envelope(request, "userconfig", config)

    async def _create(self, request: IRequest, user: str) -> bytes:
        await self._server.identity.require(request, "user_create", url_user=user)
        body = read_json_body(request)
        try:
            update = parse_new_user(self._store, user, body)
        except UserError as exc:
            raise refusal(exc.code, exc.message) from None
        pwhash = update.pwhash
        if update.needs_hashing:
            assert update.password is not None
            pwhash = await self._server.passwords.hash(update.password)
        try:
            with self._store.write() as tx:
                create_user(tx, user, pwhash, update.info, tx.at)
        except UserError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        return envelope(request, "userconfig", user_config_view(self._store, user), code=201)

    async def _modify(self, request: IRequest, user: str) -> bytes:
        body = read_json_body(request)
        if is_password_only(body):
            permission, denied = "user_modify_password", f"no permission to change password for user {user}"
        else:
            permission, denied = "user_modify", f"no permission to modify user {user}"
        await self._server.identity.require(request, permission, url_user=user, denied=ApiError(403, denied))
        try:
            update = parse_user_patch(body)
        except UserError as exc:
            raise refusal(exc.code, exc.message) from None
        if get_user(self._store, user) is None:
            raise NegotiatedError(404, f"no user '{user}'")
        pwhash = None
        if update.needs_hashing:
            assert update.password is not None
            pwhash = await self._server.passwords.hash(update.password)
        # Before the write: without a token to answer with, the password stays as it was.
        tokens = await self._server.identity.login_tokens() if update.password is not None else None
        try:
            with self._store.write() as tx:
                modify_user(tx, user, update, pwhash, tx.at)
        except UserError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        if tokens is None:
            return message_response(request, "user updated")
        token = tokens.issue(user, [], True, self._server.clock.seconds())
        return envelope(request, "userpassword", {"password": token, "expiration": int(LOGIN_TOKEN_SECONDS)},
                        message="user updated, new proxy auth")

    async def _delete(self, request: IRequest, user: str) -> bytes:
        await self._server.identity.require(request, "user_delete", url_user=user)
        try:
            with self._store.write() as tx:
                delete_user(tx, user, tx.at)
        except StageError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        return message_response(request, f"user '{user}' deleted")

"""``POST /+login``: a password for a login token (http-api.md §3.2, auth.md §4).

Only a real password is accepted here, never a login token. A hash with
outdated parameters (or a legacy salted SHA-256 one) is replaced after a
successful login; that is the only write this route makes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.auth.acl import REPLICA_USERNAME, Identity
from devpitx.auth.tokens import LOGIN_TOKEN_SECONDS
from devpitx.model.users import get_user, replace_pwhash
from devpitx.web.api import envelope, read_json_body, report_commit, require_method
from devpitx.web.errors import ApiError, NegotiatedError

if TYPE_CHECKING:
    from devpitx.server import Server

NO_CREDENTIALS = "Bad request: no user/password specified"


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store

    def install(self, router: Any) -> None:
        router.add("login.login", self.login)

    async def login(self, request: IRequest) -> bytes:
        require_method(request, b"POST")
        # Not stored: a password may be any JSON string (the hash functions
        # cope with lone surrogates).
        body = read_json_body(request, storable=False)
        if not isinstance(body, dict) or "user" not in body or "password" not in body:
            raise NegotiatedError(400, NO_CREDENTIALS)
        user, password = body["user"], body["password"]
        if not isinstance(user, str) or not isinstance(password, str):
            raise NegotiatedError(400, "Bad request: user and password must be strings")
        refused = ApiError(401, f"user '{user}' could not be authenticated")
        record = get_user(self._store, user)
        if user == REPLICA_USERNAME or record is None or not record.get("pwhash"):
            raise refused
        stored_hash = record["pwhash"]
        check = await self._server.passwords.verify(stored_hash, password, record.get("pwsalt"))
        if not check.ok or not self._server.identity.permitted("user_login", Identity(user)):
            raise refused
        # Waits while the auth key is still being derived; before the rehash, so that a
        # login refused for want of a key writes nothing.
        tokens = await self._server.identity.login_tokens()
        if check.needs_rehash:
            new_hash = await self._server.passwords.hash(password)
            with self._store.write() as tx:
                replace_pwhash(tx, user, stored_hash, new_hash)
            report_commit(request, tx)
        now = self._server.clock.seconds()
        if get_user(self._store, user) is None:
            raise refused       # deleted while we were verifying
        token = tokens.issue(user, [], True, now)
        return envelope(request, "proxyauth", {"password": token, "expiration": int(LOGIN_TOKEN_SECONDS)},
                        message="login successful")

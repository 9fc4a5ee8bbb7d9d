"""Who is asking: credentials of a request -> Identity (auth.md §5), and permission checks with 401/403.

The result is cached on the request object so several checks in one request
cost one token check or one (remembered) password verification.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from devpitx.auth.acl import ANONYMOUS, REPLICA_USERNAME, Identity, has_permission
from devpitx.auth.credentials import extract_credentials
from devpitx.auth.passwords import Passwords
from devpitx.auth.tokens import LoginTokens, TokenIdentity, TokenVerdict
from devpitx.storage.keys import user_key
from devpitx.storage.store import Store
from devpitx.web.errors import ApiError, FrameworkError

_CACHE_ATTR = "_devpitx_identity"


class RequestIdentity:
    def __init__(self, store: Store, passwords: Passwords, tokens: LoginTokens, clock: IReactorTime,
                 restrict_modify: Sequence[str] | None) -> None:
        self._store = store
        self._passwords = passwords
        self._tokens = tokens
        self._clock = clock
        self.restrict_modify = restrict_modify

    async def identify(self, request: IRequest) -> Identity:
        cached = getattr(request, _CACHE_ATTR, None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        identity = await self._identify(request)
        setattr(request, _CACHE_ATTR, identity)
        return identity

    async def _identify(self, request: IRequest) -> Identity:
        creds = extract_credentials(request.getHeader(b"x-devpi-auth"), request.getHeader(b"authorization"))
        if creds is None:
            return ANONYMOUS
        if creds.username == REPLICA_USERNAME:
            raise ApiError(403, "Authorization malformed.")
        verdict = self._tokens.check(creds.secret, creds.username, self._clock.seconds())
        if isinstance(verdict, TokenIdentity):
            if verdict.from_user_object and self._store.get(user_key(creds.username)) is None:
                return ANONYMOUS
            return Identity(creds.username, tuple(verdict.groups))
        if verdict is not TokenVerdict.NOT_A_TOKEN:
            return ANONYMOUS
        if await self.check_password(creds.username, creds.secret):
            return Identity(creds.username)
        return ANONYMOUS

    async def check_password(self, username: str, password: str) -> bool:
        record = self._store.get(user_key(username))
        if not record or not record.get("pwhash"):
            return False
        check = await self._passwords.verify(record["pwhash"], password, record.get("pwsalt"))
        return check.ok

    def permitted(self, permission: str, identity: Identity, *, url_user: str | None = None,
                  index_config: Mapping[str, Any] | None = None) -> bool:
        return has_permission(permission, identity, url_user=url_user, index_config=index_config,
                              restrict_modify=self.restrict_modify)

    async def require(self, request: IRequest, permission: str, *, url_user: str | None = None,
                      index_config: Mapping[str, Any] | None = None, denied: ApiError | None = None,
                      unauthenticated: ApiError | None = None) -> Identity:
        """The caller's identity if it has ``permission``; else raise ``unauthenticated``
        (for anonymous callers, when given) or ``denied`` (default: framework 403)."""
        identity = await self.identify(request)
        if self.permitted(permission, identity, url_user=url_user, index_config=index_config):
            return identity
        if unauthenticated is not None and not identity.authenticated:
            raise unauthenticated
        if denied is not None:
            raise denied
        raise FrameworkError(403, "You don't have the permission to access the requested resource.")

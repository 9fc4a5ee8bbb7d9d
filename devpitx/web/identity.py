"""Who is asking: credentials of a request -> Identity (auth.md §5), and permission checks with 401/403.

The result is cached on the request object so several checks in one request
cost one token check or one (remembered) password verification.

On a primary, a request with ``X-Devpi-Replica-Uuid`` and ``Authorization:
Bearer <token>`` is a replica (auth.md §9): a valid token makes it ``+replica``
(pkg_read everywhere, see auth/acl.py), an invalid one is refused with 403.
User credentials in ``X-Devpi-Auth`` or Basic auth win over the bearer token,
so a user's write relayed by a replica keeps the user's identity.

A secret shaped like a login token waits for the auth key while the server
still derives it after start-up; other secrets are tried as passwords at once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from devpitx.auth.acl import (
    ANONYMOUS,
    REPLICA,
    REPLICA_USERNAME,
    Identity,
    has_permission,
)
from devpitx.auth.authkey import AuthKeyUnavailable, LoginTokensWaiter
from devpitx.auth.credentials import bearer_token, extract_credentials
from devpitx.auth.passwords import Passwords
from devpitx.auth.tokens import (
    LoginTokens,
    ReplicaAuthError,
    ReplicaTokens,
    TokenIdentity,
    TokenVerdict,
    could_be_login_token,
)
from devpitx.storage.keys import user_key
from devpitx.storage.store import Store
from devpitx.web.errors import ApiError, FrameworkError

_CACHE_ATTR = "_devpitx_identity"
REPLICA_UUID_HEADER = b"x-devpi-replica-uuid"
AUTH_KEY_UNAVAILABLE = "login tokens are unavailable: the server could not derive its auth key"


class RequestIdentity:
    log = Logger()

    def __init__(self, store: Store, passwords: Passwords, tokens: LoginTokensWaiter, clock: IReactorTime,
                 restrict_modify: Sequence[str] | None, replica_tokens: ReplicaTokens | None = None) -> None:
        """``replica_tokens``: given on a primary only; elsewhere replica bearer tokens are ignored.
        ``tokens``: login tokens, possibly still waiting for the auth key (auth/authkey.py)."""
        self._store = store
        self._passwords = passwords
        self._tokens = tokens
        self._clock = clock
        self.restrict_modify = restrict_modify
        self._replica_tokens = replica_tokens
        self._told_bearer_ignored = False

    def replica_identity(self, request: IRequest) -> Identity | None:
        """``+replica`` for a replica's valid token; None without replica credentials (or when
        this server is not a primary); ``ApiError`` 403 with auth.md §9's message for a bad token."""
        replica_uuid = request.getHeader(REPLICA_UUID_HEADER)
        if replica_uuid is None:
            return None     # a Bearer header alone is not a replica's (auth.md §9)
        token = bearer_token(request.getHeader(b"authorization"))
        if token is None:
            return None
        if self._replica_tokens is None:
            if not self._told_bearer_ignored:
                self._told_bearer_ignored = True
                self.log.info("ignoring replica credentials: this server does not run with role primary")
            return None
        uuid_text = replica_uuid if isinstance(replica_uuid, str) else replica_uuid.decode("latin-1")
        try:
            self._replica_tokens.check(token, uuid_text, self._clock.seconds())
        except ReplicaAuthError as exc:
            raise ApiError(403, exc.message) from None
        return REPLICA

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
            return self.replica_identity(request) or ANONYMOUS
        if creds.username == REPLICA_USERNAME:
            raise ApiError(403, "Authorization malformed.")
        if could_be_login_token(creds.secret):
            tokens = await self.login_tokens()
            verdict = tokens.check(creds.secret, creds.username, self._clock.seconds())
            if isinstance(verdict, TokenIdentity):
                if verdict.from_user_object and self._store.get(user_key(creds.username)) is None:
                    return ANONYMOUS
                return Identity(creds.username, tuple(verdict.groups))
            if verdict is not TokenVerdict.NOT_A_TOKEN:
                return ANONYMOUS
        if await self.check_password(creds.username, creds.secret):
            return Identity(creds.username)
        return ANONYMOUS

    async def login_tokens(self) -> LoginTokens:
        """The login tokens, as soon as the auth key is derived; ``ApiError`` 500 if it cannot be."""
        try:
            return await self._tokens.wait_for_tokens()
        except AuthKeyUnavailable:
            raise ApiError(500, AUTH_KEY_UNAVAILABLE) from None

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

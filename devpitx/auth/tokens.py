"""Login tokens and replica bearer tokens (auth.md §4, §9).

Owns the token wire format, which is devpi-server's (itsdangerous' timestamp
signer over a JSON payload), so that tokens issued by a devpitx primary
verify on a devpi-server replica and vice versa:

    token = payload "." b64url(int(issue time)) "." b64url(HMAC-SHA1(signkey, ...))
    signkey = SHA1(b"itsdangerous" + b"signer" + key)

Time is always passed in; nothing here reads the clock. Whether the user of a
token still exists is the caller's business (``from_user_object`` says when
it must check).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from itsdangerous import BadData, TimestampSigner

LOGIN_TOKEN_SECONDS = 36000.0
REPLICA_TOKEN_SECONDS = 37.6


@dataclass(frozen=True)
class TokenIdentity:
    username: str
    groups: tuple[str, ...]
    from_user_object: bool      # authenticated against a local user record: it must still exist


class TokenVerdict(Enum):
    NOT_A_TOKEN = "not a token"     # treat the secret as a password
    EXPIRED = "expired"             # anonymous; do not try it as a password
    INVALID = "invalid"             # signed by us but not for this user: anonymous


class ReplicaAuthError(Exception):
    """A replica's bearer token was refused; ``message`` is the literal 403 text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Signer(TimestampSigner):
    """itsdangerous' timestamp signer as devpi-server configures it, on a given clock."""

    def __init__(self, key: bytes, now: float) -> None:
        # Serializer-style salt b"itsdangerous" with "django-concat" derivation gives
        # signkey = SHA1(b"itsdangerous" + b"signer" + key), the reference's key.
        super().__init__(key, salt=b"itsdangerous", sep=".",
                         key_derivation="django-concat", digest_method=hashlib.sha1)
        self._timestamp = int(now)

    def get_timestamp(self) -> int:
        return self._timestamp


def _issue(key: bytes, payload: object, now: float) -> str:
    # json.dumps' defaults (", " / ": " separators, ASCII escaping) are the wire format.
    text = json.dumps(payload)
    return _Signer(key, now).sign(text.encode("ascii")).decode("ascii")


def _open(key: bytes, token: str, max_age: float, now: float) -> bytes | TokenVerdict:
    """The payload of a token signed with ``key``, or why there is none."""
    try:
        raw = token.encode("utf-8")
    except UnicodeEncodeError:      # lone surrogates from a JSON body: surely no token
        return TokenVerdict.NOT_A_TOKEN
    try:
        payload, signed_at = _Signer(key, now).unsign(raw, return_timestamp=True)
    except BadData:
        return TokenVerdict.NOT_A_TOKEN
    except (ValueError, OverflowError, OSError):
        # Correctly signed, but the time is beyond what datetime can represent.
        return TokenVerdict.EXPIRED
    age = int(now) - int(signed_at.timestamp())
    if age < 0 or age > max_age:
        return TokenVerdict.EXPIRED
    return payload


def _load_json(payload: bytes) -> object:
    try:
        return json.loads(payload.decode("utf-8"))
    except ValueError:      # includes UnicodeDecodeError and JSONDecodeError
        return None


def could_be_login_token(secret: str) -> bool:
    """False for a secret that ``LoginTokens.check`` certainly answers ``NOT_A_TOKEN``, whatever
    the key: a token has at least two dots (payload, timestamp, signature). Such a secret is
    tried as a password without waiting for the auth key."""
    return secret.count(".") >= 2


class LoginTokens:
    """Issues and checks the tokens returned by ``POST /+login``."""

    def __init__(self, auth_key: bytes) -> None:
        self._key = auth_key

    def issue(self, username: str, groups: Sequence[str], from_user_object: bool,
              now: float) -> str:
        return _issue(self._key, [username, list(groups), bool(from_user_object)], now)

    def check(self, secret: str, username: str, now: float) -> TokenIdentity | TokenVerdict:
        """The identity a login token grants ``username``, or why it grants none (§4.2)."""
        opened = _open(self._key, secret, LOGIN_TOKEN_SECONDS, now)
        if isinstance(opened, TokenVerdict):
            return opened
        value = _load_json(opened)
        if not isinstance(value, list) or len(value) != 3:
            return TokenVerdict.INVALID
        token_user, groups, from_user_object = value
        if token_user != username:
            return TokenVerdict.INVALID
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            return TokenVerdict.INVALID
        if not isinstance(from_user_object, bool):
            return TokenVerdict.INVALID
        return TokenIdentity(username=username, groups=tuple(groups),
                             from_user_object=from_user_object)


class ReplicaTokens:
    """Bearer tokens a replica presents to its primary (§9), signed with the replica key."""

    def __init__(self, replica_key: bytes) -> None:
        self._key = replica_key

    def issue(self, replica_uuid: str, now: float) -> str:
        return _issue(self._key, replica_uuid, now)

    def check(self, token: str, replica_uuid: str, now: float) -> None:
        """Raise ``ReplicaAuthError`` unless ``token`` is a fresh token for ``replica_uuid``."""
        opened = _open(self._key, token, REPLICA_TOKEN_SECONDS, now)
        if opened is TokenVerdict.EXPIRED:
            raise ReplicaAuthError("Authorization expired.")
        if isinstance(opened, TokenVerdict):
            raise ReplicaAuthError("Authorization malformed.")
        value = _load_json(opened)
        if not isinstance(value, str):
            # devpi-server treats an unreadable payload like a bad signature.
            raise ReplicaAuthError("Authorization malformed.")
        if value != replica_uuid:
            raise ReplicaAuthError("Wrong authorization value.")

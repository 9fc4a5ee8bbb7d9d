"""Credentials carried by a request (auth.md §1, §9).

Owns the parsing of the ``X-Devpi-Auth`` and ``Authorization`` header values
into a ``(username, secret)`` pair or a replica bearer token. Parsing never
raises: anything malformed simply means "no credentials" and the request
proceeds anonymously.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str          # a password or a login token; the caller decides which

    def __repr__(self) -> str:
        # Never let a password end up in a log line or a test failure message.
        return f"Credentials(username={self.username!r}, secret=<hidden>)"


def extract_credentials(x_devpi_auth: bytes | None,
                        authorization: bytes | None) -> Credentials | None:
    """The user credentials of a request, ``X-Devpi-Auth`` first.

    devpi-client puts its own identity in ``X-Devpi-Auth`` and uses Basic only
    for a reverse proxy in front of the server, so that header wins whenever
    it yields credentials; a garbage ``X-Devpi-Auth`` falls back to Basic.
    """
    if x_devpi_auth is not None:
        found = _decode_pair(x_devpi_auth)
        if found is not None:
            return found
    if authorization is not None:
        scheme, value = _split_authorization(authorization)
        if scheme == b"basic":
            return _decode_pair(value)
    return None


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (replicas, §9)."""
    if authorization is None:
        return None
    scheme, value = _split_authorization(authorization)
    if scheme != b"bearer" or not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _split_authorization(header: bytes) -> tuple[bytes, bytes]:
    """``(lower-cased scheme, stripped parameter)`` of an Authorization value."""
    parts = header.strip().split(None, 1)
    if not parts:
        return b"", b""
    value = parts[1].strip() if len(parts) == 2 else b""
    return parts[0].lower(), value


def _decode_pair(encoded: bytes) -> Credentials | None:
    raw = encoded.strip()
    if not raw:
        return None
    # Some hand-written clients drop the padding; it carries no information.
    raw += b"=" * (-len(raw) % 4)
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        # Latin-1 maps every byte, so this cannot fail (spec: UTF-8, then Latin-1).
        text = decoded.decode("latin-1")
    username, sep, secret = text.partition(":")   # the secret may contain ':'
    if not sep or not username:
        return None
    return Credentials(username=username, secret=secret)

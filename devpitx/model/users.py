"""User records (model.md §2): creation, modification, deletion, and their JSON views.

Records live under ``user/<name>`` without their indexes (those are
``index/<user>/<index>`` keys); the userconfig view joins them. Deleting a
user together with its indexes is ``indexes.delete_user``: the cascade is
index knowledge, and this module stays below ``indexes.py``.

Request bodies are checked by ``parse_new_user`` / ``parse_user_patch``
before any password is hashed; refusals raise :class:`UserError` with the
HTTP status and exact message (http-api.md §3.6).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import argon2
from argon2.exceptions import InvalidHashError

from devpitx.model.errors import Refused
from devpitx.model.names import InvalidName, validate_user_name
from devpitx.storage.keys import index_key, user_key
from devpitx.storage.txn import WriteTxn

# Fields a client may set; "pwhash" only when given pre-hashed.
INFO_FIELDS = ("email", "title", "description", "custom_data")
_STRING_FIELDS = ("email", "title", "description")
PASSWORD_FIELDS = ("password", "pwhash")
# Sent back by devpi-client (it PATCHes the whole GET result) and by exports:
# accepted and ignored, never stored from a body.
_TOLERATED_FIELDS = ("username", "indexes", "created", "modified")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Records imported from old servers may lack "created" (model.md §2.1).
EPOCH_TIMESTAMP = "1970-01-01T00:00:00Z"
# User and index names become single path segments (state/, +files/), and most
# file systems allow 255 bytes per segment; the reference has no limit.
MAX_NAME_BYTES = 200


class UserError(Refused):
    """A user operation was refused."""


@dataclass(frozen=True)
class UserUpdate:
    """The effective content of a PUT or PATCH body.

    ``password`` is the plain text still to be hashed (None: not given);
    ``pwhash`` a pre-hashed value, which wins over ``password`` as in the
    reference; ``info`` the informational fields present in the body
    (a false value means "remove").
    """

    password: str | None = None
    pwhash: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_hashing(self) -> bool:
        return self.password is not None and not self.pwhash

    @property
    def sets_password(self) -> bool:
        return self.password is not None or bool(self.pwhash)


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Any: ...


def timestamp(now: float) -> str:
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(now))


def get_user(view: Reader, name: str) -> dict[str, Any] | None:
    return view.get(user_key(name))


def user_names(view: Reader) -> list[str]:
    return sorted(view.children("user"))


def index_names(view: Reader, user: str) -> list[str]:
    return sorted(view.children(f"index/{user}"))


def new_user_record(pwhash: str | None, info: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Empty or false values are never stored (model.md §2.1)."""
    record: dict[str, Any] = {"created": timestamp(now)}
    if pwhash:
        record["pwhash"] = pwhash
    for name in INFO_FIELDS:
        value = info.get(name)
        if value:
            record[name] = value
    return record


def user_config_view(view: Reader, name: str) -> dict[str, Any] | None:
    """The ``userconfig`` result: public fields, username and index configs; never hashes."""
    record = get_user(view, name)
    if record is None:
        return None
    result = {k: v for k, v in record.items() if k not in ("pwhash", "pwsalt")}
    result["username"] = name
    result["indexes"] = {ix: dict(view.get(index_key(name, ix)) or {}) for ix in index_names(view, name)}
    return result


def check_name_length(kind: str, name: str) -> None:
    """Raise :class:`InvalidName` for names too long to be a path segment."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise InvalidName(f"{kind} is too long: {size} bytes, at most {MAX_NAME_BYTES} are allowed.")


def check_user_name(name: str) -> None:
    """model.md §1.1 plus our length limit; raises :class:`UserError` (400)."""
    try:
        validate_user_name(name)
        check_name_length("username", name)
    except InvalidName as exc:
        raise UserError(400, exc.message) from None


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise UserError(400, "user configuration must be a JSON object")
    return body


def _parse_password(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(400, "password must be a string")
    return value


def _parse_pwhash(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        try:
            argon2.extract_parameters(value)
        except (InvalidHashError, ValueError):
            pass
        else:
            return value
    raise UserError(400, "pwhash must be an Argon2 hash in PHC string format")


def _parse_info(body: Mapping[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name in INFO_FIELDS:
        if name not in body:
            continue
        value = body[name]
        if name in _STRING_FIELDS and value and not isinstance(value, str):
            raise UserError(400, f"'{name}' must be a string")
        info[name] = value
    return info


def parse_new_user(view: Reader, name: str, body: Any) -> UserUpdate:
    """Check a ``PUT /{user}`` body in the reference's order (http-api.md §3.6.2)."""
    if get_user(view, name) is not None:
        raise UserError(409, "user already exists")
    body = _require_object(body)
    if "password" not in body:
        raise UserError(400, "password needs to be set")
    check_user_name(name)
    known = (*PASSWORD_FIELDS, *INFO_FIELDS, *_TOLERATED_FIELDS)
    unknown = sorted(key for key in body if key not in known)
    if unknown:
        raise UserError(400, f"Unknown keys in user config: {', '.join(unknown)}")
    password = _parse_password(body["password"])
    if password is None:
        raise UserError(400, "password needs to be set")
    return UserUpdate(password=password, pwhash=_parse_pwhash(body.get("pwhash")), info=_parse_info(body))


def is_password_only(body: Any) -> bool:
    """Whether a PATCH body asks for ``user_modify_password`` rather than ``user_modify`` (auth.md §7.3)."""
    return isinstance(body, Mapping) and set(body) == {"password"}


def parse_user_patch(body: Any) -> UserUpdate:
    """The fields a ``PATCH /{user}`` body changes; any other key is ignored (http-api.md §3.6.3)."""
    body = _require_object(body)
    return UserUpdate(password=_parse_password(body.get("password")),
                      pwhash=_parse_pwhash(body.get("pwhash")), info=_parse_info(body))


def create_user(tx: WriteTxn, name: str, pwhash: str | None, info: Mapping[str, Any],
                now: float) -> dict[str, Any]:
    """Store a new user record; ``pwhash`` None makes a user that cannot log in locally."""
    if get_user(tx, name) is not None:
        raise UserError(409, "user already exists")
    check_user_name(name)
    record = new_user_record(pwhash, info, now)
    tx.set(user_key(name), record)
    return record


def modify_user(tx: WriteTxn, name: str, update: UserUpdate, pwhash: str | None, now: float) -> bool:
    """Apply a PATCH; ``pwhash`` is the hash of ``update.password`` if it needed hashing.

    Returns whether the record changed. False values remove fields; any
    change sets ``modified`` (and a missing ``created`` to the epoch).
    """
    current = get_user(tx, name)
    if current is None:
        raise UserError(404, f"no user '{name}'")
    record = dict(current)
    new_hash = update.pwhash or pwhash
    if new_hash:
        record["pwhash"] = new_hash
        record.pop("pwsalt", None)      # a new hash is never a legacy one
    for key, value in update.info.items():
        if value:
            record[key] = value
        else:
            record.pop(key, None)
    if record == current:
        return False
    record.setdefault("created", EPOCH_TIMESTAMP)
    record["modified"] = timestamp(now)
    tx.set(user_key(name), record)
    return True


def delete_user_record(tx: WriteTxn, name: str) -> None:
    """Only the record: ``indexes.delete_user`` removes the indexes first."""
    tx.delete(user_key(name))


def replace_pwhash(tx: WriteTxn, name: str, expected: str, new_hash: str) -> bool:
    """Rehash on login (auth.md §2.1): swap ``expected`` for ``new_hash`` unless the
    password changed meanwhile. Not a modification: ``modified`` stays."""
    current = get_user(tx, name)
    if current is None or current.get("pwhash") != expected:
        return False
    current["pwhash"] = new_hash
    current.pop("pwsalt", None)
    tx.set(user_key(name), current)
    return True

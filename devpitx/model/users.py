"""User records (model.md §2): creation, modification, deletion, and their JSON views.

Records live under ``user/<name>`` without their indexes (those are
``index/<user>/<index>`` keys); the userconfig view joins them.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from devpitx.storage.keys import index_key, user_key

# Fields a client may set; "pwhash" only when given pre-hashed.
INFO_FIELDS = ("email", "title", "description", "custom_data")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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

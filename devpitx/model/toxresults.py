"""Toxresults: JSON test reports attached to one release file (model.md §5.4, http-api.md §3.14).

A toxresult is stored like a file: a blob (the raw request body, not
re-serialized), a file entry, and a link with ``rel: "toxresult"`` and
``for_entrypath`` = the release file's relpath, in the release file's version.
Its relpath sits in the release file's directory:
``U/I/+f/<a>/<b>/<release basename>.toxresult-<YYYYmmddHHMMSS>-<n>``, ``n``
being the number of toxresults the release file already has.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, Protocol

from devpitx.model.projects import http_date
from devpitx.model.releases import ReleaseError, StoredBlob, when
from devpitx.storage.keys import file_key, version_key
from devpitx.storage.txn import WriteTxn

TOXRESULT = "toxresult"


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


def check_report(raw: bytes) -> None:
    """The body must be JSON text in UTF-8 (it is served back as ``application/json``)."""
    try:
        json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReleaseError(400, "Bad request: could not decode json") from None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are Python's extensions; other readers of the report would choke on them.
    raise ValueError(f"{name} is not JSON")


def release_link(view: Reader, user: str, index: str, relpath: str) -> tuple[str, str, dict[str, Any]] | None:
    """(project, version, link) of the release file link ``relpath`` of index ``user/index``."""
    if not relpath.startswith(f"{user}/{index}/+f/"):
        return None
    entry = view.get(file_key(relpath))
    if not entry or not isinstance(entry.get("project"), str) or not isinstance(entry.get("version"), str):
        return None
    project, version = entry["project"], entry["version"]
    versiondata = view.get(version_key(user, index, project, version)) or {}
    for link in versiondata.get("+elinks", []):
        if link.get("entrypath") == relpath and link.get("rel") == "releasefile":
            return project, version, link
    return None


def require_release_link(view: Reader, user: str, index: str, relpath: str) -> tuple[str, str, dict[str, Any]]:
    found = release_link(view, user, index, relpath)
    if found is None:
        raise ReleaseError(404, f"no release file found at {relpath}")
    return found


def _toxresult_relpath(tx: WriteTxn, release_relpath: str, links: list[dict[str, Any]], now: float) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    n = sum(1 for link in links if link.get("for_entrypath") == release_relpath)
    while True:
        # A relpath is never reused, not even one deleted earlier: its URL answers 410 forever.
        candidate = f"{release_relpath}.{TOXRESULT}-{stamp}-{n}"
        if tx.get(file_key(candidate)) is None:
            return candidate
        n += 1


def store_toxresult(tx: WriteTxn, user: str, index: str, release_relpath: str, blob: StoredBlob, *,
                    who: str | None, log: list[dict[str, Any]] | None = None,
                    last_modified: str | None = None) -> str:
    """Attach a toxresult (its blob already durable) to a release file; returns its relpath.

    ``log`` is the complete history of the new link; default: one ``upload`` entry.
    """
    project, version, _link = require_release_link(tx, user, index, release_relpath)
    key = version_key(user, index, project, version)
    versiondata: dict[str, Any] = tx.get(key) or {}
    links: list[dict[str, Any]] = versiondata.setdefault("+elinks", [])
    now = tx.at
    relpath = _toxresult_relpath(tx, release_relpath, links, now)
    if log is None:
        log = [{"what": "upload", "who": who, "dst": f"{user}/{index}", "when": when(now)}]
    links.append({
        "rel": TOXRESULT, "entrypath": relpath, "for_entrypath": release_relpath,
        "hash_spec": f"sha256={blob.sha256}", "hashes": {"sha256": blob.sha256}, "_log": log,
    })
    tx.set(key, versiondata)
    tx.set(file_key(relpath), {
        "hash_spec": f"sha256={blob.sha256}", "hashes": {"sha256": blob.sha256},
        "last_modified": last_modified or http_date(now), "project": project, "version": version,
        "+size": blob.size, "+upload_time": now, "+rel": TOXRESULT,
    })
    tx.add_blob(blob.sha256)
    return relpath


def toxresults_of(versiondata: dict[str, Any], release_relpath: str) -> list[dict[str, Any]]:
    """The toxresult links attached to ``release_relpath``, in the order they were stored."""
    return [link for link in versiondata.get("+elinks", [])
            if link.get("rel") == TOXRESULT and link.get("for_entrypath") == release_relpath]

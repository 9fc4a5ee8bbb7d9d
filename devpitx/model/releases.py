"""Writing releases into private indexes: register metadata, store files, delete (model.md §4.3, §5, §7).

Every function takes a WriteTxn and plain values and raises ``ReleaseError``
(status code + exact message) on refusal, before changing anything, so the
caller's transaction rolls back cleanly.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devpitx.model.errors import Refused
from devpitx.model.names import (
    normalize_project_name,
    project_name_problem,
    version_problem,
)
from devpitx.model.projects import http_date, release_relpath
from devpitx.model.versions import latest_version
from devpitx.storage.keys import file_key, project_key, version_key
from devpitx.storage.txn import WriteTxn

METADATA_FIELDS = (
    "name", "version", "metadata_version", "summary", "home_page", "author", "author_email",
    "maintainer", "maintainer_email", "license", "description", "keywords", "platform",
    "classifiers", "download_url", "supported_platform", "comment", "provides", "requires",
    "obsoletes", "project_urls", "provides_dist", "obsoletes_dist", "requires_dist",
    "requires_external", "requires_python", "description_content_type", "provides_extras",
    "dynamic", "license_expression", "license_file",
)
LIST_FIELDS = frozenset((
    "platform", "classifiers", "supported_platform", "provides", "requires", "obsoletes",
    "project_urls", "provides_dist", "obsoletes_dist", "requires_dist", "requires_external",
    "provides_extras", "dynamic", "license_file",
))


class ReleaseError(Refused):
    """A release operation was refused."""


@dataclass(frozen=True)
class StoredBlob:
    """A file already durable in the blob store, described for its entry."""

    sha256: str
    size: int
    core_metadata_sha256: str | None = None


def when(now: float) -> list[int]:
    return list(time.gmtime(now)[:6])


def metadata_from_form(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The metadata fields present in a form, typed per model.md §4.2 (absent fields omitted)."""
    result: dict[str, Any] = {}
    for name in METADATA_FIELDS:
        if name not in fields:
            continue
        values = list(fields[name])
        if name in LIST_FIELDS:
            result[name] = [v for v in values if v != ""]
        else:
            value = values[0] if values else ""
            result[name] = "" if value == "UNKNOWN" else value
    return result


def validate_metadata(metadata: Mapping[str, Any]) -> None:
    name = metadata.get("name") or ""
    version = metadata.get("version") or ""
    if not name:
        raise ReleaseError(400, 'invalid metadata: Missing required field "name"')
    if not version:
        raise ReleaseError(400, 'invalid metadata: Missing required field "version"')
    for problem in (project_name_problem(name), version_problem(version)):
        if problem:
            raise ReleaseError(400, f"invalid metadata: {problem}")


def register(tx: WriteTxn, user: str, index: str, metadata: Mapping[str, Any], *, full: bool) -> tuple[str, str]:
    """Store versiondata; ``full`` replaces every field (defaults for absent ones), else merge.

    Returns (normalized project, version). Existing links are always kept.
    """
    validate_metadata(metadata)
    project = normalize_project_name(metadata["name"])
    version = metadata["version"]
    key = version_key(user, index, project, version)
    current = tx.get(key)
    if current is None or full:
        data: dict[str, Any] = {name: ([] if name in LIST_FIELDS else "") for name in METADATA_FIELDS}
        if current is not None:
            data["+elinks"] = current.get("+elinks", [])
    else:
        data = current
    data.update({k: v for k, v in metadata.items() if k in METADATA_FIELDS})
    data.setdefault("+elinks", [])
    tx.set(key, data)
    pkey = project_key(user, index, project)
    if not tx.exists(pkey):
        tx.set(pkey, {"name": metadata["name"]})
    return project, version


def _links(versiondata: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(versiondata.get("+elinks", []))


def _delete_entry(tx: WriteTxn, relpath: str) -> None:
    """Tombstone: the relpath stays known forever so its URL answers 410."""
    if tx.exists(file_key(relpath)):
        tx.set(file_key(relpath), {})


def store_file(tx: WriteTxn, user: str, index: str, project: str, version: str, basename: str,
               blob: StoredBlob, *, rel: str, who: str | None, volatile: bool,
               last_modified: str | None = None, log: list[dict[str, Any]] | None = None) -> str | None:
    """Attach a release file or doczip to an existing version. Returns the new relpath, or None
    when an identical file already exists on a non-volatile index (nothing changes)."""
    vkey = version_key(user, index, project, version)
    versiondata = tx.get(vkey)
    if versiondata is None and "_" in version:
        version = version.replace("_", "-")
        vkey = version_key(user, index, project, version)
        versiondata = tx.get(vkey)
    if versiondata is None:
        raise ReleaseError(400, f"there are no files for {project} {version} on stage {user}/{index}")
    now = tx.at
    links = _links(versiondata)
    relpath = release_relpath(user, index, blob.sha256, basename)
    new_log = [dict(entry) for entry in (log or [])]
    new_log.append({"what": "upload", "who": who, "dst": f"{user}/{index}", "when": when(now)})
    replaced = next((link for link in links
                     if link["rel"] == rel and link["entrypath"].rsplit("/", 1)[-1] == basename), None)
    if replaced is not None:
        if not volatile:
            if replaced["hashes"].get("sha256") == blob.sha256:
                return None
            raise ReleaseError(409, f"{basename} already exists in non-volatile index")
        count = 1 + max((e.get("count", 0) for e in replaced.get("_log", []) if e.get("what") == "overwrite"),
                        default=0)
        new_log = [{"what": "overwrite", "who": None, "count": count, "when": when(now)}] + [
            e for e in new_log if e.get("what") != "overwrite"]
        if replaced["entrypath"] != relpath:
            _delete_entry(tx, replaced["entrypath"])
        # toxresults of the replaced file go with it (model.md §5.4)
        for link in links:
            if link.get("for_entrypath") == replaced["entrypath"]:
                _delete_entry(tx, link["entrypath"])
        links = [link for link in links
                 if link is not replaced and link.get("for_entrypath") != replaced["entrypath"]]
    kept = links
    kept.append({
        "rel": rel, "entrypath": relpath, "hash_spec": f"sha256={blob.sha256}",
        "hashes": {"sha256": blob.sha256}, "_log": new_log,
    })
    versiondata["+elinks"] = kept
    tx.set(vkey, versiondata)
    entry: dict[str, Any] = {
        "hash_spec": f"sha256={blob.sha256}", "hashes": {"sha256": blob.sha256},
        "last_modified": last_modified or http_date(now), "project": project, "version": version,
        "+size": blob.size, "+upload_time": now, "+rel": rel,
    }
    if blob.core_metadata_sha256:
        entry["+core_metadata"] = {"sha256": blob.core_metadata_sha256}
    tx.set(file_key(relpath), entry)
    tx.add_blob(blob.sha256)
    if blob.core_metadata_sha256:
        tx.add_blob(blob.core_metadata_sha256)
    return relpath


def same_named_link(view: Any, user: str, index: str, project: str, version: str, basename: str,
                    rel: str) -> dict[str, Any] | None:
    """The link a new file of this name would replace (for checks before any bytes are stored)."""
    versiondata = view.get(version_key(user, index, project, version))
    for link in _links(versiondata or {}):
        if link["rel"] == rel and link["entrypath"].rsplit("/", 1)[-1] == basename:
            return link
    return None


def doczip_basename(project: str, version: str) -> str:
    return f"{project}-{version}.doc.zip"


def doc_version(tx: WriteTxn, user: str, index: str, project: str) -> str:
    versions = list(tx.children(f"version/{user}/{index}/{project}"))
    latest = latest_version(versions)
    if latest is None:
        raise ReleaseError(400, f"doczip has no version and '{project}' has no releases to derive one from")
    return latest


# -- deletion (model.md §7, private indexes) -----------------------------------------------
def delete_version(tx: WriteTxn, user: str, index: str, project: str, version: str) -> None:
    vkey = version_key(user, index, project, version)
    versiondata = tx.get(vkey)
    if versiondata is None:
        return
    for link in _links(versiondata):
        _delete_entry(tx, link["entrypath"])
    tx.delete(vkey)
    if not tx.children(f"version/{user}/{index}/{project}"):
        tx.delete(project_key(user, index, project))


def delete_project(tx: WriteTxn, user: str, index: str, project: str) -> None:
    for version in list(tx.children(f"version/{user}/{index}/{project}")):
        delete_version(tx, user, index, project, version)
    tx.delete(project_key(user, index, project))


def delete_index_contents(tx: WriteTxn, user: str, index: str, now: float | None = None) -> None:
    """Every project, version and file of the index (files become 410 Gone)."""
    for project in list(tx.children(f"project/{user}/{index}")):
        delete_project(tx, user, index, project)
    # mirror caches of this index (file entries without versiondata) go too
    for project in list(tx.children(f"mirrorlinks/{user}/{index}")):
        tx.delete(f"mirrorlinks/{user}/{index}/{project}")

"""Push: copy a release from one index to another, or describe it for an upload elsewhere (http-api.md §3.10).

The request is checked in the order of the spec's table (rows 2-8 here; the
permission rows are the web layer's), so clients see the same first error as
with devpi-server. An internal push then happens in one write transaction:
any refusal (409 on a non-volatile target, invalid metadata) leaves the
target untouched, where devpi-server would keep the metadata it had already
registered.

The actionlog entries are lists as devpi-client prints them:
``[200, "register", NAME, VERSION, "->", "X/Y"]``,
``[200, "store_releasefile", "X/Y/+f/..."]``, ``[200, "store_toxresult", ...]``,
``[200, "store_doczip", NAME, VERSION, "->", "X/Y"]``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from devpitx.model.indexes import split_index_name
from devpitx.model.inherit import MirrorProject
from devpitx.model.names import normalize_project_name
from devpitx.model.releases import (
    LIST_FIELDS, METADATA_FIELDS, ReleaseError, StoredBlob, doczip_basename, register, same_named_link,
    store_file, when,
)
from devpitx.model.toxresults import store_toxresult, toxresults_of
from devpitx.model.versions import pyversion_and_filetype
from devpitx.model.views import mirror_versiondata
from devpitx.storage.keys import file_key, version_key
from devpitx.storage.txn import WriteTxn

INTERNAL_KEYS = frozenset({"name", "version", "targetindex", "no_docs", "only_docs"})
EXTERNAL_KEYS = frozenset({"name", "version", "posturl", "username", "password", "register_project",
                           "no_docs", "only_docs"})
ActionLog = list[list[Any]]


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


@dataclass(frozen=True)
class PushRequest:
    """A checked push body."""

    name: str
    version: str
    project: str                      # normalized name
    no_docs: bool
    only_docs: bool
    body: Mapping[str, Any]

    @property
    def internal(self) -> bool:
        return self.body.get("targetindex") is not None


@dataclass(frozen=True)
class ReleaseToPush:
    """The source side of a push: metadata and the links of the selected kinds."""

    metadata: dict[str, Any]                       # stored versiondata without "+" keys
    releasefiles: list[dict[str, Any]]             # sorted by basename
    toxresults: dict[str, list[dict[str, Any]]]    # release relpath -> its toxresult links
    doczip: dict[str, Any] | None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)   # relpath -> file entry

    def blobs(self) -> list[str]:
        """sha256 of every file a push needs to read."""
        return [str(e["hashes"]["sha256"]) for e in self.entries.values()]


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ReleaseError(400, f"'{key}' must be true or false")
    return value


def parse_push(body: Any, stage_name: str) -> PushRequest:
    """Rows 3 (name/version present) and 4 of the table."""
    if not isinstance(body, Mapping):
        raise ReleaseError(400, "push request must be a JSON object")
    name, version = body.get("name"), body.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        shown_name = name if isinstance(name, str) else ""
        shown_version = version if isinstance(version, str) else ""
        raise ReleaseError(400, f"there are no files for {shown_name} {shown_version} on stage {stage_name}")
    return PushRequest(name, version, normalize_project_name(name), _flag(body, "no_docs"),
                       _flag(body, "only_docs"), body)


def release_to_push(view: Reader, user: str, index: str, request: PushRequest) -> ReleaseToPush:
    """Rows 3 (versiondata in the source index itself), 4 and 5."""
    versiondata = view.get(version_key(user, index, request.project, request.version))
    if not isinstance(versiondata, dict):
        raise ReleaseError(400, f"there are no files for {request.name} {request.version} on stage {user}/{index}")
    if request.no_docs and request.only_docs:
        raise ReleaseError(400, "can't use 'no_docs' and 'only_docs' together")
    links = [link for link in versiondata.get("+elinks", []) if isinstance(link.get("entrypath"), str)]
    releasefiles: list[dict[str, Any]] = []
    toxresults: dict[str, list[dict[str, Any]]] = {}
    doczip = None
    if not request.only_docs:
        releasefiles = sorted((link for link in links if link.get("rel") == "releasefile"),
                              key=lambda link: link["entrypath"].rsplit("/", 1)[-1])
        toxresults = {link["entrypath"]: toxresults_of(versiondata, link["entrypath"]) for link in releasefiles}
    if not request.no_docs:
        doczip = next((link for link in links if link.get("rel") == "doczip"), None)
    entries: dict[str, dict[str, Any]] = {}
    for link in [*releasefiles, *(t for ts in toxresults.values() for t in ts), *([doczip] if doczip else [])]:
        entry = view.get(file_key(link["entrypath"]))
        if entry and isinstance((entry.get("hashes") or {}).get("sha256"), str):
            entries[link["entrypath"]] = entry
    releasefiles = [link for link in releasefiles if link["entrypath"] in entries]
    toxresults = {k: [t for t in ts if t["entrypath"] in entries] for k, ts in toxresults.items() if k in entries}
    if doczip is not None and doczip["entrypath"] not in entries:
        doczip = None
    if not releasefiles and doczip is None:
        raise ReleaseError(404, f"no release/files found for {request.name} {request.version}")
    metadata = {k: v for k, v in versiondata.items() if not k.startswith("+")}
    metadata.setdefault("name", request.name)
    metadata.setdefault("version", request.version)
    return ReleaseToPush(metadata, releasefiles, toxresults, doczip, entries)


def mirror_release_to_push(mirrored: MirrorProject | None, request: PushRequest, stage_name: str) -> ReleaseToPush:
    """Rows 3-5 for a mirror source: its links of the version (model.md §6.4). The file entries
    are filled in once the files are cached (a push downloads them first)."""
    links = [link for link in (mirrored.links if mirrored else ()) if link.version == request.version]
    if not links:
        raise ReleaseError(400, f"there are no files for {request.name} {request.version} on stage {stage_name}")
    if request.no_docs and request.only_docs:
        raise ReleaseError(400, "can't use 'no_docs' and 'only_docs' together")
    if request.only_docs:
        raise ReleaseError(404, f"no release/files found for {request.name} {request.version}")
    versiondata = mirror_versiondata(request.project, request.version, links)
    metadata = {k: v for k, v in versiondata.items() if not k.startswith("+")}
    releasefiles = sorted(({"rel": "releasefile", "entrypath": link.entrypath} for link in links),
                          key=lambda link: link["entrypath"].rsplit("/", 1)[-1])
    return ReleaseToPush(metadata, releasefiles, {}, None)


def internal_target(request: PushRequest) -> tuple[str, str]:
    """Rows 7 and 8: (user, index) of ``targetindex``."""
    unknown = sorted(str(key) for key in request.body if key not in INTERNAL_KEYS)
    if unknown:
        raise ReleaseError(400, f"unknown additional options: {', '.join(unknown)}")
    target = request.body.get("targetindex")
    parts = split_index_name(target) if isinstance(target, str) else None
    if parts is None:
        raise ReleaseError(400, "targetindex not in format user/index")
    return parts


# -- internal push -----------------------------------------------------------------------------
def _blob_of(entry: Mapping[str, Any]) -> StoredBlob:
    core = entry.get("+core_metadata")
    size = entry.get("+size")
    return StoredBlob(entry["hashes"]["sha256"], size if isinstance(size, int) else 0,
                      core.get("sha256") if isinstance(core, dict) else None)


def _copied_log(link: Mapping[str, Any], push_entry: dict[str, Any]) -> list[dict[str, Any]]:
    """History of a pushed link: the source's entries except ``overwrite``, then ``push``."""
    log = [dict(e) for e in link.get("_log", []) if isinstance(e, dict) and e.get("what") != "overwrite"]
    return log + [push_entry]


def _replace_log(tx: WriteTxn, key: str, relpath: str, log: list[dict[str, Any]]) -> None:
    """``store_file`` wrote its own upload history for the new link; a push has the copied one
    (after any ``overwrite`` entry the target's volatile replacement produced)."""
    versiondata: dict[str, Any] = tx.get(key) or {}
    for link in versiondata.get("+elinks", []):
        if link["entrypath"] == relpath:
            overwrites = [e for e in link.get("_log", []) if e.get("what") == "overwrite"]
            link["_log"] = overwrites + log
    tx.set(key, versiondata)


def push_internal(tx: WriteTxn, release: ReleaseToPush, request: PushRequest, *, source: str,
                  target_user: str, target_index: str, volatile: bool, who: str | None) -> ActionLog:
    """Copy ``release`` into ``target_user/target_index`` (rows 11 ff.); returns the actionlog."""
    target = f"{target_user}/{target_index}"
    push_entry = {"what": "push", "who": who, "src": source, "dst": target, "when": when(tx.at)}
    project, version = register(tx, target_user, target_index, release.metadata, full=False)
    key = version_key(target_user, target_index, project, version)
    actions: ActionLog = [[200, "register", request.name, request.version, "->", target]]

    def store(link: Mapping[str, Any], basename: str, rel: str) -> str:
        if not volatile and same_named_link(tx, target_user, target_index, project, version, basename, rel):
            # Even identical content: a push never silently skips a file (row 11).
            raise ReleaseError(409, f"{basename} already exists in non-volatile index")
        entry = release.entries[link["entrypath"]]
        relpath = store_file(tx, target_user, target_index, project, version, basename, _blob_of(entry),
                             rel=rel, who=who, volatile=volatile, last_modified=entry.get("last_modified"))
        assert relpath is not None
        _replace_log(tx, key, relpath, _copied_log(link, push_entry))
        return relpath

    for link in release.releasefiles:
        relpath = store(link, link["entrypath"].rsplit("/", 1)[-1], "releasefile")
        actions.append([200, "store_releasefile", relpath])
        for toxlink in release.toxresults.get(link["entrypath"], []):
            entry = release.entries[toxlink["entrypath"]]
            toxpath = store_toxresult(tx, target_user, target_index, relpath, _blob_of(entry), who=who,
                                      log=_copied_log(toxlink, push_entry),
                                      last_modified=entry.get("last_modified"))
            actions.append([200, "store_toxresult", toxpath])
    if release.doczip is not None:
        store(release.doczip, doczip_basename(project, version), "doczip")
        actions.append([200, "store_doczip", request.name, request.version, "->", target])
    return actions


# -- external push -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalPush:
    posturl: str
    username: str
    password: str
    register_project: bool


def external_target(request: PushRequest) -> ExternalPush:
    body = request.body
    unknown = sorted(str(key) for key in body if key not in EXTERNAL_KEYS)
    if unknown:
        raise ReleaseError(400, f"unknown additional options: {', '.join(unknown)}")
    posturl = body.get("posturl")
    if not isinstance(posturl, str) or urlsplit(posturl).scheme not in ("http", "https") \
            or not urlsplit(posturl).hostname:
        raise ReleaseError(400, "push needs 'targetindex' (user/index) or 'posturl' (an http or https URL)")
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ReleaseError(400, "external push needs 'username' and 'password' strings")
    return ExternalPush(posturl, username, password, _flag(body, "register_project"))


def metadata_fields(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The stored metadata as legacy upload form fields (lists repeated, like twine sends them)."""
    fields: list[tuple[str, str]] = []
    for name in METADATA_FIELDS:
        value = metadata.get(name)
        if name in LIST_FIELDS:
            fields.extend((name, str(item)) for item in value or () if isinstance(item, str))
        elif name == "metadata_version":
            # Receiving servers want a metadata version; old registrations may lack one.
            fields.append((name, value if isinstance(value, str) and value else "2.1"))
        elif isinstance(value, str):
            fields.append((name, value))
    return fields


def file_upload_fields(metadata: Mapping[str, Any], basename: str, sha256: str) -> list[tuple[str, str]]:
    pyversion, filetype = pyversion_and_filetype(basename)
    return [*metadata_fields(metadata), (":action", "file_upload"), ("protocol_version", "1"),
            ("filetype", filetype), ("pyversion", pyversion), ("sha256_digest", sha256)]


def doc_upload_fields(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [*metadata_fields(metadata), (":action", "doc_upload"), ("protocol_version", "1")]


def register_fields(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [*metadata_fields(metadata), (":action", "submit"), ("protocol_version", "1")]

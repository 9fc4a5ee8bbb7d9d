"""Edits of links of an index: deleting files, mirror caches, yanking (model.md §7, PEP 592).

A *link* is one entry of a version's ``+elinks`` (model/projects.py). Deleting
the file behind a link removes the link, tombstones its file entry (410 from
then on) and takes the toxresults attached to a release file with it; a version
left without links is deleted, and a project left without versions too.

Yanking is this server's addition (devpi-server cannot yank private files):
a yanked release file keeps a ``"yanked"`` key in its link, ``true`` or the
reason string, which simple pages show as ``data-yanked`` / ``"yanked"``.
Yanking a release sets it on every release file the version has *now*; files
uploaded later start unyanked. The flag lives in the link and not in the
metadata fields because a re-register (``:action=submit``) replaces those.

Functions take a WriteTxn and plain values and raise ``ReleaseError`` before
changing anything.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devpitx.model.indexes import Stage
from devpitx.model.releases import ReleaseError
from devpitx.model.versions import split_filename
from devpitx.storage.keys import file_key, mirrorlinks_key, project_key, version_key
from devpitx.storage.txn import WriteTxn

# A reason is shown in HTML attributes and JSON pages; keep it a sentence, not a document.
MAX_YANK_REASON_CHARS = 1000

Yanked = bool | str


def parse_yank_body(body: Any) -> Yanked:
    """The ``yanked`` value of a yank request: ``{"yanked": true | false | "<reason>"}``.

    An empty reason means "yanked without a reason" (``true``), as in PEP 592.
    """
    if not isinstance(body, Mapping):
        raise ReleaseError(400, 'yank request must be a JSON object like {"yanked": "reason"}')
    unknown = sorted(str(key) for key in body if key != "yanked")
    if unknown:
        raise ReleaseError(400, f"unknown keys in yank request: {', '.join(unknown)}")
    if "yanked" not in body:
        raise ReleaseError(400, "yank request needs the key 'yanked' (true, false or a reason)")
    value = body["yanked"]
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        reason = value.strip()
        if len(reason) > MAX_YANK_REASON_CHARS:
            raise ReleaseError(400, f"yank reason is longer than {MAX_YANK_REASON_CHARS} characters")
        return reason or True
    raise ReleaseError(400, "'yanked' must be true, false or a reason string")


def _set_yanked(link: dict[str, Any], yanked: Yanked) -> None:
    if yanked is False:
        link.pop("yanked", None)
    else:
        link["yanked"] = yanked


def _require_private(stage: Stage) -> None:
    if stage.is_mirror:
        raise ReleaseError(400, f"cannot yank on mirror index {stage.name}")


def yank_version(tx: WriteTxn, stage: Stage, project: str, version: str, yanked: Yanked) -> dict[str, Any]:
    """Yank (or unyank, ``yanked`` False) every release file of a version; returns the versiondata."""
    _require_private(stage)
    key = version_key(stage.user, stage.index, project, version)
    versiondata = tx.get(key)
    if not isinstance(versiondata, dict):
        raise ReleaseError(404, f"The version {version} of project {project} does not exist.")
    for link in versiondata.get("+elinks", []):
        if link.get("rel") == "releasefile":
            _set_yanked(link, yanked)
    tx.set(key, versiondata)
    return versiondata


def _linked_version(tx: WriteTxn, user: str, index: str, relpath: str,
                    entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(version key, versiondata) of the version of this index whose links name ``relpath``."""
    project = entry.get("project")
    if not isinstance(project, str):
        return None
    candidates = [entry["version"]] if isinstance(entry.get("version"), str) else []
    candidates += sorted(v for v in tx.children(f"version/{user}/{index}/{project}") if v not in candidates)
    for version in candidates:
        key = version_key(user, index, project, version)
        versiondata = tx.get(key)
        if isinstance(versiondata, dict) and any(
                link.get("entrypath") == relpath for link in versiondata.get("+elinks", [])):
            return key, versiondata
    return None


def _existing_entry(tx: WriteTxn, relpath: str) -> dict[str, Any]:
    entry = tx.get(file_key(relpath))
    if entry is None:
        raise ReleaseError(404, f"package '{relpath}' doesn't exist")
    if not entry:
        raise ReleaseError(410, f"file '{relpath}' existed, deleted in later serial")
    return entry  # type: ignore[no-any-return]


def yank_file(tx: WriteTxn, stage: Stage, relpath: str, yanked: Yanked) -> dict[str, Any]:
    """Yank (or unyank) one release file; returns its link as stored."""
    _require_private(stage)
    entry = _existing_entry(tx, relpath)
    found = _linked_version(tx, stage.user, stage.index, relpath, entry)
    link = None
    if found is not None:
        key, versiondata = found
        link = next(item for item in versiondata["+elinks"] if item.get("entrypath") == relpath)
    if found is None or link is None or link.get("rel") != "releasefile":
        raise ReleaseError(400, f"only release files can be yanked, not '{relpath}'")
    _set_yanked(link, yanked)
    tx.set(key, versiondata)
    return dict(link)


def delete_file(tx: WriteTxn, stage: Stage, relpath: str) -> None:
    """Delete the file at ``relpath`` of index ``stage`` (model.md §7, first row)."""
    entry = _existing_entry(tx, relpath)
    if stage.is_mirror:
        _delete_mirror_file(tx, stage, relpath, entry)
        return
    found = _linked_version(tx, stage.user, stage.index, relpath, entry)
    tx.set(file_key(relpath), {})
    if found is None:
        return
    key, versiondata = found
    kept = []
    for link in versiondata.get("+elinks", []):
        if link.get("entrypath") == relpath or link.get("for_entrypath") == relpath:
            # the file itself, and the toxresults attached to it (model.md §5.4)
            if tx.get(file_key(link["entrypath"])):
                tx.set(file_key(link["entrypath"]), {})
            continue
        kept.append(link)
    if kept:
        versiondata["+elinks"] = kept
        tx.set(key, versiondata)
        return
    tx.delete(key)
    project = str(entry["project"])
    if not tx.children(f"version/{stage.user}/{stage.index}/{project}"):
        tx.delete(project_key(stage.user, stage.index, project))


# -- mirrors (model.md §7, second column) -------------------------------------------------------
# A mirror's links live in its link record ``mirrorlinks/<u>/<i>/<p>`` (devpitx/mirror/links.py);
# a file entry exists only once the file was downloaded. Removing the entry removes the cached
# content: while the record still lists the link, the file can be fetched again.
def _record_relpaths(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(basename, relpath) of every link of a mirror link record."""
    pairs = []
    for pair in record.get("links") or ():
        if isinstance(pair, list) and len(pair) == 2:
            pairs.append((str(pair[0]), str(pair[1]).partition("#")[0]))
    return pairs


def _mirror_record(tx: WriteTxn, stage: Stage, project: str) -> dict[str, Any] | None:
    record = tx.get(mirrorlinks_key(stage.user, stage.index, project))
    return record if isinstance(record, dict) else None


def _drop_cached(tx: WriteTxn, relpath: str) -> None:
    if tx.get(file_key(relpath)) is not None:
        tx.delete(file_key(relpath))


def _delete_mirror_file(tx: WriteTxn, stage: Stage, relpath: str, entry: Mapping[str, Any]) -> None:
    project = entry.get("project")
    if not isinstance(project, str) or not entry.get("last_modified"):
        # only a cached file (with a project and content) can be deleted
        raise ReleaseError(404, f"package '{relpath}' doesn't exist")
    tx.delete(file_key(relpath))
    record = _mirror_record(tx, stage, project)
    if record is not None and not any(tx.get(file_key(path)) for _name, path in _record_relpaths(record)):
        tx.delete(mirrorlinks_key(stage.user, stage.index, project))


def delete_mirror_version(tx: WriteTxn, stage: Stage, project: str, version: str) -> None:
    """Remove the cached contents of one version; its links stay and can be downloaded again."""
    record = _mirror_record(tx, stage, project)
    relpaths = [path for name, path in _record_relpaths(record or {}) if split_filename(name)[1] == version]
    if not relpaths:
        raise ReleaseError(404, f"The version {version} of project {project} does not exist.")
    for relpath in relpaths:
        _drop_cached(tx, relpath)


def delete_mirror_project(tx: WriteTxn, stage: Stage, project: str) -> None:
    """Remove a mirror's cached files and link record of ``project``."""
    record = _mirror_record(tx, stage, project)
    if record is None:
        raise ReleaseError(404, "project not found")
    for _name, relpath in _record_relpaths(record):
        _drop_cached(tx, relpath)
    tx.delete(mirrorlinks_key(stage.user, stage.index, project))

"""The key space of the store, and where each key's current value lives under ``state/``.

A key is a ``/``-separated path of segments; no segment contains ``/``
(user, index, project and version names are validated before they reach the
store). The first segment names the kind of record:

  user/<user>                              user record (model.md §2), without indexes
  index/<user>/<index>                     index configuration (model.md §3)
  project/<user>/<index>/<project>         per-project record of a private index
  version/<user>/<index>/<project>/<ver>   versiondata incl. ``+elinks`` (model.md §4)
  file/<relpath>                           file entry metadata, ``{}`` once deleted (410)
  mirrorlinks/<user>/<index>/<project>     cached upstream link record of a mirror

Project and index sets are not stored as lists: they are the children of a
key prefix (see ``StateTree.children``), so adding the 10,001st project does
not rewrite a list of 10,000 names.
"""
from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from urllib.parse import quote

_MAX_SEGMENT_BYTES = 200


def user_key(user: str) -> str:
    return f"user/{user}"


def index_key(user: str, index: str) -> str:
    return f"index/{user}/{index}"


def project_key(user: str, index: str, project: str) -> str:
    return f"project/{user}/{index}/{project}"


def version_key(user: str, index: str, project: str, version: str) -> str:
    return f"version/{user}/{index}/{project}/{version}"


def file_key(relpath: str) -> str:
    return f"file/{relpath}"


def mirrorlinks_key(user: str, index: str, project: str) -> str:
    return f"mirrorlinks/{user}/{index}/{project}"


def relpath_of_file_key(key: str) -> str:
    assert key.startswith("file/")
    return key[len("file/"):]


def _segment_to_path(segment: str) -> str:
    # Percent-encode everything outside [A-Za-z0-9_.~-] so that no segment can be
    # "..", hidden, or contain path separators; long segments are hashed because
    # the file itself records its key (state files are never parsed by name).
    quoted = quote(segment, safe="")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    if len(quoted.encode()) > _MAX_SEGMENT_BYTES:
        quoted = "~" + hashlib.sha256(segment.encode()).hexdigest()
    return quoted


def state_relpath(key: str) -> PurePosixPath:
    """Relative path of the file holding ``key``'s value below ``state/``."""
    return PurePosixPath(state_relname(key))


def state_relname(key: str) -> str:
    """``state_relpath`` as a string, for loops over many keys."""
    return "/".join(_segment_to_path(s) for s in key.split("/")) + ".json"

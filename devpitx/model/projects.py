"""Projects, versions, release files and links of private indexes (model.md §4, §5, §7).

Records (all JSON, see storage/keys.py for the keys):

``project/<u>/<i>/<p>``  ``{"name": <name as first registered>}``; the project exists in the
    index iff this key exists (the index's project set is the children of ``project/<u>/<i>``).

``version/<u>/<i>/<p>/<v>``  versiondata: the metadata fields of model.md §4.2 plus
    ``"+elinks"``: a list of links, each
    ``{"rel": "releasefile"|"doczip"|"toxresult", "entrypath": <relpath>,
       "hash_spec": "sha256=<hex>", "hashes": {"sha256": <hex>}, "_log": [<history>],
       "for_entrypath": <relpath of the release file> (toxresults only)}``.
    Keys starting with ``+`` are internal and never accepted from clients.

``file/<relpath>``  the file entry (model.md §5.2):
    ``{"hash_spec", "hashes", "last_modified": <RFC 1123>, "project", "version",
       "+size": <bytes>, "+upload_time": <unix seconds, float>, "+rel": <rel>,
       "+core_metadata": {"sha256": <hex>}  (wheels: the METADATA blob, PEP 658)}``
    and ``{}`` once deleted, forever (410 Gone). ``+`` keys are internal: JSON views drop them.

The relpath of an uploaded file is ``<u>/<i>/+f/<h[0:3]>/<h[3:16]>/<basename>`` (h = sha256).
All functions take a read view (Store) or a WriteTxn and plain values; none does I/O.
"""
from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from typing import Any, Protocol

from devpitx.storage.keys import file_key, project_key, version_key


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


RFC1123 = "%a, %d %b %Y %H:%M:%S GMT"


def http_date(now: float) -> str:
    return time.strftime(RFC1123, time.gmtime(now))


def parse_http_date(value: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(value, RFC1123)))
    except (ValueError, TypeError):
        return None


def release_relpath(user: str, index: str, sha256: str, basename: str) -> str:
    return f"{user}/{index}/+f/{sha256[:3]}/{sha256[3:16]}/{basename}"


# -- reads ---------------------------------------------------------------------------------
def project_names(view: Reader, user: str, index: str) -> list[str]:
    return sorted(view.children(f"project/{user}/{index}"))


def has_project(view: Reader, user: str, index: str, project: str) -> bool:
    return view.get(project_key(user, index, project)) is not None


def version_names(view: Reader, user: str, index: str, project: str) -> list[str]:
    return list(view.children(f"version/{user}/{index}/{project}"))


def get_versiondata(view: Reader, user: str, index: str, project: str, version: str) -> dict[str, Any] | None:
    return view.get(version_key(user, index, project, version))


def get_file_entry(view: Reader, relpath: str) -> dict[str, Any] | None:
    """The entry; ``{}`` for a deleted file (410), None if it never existed (404)."""
    return view.get(file_key(relpath))


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``releasefilemeta`` view: internal ``+`` keys removed."""
    return {k: v for k, v in entry.items() if not k.startswith("+")}

"""Upstream project pages -> mirror link records (mirror.md §4.3, §4.4; model.md §5.1, §5.2).

Pure functions, no I/O: parse a PEP 691 JSON or PEP 503 HTML page into
:class:`UpstreamLink` values, de-duplicate them by basename, name each one by
its relpath (``+f`` with the upstream hash, ``+e`` without) and build the
record stored under ``mirrorlinks/<u>/<i>/<p>``::

    {"links": [[basename, entrypath with "#<type>=<hex>" when hashed], ...],
     "requires_python": [str | null, ...],     # per link, upstream order
     "yanked": [null | true | str, ...],
     "serial": <X-Pypi-Last-Serial or -1>, "etag": <ETag or null>,
     "+urls": [<upstream URL, no fragment, no credentials>, ...],
     "+sizes": [int | null, ...], "+upload_times": [unix seconds | null, ...],
     "+core_metadata": [<sha256 of the PEP 658 metadata file> | null, ...]}

The ``+`` lists carry what upstream publishes beyond devpi-server's record
(PEP 700 sizes and upload times, PEP 658/714 core metadata) and the URL each
file is downloaded from. ``model/inherit.py`` reads this record.

File entries (``file/<relpath>``) of mirror files are written when the file
(or its metadata) is first downloaded, not for every link of every page: a
page of a big project lists thousands of files, and one state file with an
fsync each would stall the server for seconds. Until then
:func:`entry_from_record` derives the entry from the record.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from devpitx.model.names import normalize_project_name
from devpitx.model.versions import split_filename
from devpitx.mirror.upstream import strip_credentials

# mirror.md §4.3: extensions of archives an HTML page may link to, longest first.
HTML_ARCHIVE_EXTENSIONS = (".tar.bz2", ".tar.gz", ".doc.zip", ".deb", ".dmg", ".egg", ".exe", ".msi",
                           ".rpm", ".tar", ".tgz", ".whl", ".zip")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_E_DIR_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PageFormatError(Exception):
    """The page could not be understood (wrong api-version, invalid JSON)."""


@dataclass(frozen=True)
class UpstreamLink:
    """One release file as upstream lists it."""

    url: str                               # absolute, without fragment and credentials
    basename: str                          # percent-decoded
    hash_type: str | None = None
    hash_value: str | None = None          # lower-case hex
    requires_python: str | None = None
    yanked: bool | str | None = None
    size: int | None = None
    upload_time: float | None = None
    core_metadata_sha256: str | None = None


# -- parsing helpers -------------------------------------------------------------------------
def _safe_basename(url: str) -> str | None:
    path = urlsplit(url).path
    basename = unquote(path.rsplit("/", 1)[-1])
    if not basename or basename in (".", "..") or "/" in basename or "\\" in basename or "\x00" in basename:
        return None
    return basename


def _hash_from_fragment(fragment: str) -> tuple[str, str] | None:
    """``sha256=<hex>`` with an algorithm hashlib knows; anything else (``egg=...``) is no hash."""
    algorithm, sep, value = fragment.partition("=")
    algorithm = algorithm.lower()
    if not sep or not value or not _HEX.match(value) or algorithm not in hashlib.algorithms_available:
        return None
    return algorithm, value.lower()


def _upload_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _yanked(value: Any) -> bool | str | None:
    if value is True:
        return True
    if isinstance(value, str):
        return value      # a reason; "" (HTML data-yanked without value) means yanked without one
    return None


def _check_api_version(meta: Any) -> None:
    version = str((meta or {}).get("api-version", "1.0")) if isinstance(meta, Mapping) else "1.0"
    major = version.split(".", 1)[0]
    if major != "1":
        raise PageFormatError(f"unsupported simple API version {version!r}")


# -- JSON (PEP 691) --------------------------------------------------------------------------
def parse_json_page(body: bytes, page_url: str) -> list[UpstreamLink]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise PageFormatError(f"invalid JSON project page: {exc}") from None
    if not isinstance(data, Mapping):
        raise PageFormatError("JSON project page is not an object")
    _check_api_version(data.get("meta"))
    links = []
    for item in data.get("files") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            continue
        url = strip_credentials(urljoin(page_url, item["url"]))
        if urlsplit(url).scheme not in ("http", "https"):
            continue
        basename = _safe_basename(url)
        if basename is None:
            continue
        hash_type = hash_value = None
        hashes = item.get("hashes")
        if isinstance(hashes, Mapping) and hashes:
            chosen = "sha256" if "sha256" in hashes else next(iter(hashes))
            parsed = _hash_from_fragment(f"{chosen}={hashes[chosen]}") if isinstance(hashes[chosen], str) else None
            if parsed is not None:
                hash_type, hash_value = parsed
        requires_python = item.get("requires-python")
        size = item.get("size")
        core = item.get("core-metadata", item.get("dist-info-metadata"))
        core_sha256 = core.get("sha256") if isinstance(core, Mapping) else None
        links.append(UpstreamLink(
            url=url,
            basename=basename,
            hash_type=hash_type,
            hash_value=hash_value,
            requires_python=requires_python if isinstance(requires_python, str) and requires_python else None,
            yanked=_yanked(item.get("yanked")) if item.get("yanked") is not False else None,
            size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
            upload_time=_upload_time(item.get("upload-time")),
            core_metadata_sha256=(core_sha256.lower() if isinstance(core_sha256, str)
                                  and re.fullmatch(r"[0-9a-fA-F]{64}", core_sha256) else None),
        ))
    return links


# -- HTML (PEP 503) --------------------------------------------------------------------------
class _AnchorParser(HTMLParser):
    """Collects ``<base href>`` and each ``<a>``'s attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.anchors: list[tuple[dict[str, str | None], list[str]]] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self._open = []
            self.anchors.append((dict(attrs), self._open))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)


def parse_anchors(body: bytes) -> _AnchorParser:
    parser = _AnchorParser()
    parser.feed(body.decode("utf-8", "replace"))
    parser.close()
    return parser


def _archive_extension(basename: str) -> str | None:
    lowered = basename.lower()
    for ext in HTML_ARCHIVE_EXTENSIONS:
        if lowered.endswith(ext):
            return ext
    return None


def is_archive_of(basename: str, project: str) -> bool:
    """HTML links count only for archives whose name starts with the project's (mirror.md §4.3)."""
    ext = _archive_extension(basename)
    if ext is None:
        return False
    stem = basename[:-len(ext)]
    return normalize_project_name(stem).startswith(normalize_project_name(project))


def parse_html_page(body: bytes, page_url: str, project: str) -> list[UpstreamLink]:
    parser = parse_anchors(body)
    base = urljoin(page_url, parser.base) if parser.base else page_url
    links = []
    for attrs, _text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        absolute = urljoin(base, href.strip())
        url, _, fragment = absolute.partition("#")
        url = strip_credentials(url)
        if urlsplit(url).scheme not in ("http", "https"):
            continue
        basename = _safe_basename(url)
        if basename is None or not is_archive_of(basename, project):
            continue
        parsed = _hash_from_fragment(fragment) if fragment else None
        requires_python = attrs.get("data-requires-python")
        core = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        core_hash = _hash_from_fragment(core) if core else None
        links.append(UpstreamLink(
            url=url,
            basename=basename,
            hash_type=parsed[0] if parsed else None,
            hash_value=parsed[1] if parsed else None,
            requires_python=requires_python or None,
            yanked=_yanked(attrs["data-yanked"] or "") if "data-yanked" in attrs else None,
            core_metadata_sha256=core_hash[1] if core_hash and core_hash[0] == "sha256" else None,
        ))
    return links


def parse_project_page(body: bytes, content_type: str, page_url: str, project: str) -> list[UpstreamLink]:
    """JSON when upstream says so, else HTML; then de-duplicated (mirror.md §4.3)."""
    if content_type == "application/vnd.pypi.simple.v1+json":
        links = parse_json_page(body, page_url)
    else:
        links = parse_html_page(body, page_url, project)
    return deduplicate(links)


def deduplicate(links: Iterable[UpstreamLink]) -> list[UpstreamLink]:
    """One link per basename: a later link replaces an earlier one only if it adds a hash, or
    (neither hashed) adds requires-python; once a hashed link was seen, later ones are ignored."""
    chosen: dict[str, UpstreamLink] = {}
    for link in links:
        earlier = chosen.get(link.basename)
        if earlier is None:
            chosen[link.basename] = link
        elif earlier.hash_value is None and link.hash_value is not None:
            chosen[link.basename] = link
        elif (earlier.hash_value is None and link.hash_value is None
              and earlier.requires_python is None and link.requires_python is not None):
            chosen[link.basename] = link
    return list(chosen.values())   # dicts keep first-insertion order: upstream order


# -- relpaths and records --------------------------------------------------------------------
def e_dirname(url: str) -> str:
    """The ``+e`` directory of an unhashed link: scheme/host/path minus the file, flattened."""
    parts = urlsplit(url)
    directory = unquote(parts.path).rsplit("/", 1)[0]
    raw = f"{parts.scheme}/{parts.netloc.rpartition('@')[2]}{directory}".rstrip("/")
    return _E_DIR_UNSAFE.sub("_", raw.replace("/", "_"))


def link_relpath(user: str, index: str, link: UpstreamLink) -> str:
    """model.md §5.1: ``+f/<h[0:3]>/<h[3:16]>/`` with the upstream hash, ``+e/<dir>/`` without."""
    if link.hash_value:
        h = link.hash_value
        return f"{user}/{index}/+f/{h[:3]}/{h[3:16]}/{link.basename}"
    return f"{user}/{index}/+e/{e_dirname(link.url)}/{link.basename}"


def link_entrypath(user: str, index: str, link: UpstreamLink) -> str:
    relpath = link_relpath(user, index, link)
    return f"{relpath}#{link.hash_type}={link.hash_value}" if link.hash_value else relpath


def build_record(user: str, index: str, links: Sequence[UpstreamLink], *, serial: int,
                 etag: str | None) -> dict[str, Any]:
    return {
        "links": [[link.basename, link_entrypath(user, index, link)] for link in links],
        "requires_python": [link.requires_python for link in links],
        "yanked": [link.yanked for link in links],
        "serial": serial,
        "etag": etag,
        "+urls": [link.url for link in links],
        "+sizes": [link.size for link in links],
        "+upload_times": [link.upload_time for link in links],
        "+core_metadata": [link.core_metadata_sha256 for link in links],
    }


def empty_record() -> dict[str, Any]:
    """What a refresh stores (mirror.md §9): no links, no ETag, so the next fetch is a full one."""
    return build_record("", "", (), serial=-1, etag=None)


def record_column(record: Mapping[str, Any], name: str, i: int) -> Any:
    column = record.get(name)
    return column[i] if isinstance(column, list) and i < len(column) else None


def _split_entrypath(entrypath: str) -> tuple[str, str | None, str | None]:
    relpath, _, fragment = entrypath.partition("#")
    hash_type, sep, hash_value = fragment.partition("=")
    return relpath, (hash_type if sep else None), (hash_value if sep else None)


@dataclass(frozen=True)
class RecordLink:
    """One link of a stored record, with what a file entry needs."""

    relpath: str
    basename: str
    url: str | None
    hash_type: str | None
    hash_value: str | None
    core_metadata_sha256: str | None = None


def record_links(record: Mapping[str, Any]) -> list[RecordLink]:
    found = []
    for i, pair in enumerate(record.get("links") or ()):
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        relpath, hash_type, hash_value = _split_entrypath(str(pair[1]))
        url = record_column(record, "+urls", i)
        core = record_column(record, "+core_metadata", i)
        found.append(RecordLink(relpath, str(pair[0]), url if isinstance(url, str) else None,
                                hash_type, hash_value, core if isinstance(core, str) else None))
    return found


def find_record_link(record: Mapping[str, Any], relpath: str) -> RecordLink | None:
    for link in record_links(record):
        if link.relpath == relpath:
            return link
    return None


def project_of_relpath(relpath: str) -> str:
    """The project a mirror file name points to (where its link record is looked up)."""
    name, _version, _ext = split_filename(relpath.rsplit("/", 1)[-1])
    return normalize_project_name(name)


def entry_from_record(link: RecordLink, project: str) -> dict[str, Any]:
    """The file entry (model.md §5.2) of a mirror file not downloaded yet: no ``last_modified``."""
    entry: dict[str, Any] = {"project": project}
    if link.hash_type and link.hash_value:
        entry["hash_spec"] = f"{link.hash_type}={link.hash_value}"
        entry["hashes"] = {link.hash_type: link.hash_value}
    else:
        entry["hash_spec"] = ""
        entry["hashes"] = {}
    _name, version, _ext = split_filename(link.basename)
    if version:
        entry["version"] = version
    if link.url:
        entry["url"] = link.url
    if link.core_metadata_sha256:
        entry["+upstream_core_metadata"] = {"sha256": link.core_metadata_sha256}
    return entry


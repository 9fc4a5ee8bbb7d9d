"""Mirror files: entries before the first download, streaming it, and core metadata (mirror.md §5).

File entries of mirror files are written when content is first stored; until
then :func:`derived_entry` builds one from the project's link record.
:class:`MirrorFiles` starts one :class:`~devpitx.mirror.download.Download` per
file (joined by every client that asks meanwhile, see ``download.py`` for the
streaming and the integrity rules), downloads without a client for pushes,
and fetches PEP 658 ``.metadata`` files on demand, preferring the METADATA of
a wheel already stored here.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request
from twisted.web.iweb import IRequest

from devpitx.mirror.download import Download, FileUnavailable, Follower, UpstreamHead, mirror_url_of
from devpitx.mirror.fetches import SingleFlight
from devpitx.mirror.links import entry_from_record, find_record_link, project_of_relpath
from devpitx.mirror.upstream import MAX_METADATA_BYTES, MirrorSettings, Upstream, UpstreamError
from devpitx.model.distmeta import ArchiveError, wheel_core_metadata
from devpitx.model.indexes import Stage
from devpitx.model.projects import get_file_entry
from devpitx.runtime import RunBlocking
from devpitx.storage.keys import file_key, mirrorlinks_key
from devpitx.storage.store import Store

__all__ = ["FileUnavailable", "MirrorFiles", "UpstreamHead", "derived_entry"]


def derived_entry(view: Any, stage: Stage, relpath: str) -> dict[str, Any] | None:
    """The entry of a mirror file that was never downloaded, from its project's link record."""
    project = project_of_relpath(relpath)
    record = view.get(mirrorlinks_key(stage.user, stage.index, project))
    if not isinstance(record, dict):
        return None
    link = find_record_link(record, relpath)
    return entry_from_record(link, project) if link is not None else None



class MirrorFiles:
    """Entries and first downloads of mirror files."""

    def __init__(self, store: Store, upstream: Upstream, clock: IReactorTime, run_disk: RunBlocking,
                 settings: MirrorSettings) -> None:
        self.store = store
        self.upstream = upstream
        self.clock = clock
        self.run_disk = run_disk
        self.settings = settings
        self.downloads: dict[str, Download] = {}
        self._metadata_flights: SingleFlight[str, str | FileUnavailable] = SingleFlight(clock)

    def entry(self, stage: Stage, relpath: str) -> dict[str, Any] | None:
        """The stored entry, or for a mirror the one derived from the link record."""
        stored = get_file_entry(self.store, relpath)
        if stored is not None or not stage.is_mirror:
            return stored
        return derived_entry(self.store, stage, relpath)

    def forget(self, download: Download) -> None:
        if self.downloads.get(download.relpath) is download:
            del self.downloads[download.relpath]

    def download(self, stage: Stage, relpath: str, entry: Mapping[str, Any]) -> Download:
        """The download of ``relpath`` in progress, or a new one."""
        download = self.downloads.get(relpath)
        if download is None:
            download = self.downloads[relpath] = Download(self, stage, relpath, entry)
            Deferred.fromCoroutine(download.run())
        return download

    async def serve(self, request: IRequest, stage: Stage, relpath: str, entry: Mapping[str, Any],
                    set_headers: Callable[[UpstreamHead], None]) -> bool:
        """Stream ``relpath`` to ``request`` from upstream, caching it (http-api.md §3.14 step 6).

        False: the download completed while we waited for it, so the file is in the store
        now and the caller serves it from there.
        """
        if self.upstream.offline:
            raise FileUnavailable(404, "no such file")
        if not entry.get("url"):
            raise FileUnavailable(404, "no such file")
        download = self.download(stage, relpath, entry)
        try:
            head = await download.wait_head(self.settings.request_timeout)
        except TimeoutError:
            raise FileUnavailable(504, f"timeout after {self.settings.request_timeout:g}s getting "
                                       f"{download.url}") from None
        if download.failed:
            # It broke before this client got a byte: it can still get a proper error.
            raise FileUnavailable(502, download.problem or f"error getting {download.url}")
        if download.over:
            return False
        set_headers(head)
        if request.method == b"HEAD":
            return True     # the download goes on and caches the file
        await Follower(download, cast(Request, request)).start()
        return True

    async def ensure_stored(self, stage: Stage, relpath: str) -> dict[str, Any]:
        """Download and cache a mirror file without a client (a push from a mirror, mirror.md §5.2);
        joins a download in progress. Returns the stored entry."""
        entry = self.entry(stage, relpath)
        if not entry:
            raise FileUnavailable(404, "no such file")
        sha256 = (entry.get("hashes") or {}).get("sha256")
        if entry.get("last_modified") and isinstance(sha256, str) and self.store.blobs.has(sha256):
            return entry
        if self.upstream.offline or not entry.get("url"):
            raise FileUnavailable(404, "no such file")
        download = self.download(stage, relpath, entry)
        try:
            await download.wait_head(self.settings.request_timeout)
        except TimeoutError:
            raise FileUnavailable(504, f"timeout after {self.settings.request_timeout:g}s getting "
                                       f"{download.url}") from None
        await download.wait_over()
        stored = get_file_entry(self.store, relpath)
        if download.failed or not stored or not stored.get("last_modified"):
            raise FileUnavailable(502, download.problem or f"error getting {download.url}")
        return stored

    async def fetch_metadata(self, stage: Stage, relpath: str, entry: Mapping[str, Any]) -> str:
        """Get, verify and store ``<file>.metadata`` (PEP 658); returns its sha256.

        One fetch per file at a time. A wheel already stored here is read instead of asking
        upstream (also offline), as long as its METADATA has the hash upstream announced.
        """
        flight = self._metadata_flights.join(relpath, lambda: self._metadata(stage, relpath, entry))
        outcome = await flight.wait()
        if isinstance(outcome, FileUnavailable):
            raise outcome
        return outcome

    async def _metadata(self, stage: Stage, relpath: str, entry: Mapping[str, Any]) -> str | FileUnavailable:
        expected = (entry.get("+upstream_core_metadata") or {}).get("sha256")
        url = entry.get("url")
        if not isinstance(expected, str) or not isinstance(url, str):
            return FileUnavailable(404, "no such file")
        data = await self._local_metadata(relpath, entry, expected)
        if data is None:
            if self.upstream.offline:
                return FileUnavailable(404, "no such file")
            metadata_url = url + ".metadata"
            try:
                page = await self.upstream.fetch_page(metadata_url, mirror_url_of(stage), accept=None,
                                                      timeout=self.settings.request_timeout,
                                                      max_bytes=MAX_METADATA_BYTES)
            except UpstreamError as exc:
                return FileUnavailable(504 if exc.timed_out else 502, exc.message)
            if page.status != 200:
                return FileUnavailable(404 if page.status == 404 else 502,
                                       f"error {page.status} getting {metadata_url}")
            actual = hashlib.sha256(page.body).hexdigest()
            if actual != expected:
                return FileUnavailable(502, f"{metadata_url}: sha256 mismatch, expected {expected}, got {actual}")
            data = page.body
        sha256 = await self.run_disk(self.store.blobs.put_bytes, data)
        with self.store.write() as tx:
            current = tx.get(file_key(relpath))
            if current == {}:
                return FileUnavailable(410, "file existed, deleted in later serial")
            updated = dict(current or entry)
            updated["+core_metadata"] = {"sha256": sha256}
            tx.set(file_key(relpath), updated)
            tx.add_blob(sha256)
        return sha256

    async def _local_metadata(self, relpath: str, entry: Mapping[str, Any], expected: str) -> bytes | None:
        """METADATA of the wheel if its content is stored and it matches ``expected``."""
        sha256 = (entry.get("hashes") or {}).get("sha256")
        if not entry.get("last_modified") or not isinstance(sha256, str) or not self.store.blobs.has(sha256):
            return None
        try:
            data = await self.run_disk(wheel_core_metadata, self.store.blobs.path_for(sha256),
                                       relpath.rsplit("/", 1)[-1])
        except ArchiveError:
            return None
        return data if hashlib.sha256(data).hexdigest() == expected else None

"""Obtaining one blob a replicated file entry names (replication.md §5.2 steps 4-5, §5.3).

:class:`BlobFetcher` runs at most one fetch per blob at a time, whoever
needs it (the file queue, a client waiting in ``fetch_now``), and hands each
caller its own Deferred, so a caller that goes away stops nothing. A fetch
first looks in ``--replica-file-search-path`` (copy or hard link, verified),
then, for the core metadata of a wheel that is here already, extracts the
METADATA file from the wheel (PEP 658 metadata is those bytes; no request),
then GETs ``<primary>/<relpath>`` with the replica headers: the body is
hashed chunk by chunk as it arrives and kept in memory up to SPILL_BYTES,
beyond that written to ``tmp/`` (per-chunk work independent of the file
size), then size and every known hash are verified and the store adopts it,
without a serial. Blobs that finish while an adoption is running are adopted
together with the next one: one trip to a disk thread and one filesystem
sync for the group (``Store.adopt_replicated_blobs``).

The outcome is ``stored``, ``absent`` (302, 410, and 404/502 of mirror
files: nothing to replicate) or ``failed`` (the message goes into the
replication errors). Functions marked blocking run through ``run_disk``.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from devpitx.mirror.upstream import describe_error, discard_body
from devpitx.model.distmeta import ArchiveError, wheel_core_metadata
from devpitx.replica.primary_client import PrimaryClient, PrimaryUnreachable
from devpitx.runtime import RunBlocking
from devpitx.storage.blobs import COPY_CHUNK_BYTES, BlobStore
from devpitx.storage.store import Store, link_digests

METADATA_SUFFIX = ".metadata"
# Bodies up to this size stay in memory until adopted; larger ones go to a file in tmp/.
SPILL_BYTES = 256 * 1024
_SKIPPED_HASHES = frozenset({"shake_128", "shake_256"})   # variable length: not comparable as text

log = Logger()


@dataclass(frozen=True)
class FileReplicationSettings:
    """The options of replication.md §8 that file replication follows."""

    threads: int = 5                              # --file-replication-threads
    skip_indexes: tuple[str, ...] = ()            # --file-replication-skip-indexes
    search_path: Path | None = None               # --replica-file-search-path
    hard_links: bool = False                      # --hard-links
    request_timeout: float = 5.0                  # --request-timeout

    @property
    def body_idle_seconds(self) -> float:
        """A download that receives nothing for this long is dropped."""
        return max(self.request_timeout * 6, 30.0)


@dataclass(frozen=True)
class WantedBlob:
    """One blob a file entry names: where the primary serves it and what it must hash to."""

    relpath: str                       # the file entry's relpath
    url_relpath: str                   # what to GET: the relpath, or relpath + ".metadata"
    sha256: str
    hashes: Mapping[str, str]          # every known digest, sha256 included
    size: int | None
    mirror: bool                       # belongs to a mirror index (404/502 are no errors)
    project: str | None = None         # for the export layout of the search path
    version: str | None = None
    wheel_sha256: str | None = None    # core metadata of this wheel blob: extractable from it
    core_metadata_sha256: str | None = None    # a wheel's: its METADATA, if it hashes to this


@dataclass(frozen=True)
class Outcome:
    """How obtaining one blob ended: ``stored``, ``absent`` (nothing to replicate) or ``failed``."""

    kind: str
    url: str
    message: str = ""

    @property
    def stored(self) -> bool:
        return self.kind == "stored"


def wanted_blobs(relpath: str, entry: Mapping[str, Any], index_type: str | None) -> list[WantedBlob]:
    """The blobs a live file entry with content names: the file and its core metadata."""
    content, metadata = link_digests(entry)
    mirror = index_type == "mirror"
    project, version = entry.get("project"), entry.get("version")
    is_wheel = relpath.lower().endswith(".whl")
    wanted = []
    if isinstance(content, str):
        hashes = {name: value.lower() for name, value in (entry.get("hashes") or {}).items()
                  if isinstance(name, str) and isinstance(value, str)}
        spec_name, _, spec_value = str(entry.get("hash_spec") or "").partition("=")
        if spec_name and spec_value:
            hashes.setdefault(spec_name, spec_value.lower())
        size = entry.get("+size")
        wanted.append(WantedBlob(relpath, relpath, content, hashes,
                                 size if isinstance(size, int) and not isinstance(size, bool) else None, mirror,
                                 project if isinstance(project, str) else None,
                                 version if isinstance(version, str) else None,
                                 core_metadata_sha256=metadata if is_wheel and isinstance(metadata, str) else None))
    if isinstance(metadata, str) and isinstance(content, str):
        wanted.append(WantedBlob(relpath, relpath + METADATA_SUFFIX, metadata, {"sha256": metadata.lower()},
                                 None, mirror,
                                 wheel_sha256=content if is_wheel else None))
    return wanted


class _Hashes:
    """Every digest a blob must match, computed chunk by chunk."""

    def __init__(self, names: Iterable[str]) -> None:
        self._hashers = {"sha256": hashlib.sha256()}
        for name in names:
            if name not in self._hashers and name not in _SKIPPED_HASHES and name in hashlib.algorithms_available:
                self._hashers[name] = hashlib.new(name)

    def update(self, data: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[str, str]:
        return {name: hasher.hexdigest() for name, hasher in self._hashers.items()}


def verification_problem(wanted: WantedBlob, size: int, digests: Mapping[str, str],
                         content_length: int | None = None) -> str | None:
    """Why content of ``size`` bytes with ``digests`` is not the blob ``wanted`` names, or None."""
    if content_length is not None and content_length != size:
        return f"expected {content_length} bytes (Content-Length), got {size}"
    if wanted.size is not None and wanted.size != size:
        return f"expected {wanted.size} bytes, got {size}"
    if digests.get("sha256") != wanted.sha256:
        return f"sha256 mismatch, expected {wanted.sha256}, got {digests.get('sha256')}"
    for name, expected in wanted.hashes.items():
        actual = digests.get(name)
        if actual is not None and actual != expected:
            return f"{name} mismatch, expected {expected}, got {actual}"
    return None


# -- blocking helpers (run_disk) -------------------------------------------------------------------
def hash_file(path: Path, names: Iterable[str]) -> tuple[int, dict[str, str]]:
    hashes = _Hashes(names)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK_BYTES):
            hashes.update(chunk)
            size += len(chunk)
    return size, hashes.digests()


def _safe_segment(value: str | None) -> bool:
    return bool(value) and "/" not in str(value) and "\x00" not in str(value) and value not in (".", "..")


def search_path_candidates(root: Path, wanted: WantedBlob) -> list[Path]:
    """§5.2 step 4: ``P/+files/<relpath>`` (or ``P/<relpath>``), then ``P/<user>/<index>/<project>/<version>/<basename>``."""
    files_root = root / "+files"
    candidates = [(files_root if files_root.is_dir() else root).joinpath(*wanted.url_relpath.split("/"))]
    parts = wanted.relpath.split("/")
    if wanted.url_relpath == wanted.relpath and len(parts) >= 3 and _safe_segment(wanted.project) \
            and _safe_segment(wanted.version):
        assert wanted.project is not None and wanted.version is not None
        candidates.append(root / parts[0] / parts[1] / wanted.project / wanted.version / parts[-1])
    return candidates


def stage_from_search_path(blobs: BlobStore, root: Path, wanted: WantedBlob, hard_link: bool) -> Path | None:
    """A verified private copy (or hard link) of ``wanted`` from the search path in tmp/, or None.

    The copy is hashed after it was made, so a file changing meanwhile cannot
    slip in unverified.
    """
    for candidate in search_path_candidates(root, wanted):
        if not candidate.is_file():
            continue
        staged = blobs.stage_external(candidate, hard_link=hard_link)
        size, digests = hash_file(staged, wanted.hashes)
        if verification_problem(wanted, size, digests) is None:
            return staged
        staged.unlink(missing_ok=True)
        log.warn("replica file search path: {path} does not match {relpath}", path=str(candidate),
                 relpath=wanted.url_relpath)
    return None


def core_metadata_of_wheel_content(content: bytes | Path, filename: str, sha256: str) -> bytes | None:
    """The METADATA bytes of a downloaded wheel (bytes, or a file), if they hash to ``sha256``."""
    try:
        data = wheel_core_metadata(io.BytesIO(content) if isinstance(content, bytes) else content, filename)
    except (ArchiveError, OSError):
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def core_metadata_from_wheel(blobs: BlobStore, wanted: WantedBlob) -> bytes | None:
    """The METADATA bytes of the stored wheel ``wanted`` belongs to, if they hash to ``wanted``; else None."""
    if wanted.wheel_sha256 is None or not blobs.has(wanted.wheel_sha256):
        return None
    return core_metadata_of_wheel_content(blobs.path_for(wanted.wheel_sha256), wanted.relpath.rsplit("/", 1)[-1],
                                          wanted.sha256)


def presence_of(blobs: BlobStore, checks: list[tuple[str, str | None, str | None]]) -> list[tuple[str, bool, list[str]]]:
    """For (relpath, content sha256, metadata sha256) items: (relpath, some blob missing,
    present blobs whose ``+files/`` link is missing, e.g. after a crash right after adopting)."""
    results = []
    for relpath, content, metadata in checks:
        missing = False
        unlinked = []
        for sha256, link in ((content, relpath), (metadata, relpath + METADATA_SUFFIX)):
            if sha256 is None:
                continue
            if not blobs.has(sha256):
                missing = True
                continue
            try:
                linked = os.path.samefile(blobs.relpath_path(link), blobs.path_for(sha256))
            except (FileNotFoundError, ValueError):
                linked = False
            if not linked:
                unlinked.append(sha256)
        results.append((relpath, missing, unlinked))
    return results


# -- the download ------------------------------------------------------------------------------------
class _BodySink(Protocol):
    """Takes a response body, hashing as it goes: in memory up to ``spill_bytes``, beyond that in a
    file in ``spill_dir``; drops the connection when idle. :meth:`discard` releases what it holds."""

    def __init__(self, spill_dir: Path, hashes: _Hashes, clock: IReactorTime, idle_seconds: float,
                 spill_bytes: int) -> None:
        self._spill_dir = spill_dir
        self._spill_bytes = spill_bytes
        self._chunks: list[bytes] = []
        self._fd = -1
        self._path: Path | None = None
        self._hashes = hashes
        self._clock = clock
        self._idle_seconds = idle_seconds
        self._idle: IDelayedCall | None = None
        self.size = 0
        self.problem: str | None = None
        self.done: Deferred[None] = Deferred(lambda _d: self._stop())

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._idle = self._clock.callLater(self._idle_seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timed_out(self) -> None:
        self._idle = None
        self.problem = f"no data for {self._idle_seconds:g} s"
        self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.problem is not None:
            return
        try:
            if self._fd < 0 and self.size + len(data) > self._spill_bytes:
                fd, name = tempfile.mkstemp(dir=self._spill_dir, prefix="replica-")
                self._fd, self._path = fd, Path(name)
                self._write_file(b"".join(self._chunks))
                self._chunks.clear()
            if self._fd >= 0:
                self._write_file(data)
            else:
                self._chunks.append(data)
        except OSError as exc:
            self.problem = f"cannot write the download: {exc}"
            self._stop()
            return
        self._hashes.update(data)
        self.size += len(data)
        self._arm()

    def _write_file(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._disarm()
        self._close_file()
        if self.done.called:
            return
        if self.problem is None and reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(Failure(OSError(self.problem or f"download broke off after {self.size} bytes: "
                                                                f"{reason.getErrorMessage()}")))

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def take_content(self) -> bytes | Path:
        """The whole body (after ``done``): bytes, or the file in ``spill_dir`` holding it, which
        the taker now owns."""
        if self._path is None:
            return b"".join(self._chunks)
        path, self._path = self._path, None
        return path

    def discard(self) -> None:
        self._close_file()
        self._chunks.clear()
        if self._path is not None:
            self._path.unlink(missing_ok=True)


# Another blob computed from a downloaded content: (its bytes, its sha256), or None.
Derived = Callable[[bytes | Path], tuple[bytes, str] | None]


def _derive_all(derivations: list[tuple[bytes | Path, Derived]]) -> list[tuple[bytes, str]]:
    """Blocking: every blob the derivations give."""
    return [blob for content, derive in derivations if (blob := derive(content)) is not None]


class _GroupAdopter:
    """Hands verified blobs to the store in groups: whatever finished while one adoption ran
    goes into the next, so a burst of small files costs one disk trip and one sync per group."""

    def __init__(self, store: Store, run_disk: RunBlocking) -> None:
        self._store = store
        self._run_disk = run_disk
        self._pending: list[tuple[bytes | Path, str, Deferred[None]]] = []
        self._derivations: list[tuple[bytes | Path, Derived]] = []
        self._running = False

    def adopt(self, content: bytes | Path, sha256: str, *, also: Derived | None = None) -> Deferred[None]:
        """Fires once ``content`` is blob ``sha256`` and linked (a file in tmp/ is consumed).

        ``also``: computes another blob from ``content`` (a wheel's core metadata) in the
        disk thread, once per group; stored in the same group when it gives one.
        """
        stored: Deferred[None] = Deferred()
        if also is not None:
            self._derivations.append((content, also))
        self._pending.append((content, sha256, stored))
        if not self._running:
            self._running = True
            Deferred.fromCoroutine(self._adopt_groups())
        return stored

    async def _adopt_groups(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                derivations, self._derivations = self._derivations, []
                try:
                    derived = await self._run_disk(_derive_all, derivations) if derivations else []
                    await self._store.adopt_replicated_blobs(
                        [*((content, sha256) for content, sha256, _ in group), *derived], self._run_disk)
                except Exception:
                    failure = Failure()
                    for _content, _sha256, stored in group:
                        if not stored.called:
                            stored.errback(failure)
                    continue
                for _content, _sha256, stored in group:
                    if not stored.called:     # cancelled by a caller that went away
                        stored.callback(None)
        finally:
            self._running = False


def _core_metadata_deriver(wanted: WantedBlob) -> Derived | None:
    """For a wheel whose entry names core metadata: take it from the wheel in the same disk trip
    and group as the wheel (no request, no second round); a mismatch is downloaded later."""
    metadata_sha256 = wanted.core_metadata_sha256
    if metadata_sha256 is None:
        return None
    filename = wanted.relpath.rsplit("/", 1)[-1]

    def derive(content: bytes | Path) -> tuple[bytes, str] | None:
        try:
            data = core_metadata_of_wheel_content(content, filename, metadata_sha256)
        except Exception:   # a shortcut only: whatever goes wrong, the metadata is downloaded instead
            log.failure("taking the core metadata from {filename} failed", filename=filename)
            return None
        return (data, metadata_sha256) if data is not None else None

    return derive


class BlobFetcher:
    """Fetches blobs for the replica's store, one fetch per blob at a time."""

    log = Logger()

    def __init__(self, store: Store, client: PrimaryClient, *, clock: IReactorTime, run_disk: RunBlocking,
                 settings: FileReplicationSettings) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._run_disk = run_disk
        self._settings = settings
        self._in_flight: dict[str, Deferred[Outcome]] = {}   # sha256 -> its running fetch
        self._waiting: dict[str, list[Deferred[Outcome]]] = {}
        self._tasks: set[Deferred[Any]] = set()
        self._adopter = _GroupAdopter(store, run_disk)
        self.stored_files = 0        # downloaded from the primary since the start
        self.stored_bytes = 0
        # A slot is held from the request until the body is verified, not while it is adopted.
        self._download_slots = DeferredSemaphore(max(1, settings.threads))

    def stop(self) -> Deferred[Any]:
        """Abandon every running fetch; fires once they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return DeferredList(tasks, consumeErrors=True)

    def obtain(self, wanted: WantedBlob, *, follow_redirects: bool) -> Deferred[Outcome]:
        """One download per blob at a time, whoever asks; each caller gets its own Deferred."""
        waiter: Deferred[Outcome] = Deferred(lambda d: self._stop_waiting(wanted.sha256, d))
        self._waiting.setdefault(wanted.sha256, []).append(waiter)
        if wanted.sha256 not in self._in_flight:
            task = Deferred.fromCoroutine(self._fetch(wanted, follow_redirects))
            self._in_flight[wanted.sha256] = task
            task.addBoth(self._fetched, wanted.sha256)
            self._track(task)
        return waiter

    def _stop_waiting(self, sha256: str, waiter: Deferred[Outcome]) -> None:
        # A cancelled caller (a client that went away); the download goes on for the others.
        waiters = self._waiting.get(sha256, [])
        if waiter in waiters:
            waiters.remove(waiter)

    def _fetched(self, result: Outcome | Failure, sha256: str) -> None:
        self._in_flight.pop(sha256, None)
        waiters = self._waiting.pop(sha256, [])
        if isinstance(result, Failure):
            if not result.check(CancelledError):
                self.log.failure("fetching blob {sha256} failed", result, sha256=sha256)
            result = Outcome("failed", "", f"internal error: {result.getErrorMessage()}")
        for waiter in waiters:
            waiter.callback(result)

    async def _fetch(self, wanted: WantedBlob, follow_redirects: bool) -> Outcome:
        if wanted.wheel_sha256 is not None:
            metadata = await self._run_disk(core_metadata_from_wheel, self._store.blobs, wanted)
            if metadata is not None:
                await self._adopter.adopt(metadata, wanted.sha256)
                return Outcome("stored", "the wheel")
        if self._settings.search_path is not None:
            staged = await self._run_disk(stage_from_search_path, self._store.blobs, self._settings.search_path,
                                          wanted, self._settings.hard_links)
            if staged is not None:
                await self._adopter.adopt(staged, wanted.sha256)     # consumes the file, even when it fails
                self.log.info("replicated {relpath} from the file search path", relpath=wanted.url_relpath)
                return Outcome("stored", str(self._settings.search_path))
        return await self._download(wanted, follow_redirects)

    async def _download(self, wanted: WantedBlob, follow_redirects: bool) -> Outcome:
        url = self._client.file_url(wanted.url_relpath)
        await self._download_slots.acquire()
        try:
            received = await self._receive(wanted, url, follow_redirects)
        finally:
            self._download_slots.release()
        if isinstance(received, Outcome):
            return received
        body, size = received
        try:
            await self._adopter.adopt(body.take_content(), wanted.sha256, also=_core_metadata_deriver(wanted))
        finally:
            body.discard()
        # No event per file, not even at debug level (it costs as much as the hashing):
        # a catch-up stores thousands; FileReplicator logs the totals.
        self.stored_files += 1
        self.stored_bytes += size
        return Outcome("stored", url)

    async def _receive(self, wanted: WantedBlob, url: str, follow_redirects: bool) -> Outcome | tuple[_BodySink, int]:
        """GET ``wanted`` and verify it: the verified body and its size, or how it failed."""
        try:
            response = await self._client.open_file(wanted.url_relpath, timeout=self._settings.request_timeout,
                                                    follow_redirects=follow_redirects)
        except PrimaryUnreachable as exc:
            return Outcome("failed", url, exc.message)
        if response.code != 200:
            discard_body(response)
            if response.code in (302, 410):
                return Outcome("absent", url, f"{url}: received {response.code} from primary")
            if response.code in (404, 502) and wanted.mirror:
                self.log.warn("file replication: {url} answered {code} (mirror file)", url=url, code=response.code)
                return Outcome("absent", url, f"{url}: received {response.code} from primary")
            return Outcome("failed", url, f"{url}: received {response.code} from primary")
        hashes = _Hashes(wanted.hashes)
        body = _BodySink(self._store.blobs.tmp_dir, hashes, self._clock, self._settings.body_idle_seconds,
                         SPILL_BYTES)
        verified = False
        try:
            response.deliverBody(body)
            try:
                await body.done
            except CancelledError:
                raise
            except Exception as exc:
                return Outcome("failed", url, f"{url}: {describe_error(exc)}")
            length = response.length if isinstance(response.length, int) else None   # not UNKNOWN_LENGTH
            problem = verification_problem(wanted, body.size, hashes.digests(), length)
            if problem:
                return Outcome("failed", url, f"{url}: {problem}")
            verified = True
            return body, body.size
        finally:
            if not verified:
                body.discard()

    def _track(self, task: Deferred[Any]) -> None:
        self._tasks.add(task)
        task.addBoth(self._untrack, task)

    def _untrack(self, result: Any, task: Deferred[Any]) -> Any:
        self._tasks.discard(task)
        return result

"""One upstream download of a mirror file, streamed to every waiting client while it is cached (mirror.md §5).

One :class:`Download` per relpath at a time, whatever the number of clients
asking (``files.MirrorFiles`` keeps them by relpath): it reads the upstream body, appends each
chunk to a file in ``tmp/`` and feeds the hashes (the link's algorithm and
sha256). Every client is a :class:`Follower` that sends the file from that
temporary file to its own connection, so a client arriving late starts from
byte 0, a slow client only slows itself, and a client that goes away stops
nothing but its own response. The download finishes (and is cached) even if
every client left.

Why this is cheap enough for the reactor thread: each upstream chunk is at
most one socket read (64 KiB in Twisted), and the per-chunk work is one
``os.write`` into the page cache plus hash updates over those bytes; a
follower sends at most 64 KiB per ``os.pread`` of data just written (still
in the page cache), and stops as soon as its transport pauses it. Nothing
per chunk depends on the file size. The expensive steps, fsync and linking
into the blob store, run through ``run_disk``.

Integrity: followers never send the last byte before the whole body arrived
and matched the expected length and hash. On a mismatch or a dropped
upstream connection each client's connection is dropped (the response is
visibly incomplete), the temporary file is removed and nothing is recorded.
Only a verified file is adopted into the blob store and committed like an
upload (file entry with ``last_modified`` and all hashes, one serial).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as BodyProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss, Request
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from devpitx.mirror.upstream import (
    MirrorSettings, MirrorUrl, Upstream, UpstreamError, describe_error, discard_body, first_header,
)
from devpitx.model.indexes import Stage
from devpitx.model.projects import get_file_entry, http_date
from devpitx.runtime import RunBlocking
from devpitx.storage.keys import file_key
from devpitx.storage.store import Store

log = Logger()

CHUNK_BYTES = 64 * 1024
_OCTET_STREAM = "application/octet-stream"


class FileUnavailable(Exception):
    """The file cannot be served: ``code`` and ``message`` are the HTTP answer (mirror.md §5.1)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DownloadHost(Protocol):
    """What a download needs from its owner (``files.MirrorFiles``)."""

    store: Store
    upstream: Upstream
    clock: IReactorTime
    run_disk: RunBlocking
    settings: MirrorSettings

    def forget(self, download: Download) -> None: ...


def mirror_url_of(stage: Stage) -> MirrorUrl:
    return MirrorUrl.parse(str(stage.config.get("mirror_url", "")))


@dataclass(frozen=True)
class UpstreamHead:
    """What clients are told before the body: taken from the upstream response."""

    content_type: str
    length: int | None
    last_modified: str | None


class _Hashes:
    def __init__(self, expected_type: str | None) -> None:
        self.sha256 = hashlib.sha256()
        self.other = (hashlib.new(expected_type) if expected_type and expected_type != "sha256"
                      and expected_type in hashlib.algorithms_available else None)

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.other is not None:
            self.other.update(data)

    def digests(self) -> dict[str, str]:
        found = {"sha256": self.sha256.hexdigest()}
        if self.other is not None:
            found[self.other.name] = self.other.hexdigest()
        return found


class Download:
    """One upstream download of one file: body -> tmp file + hashes, then verify and commit."""

    def __init__(self, files: DownloadHost, stage: Stage, relpath: str, entry: Mapping[str, Any]) -> None:
        self._files = files
        self.stage = stage
        self.relpath = relpath
        self.entry = dict(entry)
        self.url = str(entry.get("url") or "")
        hash_spec = str(entry.get("hash_spec") or "")
        self._expected_type, _, self._expected_value = hash_spec.partition("=")
        self._hashes = _Hashes(self._expected_type or None)
        self.head: UpstreamHead | None = None
        self._head_waiters: list[Deferred[UpstreamHead]] = []
        self._head_failure: FileUnavailable | None = None
        self.fd: int | None = None
        self.tmp_path: Path | None = None
        self.written = 0
        self.finished = False          # body complete and verified
        self.failed = False
        self.over = False              # failed or committed: no longer joinable
        self.problem = ""
        self._write_error = ""
        self.followers: set[Follower] = set()
        self._idle: IDelayedCall | None = None
        self._transport: Any = None
        self._over_waiters: list[Deferred[None]] = []

    # -- headers ------------------------------------------------------------------------------
    def wait_head(self, timeout: float) -> Deferred[UpstreamHead]:
        if self.head is not None:
            return succeed(self.head)
        if self._head_failure is not None:
            return fail(self._head_failure)
        d: Deferred[UpstreamHead] = Deferred(lambda cancelled: self._head_waiters.remove(cancelled))
        self._head_waiters.append(d)
        d.addTimeout(timeout, self._files.clock)
        return d

    def _head_known(self, head: UpstreamHead | None, failure: FileUnavailable | None = None) -> None:
        self.head, self._head_failure = head, failure
        waiters, self._head_waiters = self._head_waiters, []
        for waiter in waiters:
            if failure is not None:
                waiter.errback(failure)
            else:
                waiter.callback(cast(UpstreamHead, head))

    # -- the download -------------------------------------------------------------------------
    async def run(self) -> None:
        """The whole life of the download; reports through followers and :meth:`wait_over`."""
        try:
            await self._run()
        except Exception:
            # A bug or a local I/O error (tmp/ full...): nobody may wait forever on this download.
            log.failure("mirror download of {relpath} failed", relpath=self.relpath)
            if self.head is None and not self.over:
                self._fail_head(FileUnavailable(502, f"error getting {self.url}"))
            elif not self.over:
                self._fail(f"error while downloading {self.url}")

    async def _run(self) -> None:
        upstream = self._files.upstream
        try:
            response = await upstream.open_file(self.url, mirror_url_of(self.stage),
                                                timeout=self._files.settings.background_timeout)
        except UpstreamError as exc:
            log.warn("mirror download failed: {error}", error=exc.message)
            code = 504 if exc.timed_out else 502
            self._fail_head(FileUnavailable(code, exc.message))
            return
        if response.code != 200:
            # Read nothing more of it; the connection is not worth keeping.
            discard_body(response)
            log.warn("mirror download: upstream answered {code} for {url}", code=response.code, url=self.url)
            self._fail_head(FileUnavailable(404 if response.code == 404 else 502,
                                            f"error {response.code} getting {self.url}"))
            return
        length = response.length if response.length is not UNKNOWN_LENGTH else None
        fd, name = tempfile.mkstemp(dir=self._files.store.blobs.tmp_dir, prefix="mirror-")
        self.fd, self.tmp_path = fd, Path(name)
        self._head_known(UpstreamHead(
            content_type=first_header(response, b"content-type") or _OCTET_STREAM,
            length=length if isinstance(length, int) else None,
            last_modified=first_header(response, b"last-modified"),
        ))
        done: Deferred[None] = Deferred()
        response.deliverBody(_BodyToFile(self, done))
        self._touch()
        try:
            await done
        except Exception as exc:
            self._fail(self._write_error or
                       f"download of {self.url} broke off after {self.written} bytes: {describe_error(exc)}")
            return
        finally:
            self._stop_idle()
        problem = self._write_error or self._verify()
        if problem:
            self._fail(problem)
            return
        self.finished = True
        self._feed_followers()
        await self._commit()

    def _fail_head(self, failure: FileUnavailable) -> None:
        self.failed = True
        self._files.forget(self)
        self._head_known(None, failure)
        self._release()

    def _touch(self) -> None:
        """(Re)arm the idle timer: an upstream that stops sending mid-body is dropped."""
        self._stop_idle()
        self._idle = self._files.clock.callLater(self._files.settings.background_timeout, self._on_idle)

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        if self._transport is not None:
            self._transport.stopProducing()

    def received(self, data: bytes) -> None:
        if self.fd is None or self._write_error:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            # Disk full or similar: stop reading; connectionLost then fails the download.
            self._write_error = f"cannot write {self.tmp_path}: {exc}"
            if self._transport is not None:
                self._transport.stopProducing()
            return
        self._hashes.update(data)
        self.written += len(data)
        self._touch()
        self._feed_followers()

    def _feed_followers(self) -> None:
        for follower in list(self.followers):
            try:
                follower.pump()
            except Exception:
                # One client's trouble must not end the download for the others.
                log.failure("sending {relpath} to a client failed", relpath=self.relpath)
                follower.abort()

    def _verify(self) -> str | None:
        assert self.head is not None
        if self.head.length is not None and self.head.length != self.written:
            return f"{self.url}: expected {self.head.length} bytes, got {self.written}"
        digests = self._hashes.digests()
        if self._expected_type and self._expected_value:
            actual = digests.get(self._expected_type)
            if actual is not None and actual != self._expected_value.lower():
                return (f"{self.url}: {self._expected_type} mismatch, expected {self._expected_value}, "
                        f"got {actual}")
        return None

    def _fail(self, problem: str) -> None:
        log.error("mirror download of {relpath} discarded: {problem}", relpath=self.relpath, problem=problem)
        self.failed = True
        self.problem = problem
        self._files.forget(self)
        for follower in list(self.followers):
            follower.abort()
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)
        self._release()

    async def _commit(self) -> None:
        digests = self._hashes.digests()
        sha256 = digests["sha256"]
        files = self._files
        assert self.tmp_path is not None and self.head is not None
        try:
            await files.run_disk(files.store.blobs.adopt, self.tmp_path, sha256)
            current = get_file_entry(files.store, self.relpath)
            if current and current.get("last_modified") and (current.get("hashes") or {}).get("sha256") == sha256:
                # Downloaded before and only lost from disk: put it back, no new serial (§5.1 step 6).
                await files.run_disk(files.store.blobs.link_relpath, self.relpath, sha256)
            else:
                self._record(current, digests)
        except Exception:
            log.failure("storing the mirror download of {relpath} failed", relpath=self.relpath)
        finally:
            files.forget(self)
            self._release()

    def _record(self, current: Mapping[str, Any] | None, digests: Mapping[str, str]) -> None:
        files = self._files
        assert self.head is not None
        with files.store.write() as tx:
            entry = dict(current) if current else dict(self.entry)
            hashes = dict(entry.get("hashes") or {})
            hashes.update(digests)
            entry["hashes"] = hashes
            if not entry.get("hash_spec"):
                entry["hash_spec"] = f"sha256={digests['sha256']}"
            entry["last_modified"] = self.head.last_modified or http_date(tx.at)
            entry["+size"] = self.written
            entry.setdefault("+rel", "releasefile")
            tx.set(file_key(self.relpath), entry)
            tx.add_blob(digests["sha256"])
        log.info("cached {relpath} ({size} bytes) from upstream", relpath=self.relpath, size=self.written)

    def _release(self) -> None:
        """The download is over: close the shared descriptor once no follower reads from it."""
        self.over = True
        self._maybe_close()
        waiters, self._over_waiters = self._over_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def wait_over(self) -> Deferred[None]:
        """Fires when the download failed or its file is stored (cancelling affects only the caller)."""
        if self.over:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda cancelled: self._over_waiters.remove(cancelled))
        self._over_waiters.append(d)
        return d

    def _maybe_close(self) -> None:
        if self.over and not self.followers and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def follower_left(self, follower: Follower) -> None:
        self.followers.discard(follower)
        self._maybe_close()


class _BodyToFile(BodyProtocol):
    def __init__(self, download: Download, done: Deferred[None]) -> None:
        self._download = download
        self._done = done

    def connectionMade(self) -> None:
        self._download._transport = self.transport

    def dataReceived(self, data: bytes) -> None:
        self._download.received(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._download._transport = None
        if reason.check(ResponseDone) or (reason.check(PotentialDataLoss)
                                          and self._download.head is not None
                                          and self._download.head.length is None):
            self._done.callback(None)
        else:
            self._done.errback(reason)


@implementer(IPushProducer)
class Follower:
    """Sends one client the file as it arrives, from the download's temporary file."""

    def __init__(self, download: Download, request: Request) -> None:
        self._download = download
        self._request = request
        self._offset = 0
        self._paused = False
        self._closed = False
        self.done: Deferred[None] = Deferred(lambda _d: self._leave())

    def start(self) -> Deferred[None]:
        self._download.followers.add(self)
        self._request.registerProducer(self, True)
        self.pump()
        return self.done

    def _limit(self) -> int:
        # Hold back the last byte until the body is verified: a complete response must
        # never carry wrong content.
        download = self._download
        return download.written if download.finished else max(0, download.written - 1)

    def pump(self) -> None:
        download = self._download
        if getattr(self._request, "_disconnected", False):
            self._leave()                  # the client is gone; Klein cancels the handler too
            return
        while not self._closed and not self._paused:
            limit = self._limit()
            if self._offset >= limit:
                break
            assert download.fd is not None
            data = os.pread(download.fd, min(CHUNK_BYTES, limit - self._offset), self._offset)
            if not data:
                break
            self._offset += len(data)
            self._request.write(data)      # may call pauseProducing before returning
        if not self._closed and download.finished and self._offset >= download.written:
            self._close()
            self.done.callback(None)

    def abort(self) -> None:
        """The download failed: drop the connection so the client sees an incomplete response."""
        if self._closed:
            return
        self._close()
        if self._request.channel is not None:
            self._request.loseConnection()

    def _close(self) -> None:
        self._closed = True
        if self._request.channel is not None:      # None once the client connection is gone
            self._request.unregisterProducer()
        self._download.follower_left(self)

    def _leave(self) -> None:
        if not self._closed:
            self._close()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self.pump()

    def stopProducing(self) -> None:
        self._leave()

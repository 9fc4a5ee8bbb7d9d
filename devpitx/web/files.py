"""The file area (http-api.md §3.14 GET/HEAD): release files, doczips, toxresults and core metadata.

``/U/I/+f/<relpath>`` and ``/U/I/+e/<relpath>`` resolve to a file entry
(model/projects.py); its content is a blob streamed with a pull producer,
never read into memory. Besides devpi-server's headers (Content-Length,
Last-Modified, immutable Cache-Control) we send ``ETag: "<sha256>"``, answer
``If-None-Match``/``If-Modified-Since`` with 304 and serve single byte
ranges (206/416), which lazy-wheel readers use.

``<relpath>.metadata`` is not an entry: it is the PEP 658 core metadata of
the wheel at ``<relpath>``, extracted at upload time and stored as a blob
named in the entry's ``+core_metadata``.

Mirror files whose content is not here yet (http-api.md §3.14 steps 4-6):
their entry comes from the mirror's link record until the first download;
``mirror_use_external_urls`` answers 302 to upstream, otherwise
``server.mirrors.files`` streams the file from upstream while caching it.
A mirror's ``.metadata`` file is fetched from upstream on first request when
upstream advertised one.

Only GET and HEAD live here; other methods answer 404 until their handlers exist.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ISystemHandle
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, Request
from twisted.web.iweb import IRequest
from zope.interface import implementer

from devpitx.auth.acl import ANONYMOUS
from devpitx.mirror.files import FileUnavailable, UpstreamHead
from devpitx.model.indexes import Stage, get_stage, not_found_message
from devpitx.model.projects import get_file_entry, parse_http_date, public_entry
from devpitx.web.errors import ApiError, FrameworkError, NegotiatedError
from devpitx.web.negotiate import header, json_preferred
from devpitx.web.routes import Router
from devpitx.web.simplepages import etag_matches

if TYPE_CHECKING:
    from devpitx.server import Server

log = Logger()

# 256 KiB per write: a 50 MB download went from ~800 to ~1,300 MiB/s against 64 KiB (fewer reactor
# turns per byte); 1 MiB was no faster and holds more per connection.
CHUNK_BYTES = 256 * 1024
# At most this much goes out with sendfile(2) before the connection waits its turn again.
ZERO_COPY_TURN_BYTES = 4 * 1024 * 1024
CACHE_CONTROL = b"max-age=365000000, immutable, public"
METADATA_SUFFIX = ".metadata"
_NO_SUCH_FILE = "no such file"
_CONTENT_TYPES = (
    (".tar.gz", b"application/x-tar"),
    (".tgz", b"application/x-tar"),
    (".tar.bz2", b"application/x-tar"),
    (".zip", b"application/zip"),
)
_OCTET_STREAM = b"application/octet-stream"


def content_type_for(basename: str, rel: str | None = None) -> bytes:
    """By extension; never with an encoding, so clients store archives as they are."""
    if rel == "toxresult" or ".toxresult" in basename:
        return b"application/json"
    lowered = basename.lower()
    for suffix, content_type in _CONTENT_TYPES:
        if lowered.endswith(suffix):
            return content_type
    return _OCTET_STREAM


# -- ranges ------------------------------------------------------------------------------------
class RangeNotSatisfiable(Exception):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int        # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(value: str, size: int) -> ByteRange | None:
    """One ``bytes=`` range of a file of ``size`` bytes.

    None means "ignore the header and send everything": malformed values and
    multiple ranges (RFC 9110 allows ignoring Range). Ranges starting at or
    past the end raise :class:`RangeNotSatisfiable`.
    """
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable()
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def _if_range_allows(request: IRequest, etag: bytes, last_modified: str | None) -> bool:
    """``If-Range``: honour Range only for the representation the client already has part of."""
    value = header(request, b"if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value.encode("latin-1") == etag     # strong comparison: weak tags never match
    if value.startswith("W/"):
        return False
    return last_modified is not None and parse_http_date(value) == parse_http_date(last_modified)


def _not_modified(request: IRequest, etag: bytes, last_modified: str | None) -> bool:
    if request.getHeader(b"if-none-match") is not None:
        return etag_matches(request, etag)     # If-Modified-Since is ignored when both are sent
    since = header(request, b"if-modified-since")
    if since is None or last_modified is None:
        return False
    since_at = parse_http_date(since)
    modified_at = parse_http_date(last_modified)
    return since_at is not None and modified_at is not None and modified_at <= since_at


# -- streaming ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirectSocket:
    """Where file bytes may go with sendfile(2), and how many bytes make its transport pause."""

    socket: socket.socket
    pausing_bytes: int


def plain_tcp_socket(request: IRequest) -> DirectSocket | None:
    """The connection's socket when file bytes may go to it directly (HTTP/1.x on plain TCP)."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if not isinstance(channel, HTTPChannel) or transport is None or ISSLTransport.providedBy(transport) \
            or not ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()
    buffer_size = getattr(transport, "bufferSize", None)
    if isinstance(handle, socket.socket) and handle.type == socket.SOCK_STREAM and isinstance(buffer_size, int):
        return DirectSocket(handle, buffer_size + 1)
    return None


@implementer(IPushProducer)
class BlobProducer:
    """Writes ``length`` bytes of an open file from ``start`` while the transport takes them.

    A push producer: it writes chunks until the transport's buffer is full
    (the transport calls :meth:`pauseProducing` from inside ``write``) and
    continues when the buffer has drained. A pull producer would go through
    twisted.web's cooperator, one extra reactor turn per chunk.

    Given the connection's socket (plain TCP), every time the transport has
    drained its buffer the file goes to the socket with ``sendfile(2)``,
    without copying it through Python, until the socket's buffer is full or
    ``ZERO_COPY_TURN_BYTES`` went out; then an ordinary write just large
    enough to make the transport pause us waits for the socket to take more
    (and lets other connections have their turn). Direct sends happen only while the transport holds no
    bytes, so nothing overtakes what it buffered (the headers above all).

    :meth:`start` returns a Deferred that fires when everything was written;
    cancelling it (the client went away) closes the file. The request is
    finished by whoever awaits the Deferred, not here.
    """

    def __init__(self, request: Request, file: IO[bytes], start: int, length: int,
                 direct_to: DirectSocket | None = None) -> None:
        self._request = request
        self._file: IO[bytes] | None = file
        self._offset = start
        self._remaining = length
        self._socket = direct_to
        self._paused = False
        self._producing = False
        self._transport_empty = False     # the headers are not even written yet
        self._done: Deferred[None] = Deferred(lambda _d: self._close())

    def start(self) -> Deferred[None]:
        assert self._file is not None
        self._request.registerProducer(self, True)
        self._produce()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        # The transport resumes its producer when its buffer has drained, and only then.
        self._paused = False
        self._transport_empty = True
        self._produce()

    def stopProducing(self) -> None:
        self._close()

    def _produce(self) -> None:
        if self._producing:
            return      # resumed from inside our own write(): the running loop carries on
        self._producing = True
        try:
            while not self._paused and self._file is not None:
                chunk = CHUNK_BYTES
                if self._socket is not None and self._transport_empty and self._remaining:
                    self._send_directly(self._file.fileno(), self._socket.socket.fileno())
                    if not self._remaining:
                        self._finish()
                        return
                    if self._socket is not None:
                        chunk = self._socket.pausing_bytes
                data = os.pread(self._file.fileno(), min(chunk, self._remaining), self._offset) \
                    if self._remaining else b""
                if data:
                    self._offset += len(data)
                    self._remaining -= len(data)
                    self._transport_empty = False
                    # write() pauses us (synchronously) once the transport's buffer is full.
                    self._request.write(data)
                if self._file is not None and (not self._remaining or not data):
                    self._finish()
        finally:
            self._producing = False

    def _send_directly(self, file_fd: int, socket_fd: int) -> None:
        budget = ZERO_COPY_TURN_BYTES
        while self._remaining and budget > 0:
            try:
                sent = os.sendfile(socket_fd, file_fd, self._offset, min(self._remaining, budget))
            except BlockingIOError:
                return
            except OSError:
                # The client went away (or sendfile cannot serve this file): ordinary writes
                # carry on, and the transport notices a lost connection by itself.
                self._socket = None
                return
            if sent == 0:
                return      # the blob is shorter than promised: the ordinary read finds out
            self._offset += sent
            self._remaining -= sent
            budget -= sent

    def _finish(self) -> None:
        self._request.unregisterProducer()
        self._close()
        if self._remaining:
            # The blob is shorter than its Content-Length promised: never complete such a
            # response; dropping the connection tells the client the body is incomplete.
            log.error("blob ended {missing} bytes early while serving {uri}",
                      missing=self._remaining, uri=self._request.uri)
            self._request.loseConnection()
            return
        self._done.callback(None)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- the area ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    """What a file URL serves: a blob and how to describe it."""

    sha256: str
    last_modified: str | None
    content_type: bytes


@dataclass(frozen=True)
class _FromUpstream:
    """A mirror file (or its ``.metadata``) whose content is not here: upstream has it."""

    stage: Stage
    relpath: str                 # the release file's relpath, also for its metadata
    entry: dict[str, Any]
    metadata: bool = False


class Routes:
    def __init__(self, server: Server) -> None:
        self._store = server.store
        self._identity = server.identity
        self._mirror_files = server.mirrors.files
        # On a replica: files whose entry arrived before their content come from the primary.
        self._replica = server.replica
        self._primary_url = server.node.primary_url if server.replica is not None else None

    def install(self, router: Router) -> None:
        router.add("files.file", self.file)

    def file(self, request: IRequest, user: str, index: str, relpath: str, kind: str) -> Any:
        if request.method in (b"GET", b"HEAD"):
            return self.serve(request, user, index, relpath, kind)
        raise FrameworkError(404, "The requested resource could not be found.")

    def _entry(self, stage: Stage | None, relpath: str) -> dict[str, Any] | None:
        if stage is not None and stage.is_mirror:
            return self._mirror_files.entry(stage, relpath)     # also files never downloaded
        return get_file_entry(self._store, relpath)

    def _target(self, request: IRequest, user: str, index: str, relpath: str,
                kind: str) -> _Target | _FromUpstream | bytes:
        """The blob to serve, or the JSON body of the ``releasefilemeta`` answer (steps 1-3)."""
        stage = get_stage(self._store, user, index)
        entry = self._entry(stage, relpath)
        if entry is None and relpath.endswith(METADATA_SUFFIX):
            wheel_relpath = relpath[:-len(METADATA_SUFFIX)]
            wheel = self._entry(stage, wheel_relpath) or {}
            core = wheel.get("+core_metadata")
            if isinstance(core, dict) and isinstance(core.get("sha256"), str):
                self._require_stage(user, index)
                return _Target(core["sha256"], wheel.get("last_modified"), b"text/plain; charset=utf-8")
            if stage is not None and stage.is_mirror and wheel.get("+upstream_core_metadata"):
                return _FromUpstream(stage, wheel_relpath, wheel, metadata=True)
        if entry is None:
            raise NegotiatedError(404, _NO_SUCH_FILE)
        if not entry:
            if kind == "+f":
                raise NegotiatedError(410, "file existed, deleted in later serial")
            raise NegotiatedError(404, _NO_SUCH_FILE)
        if json_preferred(request):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"type": "releasefilemeta", "result": public_entry(entry)}, indent=2).encode()
        self._require_stage(user, index)
        sha256 = (entry.get("hashes") or {}).get("sha256")
        if stage is not None and stage.is_mirror and entry.get("url") and (
                not isinstance(sha256, str) or not entry.get("last_modified") or not self._store.blobs.has(sha256)):
            # Never downloaded, or removed from disk since: upstream has it (step 4).
            return _FromUpstream(stage, relpath, entry)
        if not isinstance(sha256, str) or not entry.get("last_modified"):
            # Known but without local content (a private file whose blob is missing).
            raise NegotiatedError(404, _NO_SUCH_FILE)
        return _Target(sha256, entry["last_modified"],
                       content_type_for(relpath.rsplit("/", 1)[-1], entry.get("+rel")))

    def _require_stage(self, user: str, index: str) -> None:
        if get_stage(self._store, user, index) is None:
            raise NegotiatedError(404, not_found_message(user, index))

    def _open(self, sha256: str) -> IO[bytes]:
        try:
            return open(self._store.blobs.path_for(sha256), "rb")
        except (FileNotFoundError, ValueError):
            raise NegotiatedError(404, _NO_SUCH_FILE) from None

    async def _check_read(self, request: IRequest, user: str, index: str) -> bool:
        """pkg_read (step 5); True if checking it had to wait (identity lookup)."""
        stage = get_stage(self._store, user, index)
        config = stage.config if stage is not None else None
        # Everyone may read today: skip identifying the caller (a password check) when
        # even an anonymous one would pass.
        if self._identity.permitted("pkg_read", ANONYMOUS, url_user=user, index_config=config):
            return False
        await self._identity.require(request, "pkg_read", url_user=user, index_config=config,
                                     denied=NegotiatedError(403, "package read forbidden"))
        return True

    async def serve(self, request: IRequest, user: str, index: str, relpath: str, kind: str,
                    *, upstream_tried: bool = False) -> bytes | None:
        target = self._target(request, user, index, relpath, kind)
        if isinstance(target, bytes):
            return target
        if isinstance(target, _FromUpstream):
            if upstream_tried:
                # Fetched and stored, yet not servable: nothing sensible left to try.
                raise NegotiatedError(404, _NO_SUCH_FILE)
            if self._replica is not None:
                return await self._from_primary(request, user, index, relpath, kind, target)
            return await self._from_upstream(request, user, index, relpath, kind, target)
        if self._replica is not None and not self._store.blobs.has(target.sha256) and not upstream_tried:
            await self._check_read(request, user, index)
            await self._fetch_from_primary(relpath)
            return await self.serve(request, user, index, relpath, kind, upstream_tried=True)
        blob = self._open(target.sha256)            # step 4 before step 5: 404 beats 403
        try:
            if await self._check_read(request, user, index):
                blob.close()
                retarget = self._target(request, user, index, relpath, kind)   # the world may have moved
                if not isinstance(retarget, _Target):
                    return await self.serve(request, user, index, relpath, kind, upstream_tried=upstream_tried)
                target = retarget
                blob = self._open(target.sha256)
            await self._send(request, target, blob)
        finally:
            blob.close()
        return None

    async def _fetch_from_primary(self, relpath: str) -> None:
        """A replica's on-demand fetch (replication.md §5.3): the file is stored, then served."""
        from devpitx.replica.filerepl import FileFetchFailed
        assert self._replica is not None
        try:
            await self._replica.fetch_now(relpath)
        except FileFetchFailed as exc:
            raise ApiError(exc.code, exc.message) from None

    async def _from_primary(self, request: IRequest, user: str, index: str, relpath: str, kind: str,
                            target: _FromUpstream) -> bytes | None:
        """A mirror file on a replica: fetched from the primary if the primary stored it, else the
        client is sent to the primary, which fetches it from upstream (a replica never does)."""
        entry = target.entry
        core = entry.get("+core_metadata")
        stored_on_primary = (isinstance(core, dict) and bool(core.get("sha256"))) if target.metadata else bool(
            (entry.get("hashes") or {}).get("sha256") and entry.get("last_modified"))
        if stored_on_primary:
            await self._check_read(request, user, index)
            await self._fetch_from_primary(relpath)
            return await self.serve(request, user, index, relpath, kind, upstream_tried=True)
        await self._check_read(request, user, index)
        assert self._primary_url is not None
        request.setResponseCode(302)
        request.setHeader(b"location", f"{self._primary_url}/{relpath}".encode("latin-1", "replace"))
        return b""

    async def _from_upstream(self, request: IRequest, user: str, index: str, relpath: str, kind: str,
                             target: _FromUpstream) -> bytes | None:
        """Steps 4-6 for a mirror file without local content."""
        if target.metadata:
            await self._check_read(request, user, index)
            try:
                await self._mirror_files.fetch_metadata(target.stage, target.relpath, target.entry)
            except FileUnavailable as exc:
                raise _file_error(exc) from None
            return await self.serve(request, user, index, relpath, kind, upstream_tried=True)
        if target.stage.config.get("mirror_use_external_urls"):
            # Credentials of mirror_url are not re-inserted: a Location header would hand them
            # to every client (mirror.md §5.3, "improve on").
            request.setResponseCode(302)
            request.setHeader(b"location", str(target.entry["url"]).encode("latin-1", "replace"))
            return b""
        await self._check_read(request, user, index)

        def set_headers(head: UpstreamHead) -> None:
            request.setHeader(b"content-type", head.content_type.encode("latin-1", "replace"))
            if head.length is not None:
                request.setHeader(b"content-length", str(head.length).encode())
            if head.last_modified:
                request.setHeader(b"last-modified", head.last_modified.encode("latin-1", "replace"))
            request.setHeader(b"x-accel-buffering", b"no")

        try:
            streamed = await self._mirror_files.serve(request, target.stage, relpath, target.entry, set_headers)
        except FileUnavailable as exc:
            raise _file_error(exc) from None
        if not streamed:
            # The download finished while we waited for it: the file is in the store now.
            return await self.serve(request, user, index, relpath, kind, upstream_tried=True)
        return None

    async def _send(self, request: IRequest, target: _Target, blob: IO[bytes]) -> None:
        size = os.fstat(blob.fileno()).st_size
        etag = f'"{target.sha256}"'.encode()
        byte_range: ByteRange | None = None
        range_header = header(request, b"range")
        if range_header is not None and _if_range_allows(request, etag, target.last_modified):
            try:
                byte_range = parse_range(range_header, size)
            except RangeNotSatisfiable:
                raise NegotiatedError(416, "requested range not satisfiable",
                                      headers={"Content-Range": f"bytes */{size}"}) from None
        request.setHeader(b"etag", etag)
        request.setHeader(b"cache-control", CACHE_CONTROL)
        request.setHeader(b"accept-ranges", b"bytes")
        if target.last_modified:
            request.setHeader(b"last-modified", target.last_modified.encode("latin-1"))
        if _not_modified(request, etag, target.last_modified):
            request.setResponseCode(304)
            return
        request.setHeader(b"content-type", target.content_type)
        start, length = 0, size
        if byte_range is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {byte_range.start}-{byte_range.end}/{size}".encode())
            start, length = byte_range.start, byte_range.length
        request.setHeader(b"content-length", str(length).encode())
        if request.method == b"HEAD" or length == 0:
            return
        await BlobProducer(cast(Request, request), blob, start, length, plain_tcp_socket(request)).start()


def _file_error(exc: FileUnavailable) -> ApiError:
    # "no such file" keeps the negotiated shape of every other 404 here; upstream
    # failures are api errors with devpi-server's "error <code> getting <url>" (§3.14 step 6).
    if exc.code in (404, 410) and exc.message in (_NO_SUCH_FILE, "file existed, deleted in later serial"):
        return NegotiatedError(exc.code, exc.message)
    return ApiError(exc.code, exc.message)

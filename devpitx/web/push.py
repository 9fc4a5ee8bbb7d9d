"""Push (http-api.md §3.10): ``PUSH`` or a JSON ``POST`` on ``/U/I`` copies a release elsewhere.

The upload area receives these requests (they share the index URL with
uploads) and hands them to :class:`Pusher`.

* Internal push (``targetindex``): checks in the spec's order, then one
  write transaction copies metadata, release files, toxresults and doczip
  (model/push.py); the answer is the ``actionlog``.
* External push (``posturl``): every selected file is POSTed to another
  index with the legacy upload protocol, as twine would. The multipart
  body is assembled in a temp file in the disk pool and streamed from
  there, so memory use does not grow with the file.
"""
from __future__ import annotations

import base64
import io
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlencode

import treq
from treq.client import HTTPClient
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.iweb import IRequest

from devpitx.mirror.download import FileUnavailable
from devpitx.mirror.pages import MirrorUnavailable
from devpitx.model.indexes import Stage, get_stage, is_volatile, not_found_message
from devpitx.model.push import (
    ActionLog, ExternalPush, PushRequest, ReleaseToPush, doc_upload_fields, external_target, file_upload_fields,
    internal_target, mirror_release_to_push, parse_push, push_internal, register_fields, release_to_push,
)
from devpitx.model.releases import ReleaseError
from devpitx.web.api import envelope, read_json_body, refusal, report_commit
from devpitx.web.errors import ApiError, NegotiatedError

if TYPE_CHECKING:
    from devpitx.server import Server

log = Logger()

EXTERNAL_TIMEOUT_SECONDS = 600.0
# What an actionlog line shows of a refusing server's answer.
MAX_RESPONSE_TEXT_BYTES = 4096
_OK = (200, 201)
_COPY_CHUNK_BYTES = 1024 * 1024


def _disposition(name: str, filename: str | None = None) -> bytes:
    # Field names and file names come from our metadata keys and stored basenames;
    # quotes and line breaks are escaped as browsers do.
    def quoted(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    header = f'Content-Disposition: form-data; name="{quoted(name)}"'
    if filename is not None:
        header += f'; filename="{quoted(filename)}"'
    return header.encode("utf-8")


def write_multipart(fields: Sequence[tuple[str, str]], filename: str, content_path: Path,
                    tmp_dir: Path) -> tuple[IO[bytes], str]:
    """Disk pool: a multipart/form-data body with ``fields`` and the file as ``content``, in an
    unlinked temp file (rewound), and its content type."""
    boundary = uuid.uuid4().hex
    out = tempfile.TemporaryFile(dir=tmp_dir, prefix="push-")
    try:
        for name, value in fields:
            out.write(b"--" + boundary.encode() + b"\r\n" + _disposition(name) + b"\r\n\r\n")
            out.write(value.encode("utf-8") + b"\r\n")
        out.write(b"--" + boundary.encode() + b"\r\n" + _disposition("content", filename) + b"\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n")
        with open(content_path, "rb") as content:
            while chunk := content.read(_COPY_CHUNK_BYTES):
                out.write(chunk)
        out.write(b"\r\n--" + boundary.encode() + b"--\r\n")
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, f"multipart/form-data; boundary={boundary}"


def new_push_client(reactor: Any) -> Any:
    """The HTTP client of one external push (in a running server the clock is the reactor).

    Not the server's pooled client: uploads are few and big, and a POST sent on a pooled
    connection the other side has just closed fails without a retry (POST is not idempotent).
    """
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class Pusher:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store

    def _stage(self, user: str, index: str) -> Stage:
        stage = get_stage(self._store, user, index)
        if stage is None:
            raise NegotiatedError(404, not_found_message(user, index))
        return stage

    async def _release(self, stage: Stage, push: PushRequest, *, fetch: bool) -> ReleaseToPush:
        """The source side (rows 3-5). A mirror source first asks upstream for the project and,
        with ``fetch``, downloads and caches the files that are not here yet (row 12)."""
        try:
            if not stage.is_mirror:
                return release_to_push(self._store, stage.user, stage.index, push)
            try:
                await self._server.mirrors.ensure_project([stage], push.project)
            except MirrorUnavailable as exc:
                raise NegotiatedError(exc.code, exc.message) from None
            mirrored = self._server.mirrors.mirror_project(self._store, stage, push.project)
            release = mirror_release_to_push(mirrored, push, stage.name)
        except ReleaseError as exc:
            raise ApiError(exc.code, exc.message) from None
        if not fetch:
            return release
        entries = {}
        for link in release.releasefiles:
            try:
                entries[link["entrypath"]] = await self._server.mirrors.files.ensure_stored(stage, link["entrypath"])
            except FileUnavailable as exc:
                raise ApiError(exc.code, exc.message) from None
        return replace(release, entries=entries)

    async def push(self, request: IRequest, user: str, index: str) -> bytes:
        stage = self._stage(user, index)
        body = read_json_body(request)
        try:
            push = parse_push(body, stage.name)
        except ReleaseError as exc:
            raise ApiError(exc.code, exc.message) from None
        await self._release(stage, push, fetch=False)
        await self._server.identity.require(request, "pkg_read", url_user=user, index_config=stage.config,
                                            denied=NegotiatedError(403, "package read forbidden"))
        if push.internal:
            return await self._push_internal(request, user, index, push)
        try:
            target = external_target(push)
        except ReleaseError as exc:
            raise ApiError(exc.code, exc.message) from None
        return await self._push_external(request, user, index, push, target)

    # -- internal ------------------------------------------------------------------------------
    async def _push_internal(self, request: IRequest, user: str, index: str, push: PushRequest) -> bytes:
        try:
            target_user, target_index = internal_target(push)
        except ReleaseError as exc:
            raise ApiError(exc.code, exc.message) from None
        target = self._stage(target_user, target_index)
        identity = await self._server.identity.identify(request)
        if not self._server.identity.permitted("upload", identity, url_user=target_user,
                                               index_config=target.config):
            # 401 even for authenticated callers, as devpi-server answers (auth.md §8).
            raise ApiError(401, f"user {identity.username!r} cannot upload to {target.name!r}")
        # Re-read both sides: the identity check may have waited for a password check.
        release = await self._release(self._stage(user, index), push, fetch=True)
        source = self._stage(user, index)         # re-read: fetching mirror files waits
        target = self._stage(target_user, target_index)
        release = self._require_content(release)
        try:
            with self._store.write() as tx:
                actions = push_internal(tx, release, push, source=source.name, target_user=target_user,
                                        target_index=target_index, volatile=is_volatile(target.config),
                                        who=identity.username)
        except ReleaseError as exc:
            raise refusal(exc.code, exc.message) from None
        report_commit(request, tx)
        log.info("pushed {name} {version} from {source} to {target}", name=push.project,
                 version=push.version, source=source.name, target=target.name)
        return envelope(request, "actionlog", actions)

    def _require_content(self, release: ReleaseToPush) -> ReleaseToPush:
        """Every file's content must be here; entries without a size (mirror downloads) get it."""
        entries = {}
        for relpath, entry in release.entries.items():
            sha256 = entry["hashes"]["sha256"]
            if not self._store.blobs.has(sha256):
                raise ApiError(404, f"no such file: the content of {relpath} is missing")
            if not isinstance(entry.get("+size"), int):
                entry = {**entry, "+size": self._store.blobs.size(sha256)}
            entries[relpath] = entry
        return replace(release, entries=entries)

    # -- external ------------------------------------------------------------------------------
    async def _post_form(self, http: Any, target: ExternalPush, fields: Sequence[tuple[str, str]],
                         file: tuple[str, Path] | None) -> tuple[int, str]:
        """POST one legacy-upload form; (status, response text)."""
        clock = self._server.clock
        body: IO[bytes]
        if file is None:
            body, content_type = io.BytesIO(urlencode(list(fields)).encode()), "application/x-www-form-urlencoded"
        else:
            filename, path = file
            body, content_type = await self._server.run_disk(write_multipart, fields, filename, path,
                                                             self._store.blobs.tmp_dir)
        # Bodies are produced on our clock, not on the global cooperator (which names the reactor).
        cooperator = Cooperator(scheduler=lambda step: clock.callLater(0, step))
        data = FileBodyProducer(body, cooperator=cooperator)
        credentials = base64.b64encode(f"{target.username}:{target.password}".encode()).decode("ascii")
        try:
            response = await http.post(
                target.posturl, data=data, allow_redirects=False, timeout=EXTERNAL_TIMEOUT_SECONDS,
                reactor=clock, headers={"Content-Type": content_type, "Authorization": f"Basic {credentials}"})
            kept: list[bytes] = []

            def collect(chunk: bytes) -> None:
                if sum(map(len, kept)) < MAX_RESPONSE_TEXT_BYTES:
                    kept.append(chunk)
            await treq.collect(response, collect)
        finally:
            body.close()
        text = b"".join(kept)[:MAX_RESPONSE_TEXT_BYTES].decode("utf-8", "replace")
        return int(response.code), text

    async def _push_external(self, request: IRequest, user: str, index: str, push: PushRequest,
                             target: ExternalPush) -> bytes:
        release = self._require_content(await self._release(self._stage(user, index), push, fetch=True))
        blobs = self._store.blobs
        metadata = release.metadata
        http = new_push_client(self._server.clock)
        actions: ActionLog = []
        if target.register_project:
            try:
                code, _text = await self._post_form(http, target, register_fields(metadata), None)
            except Exception as exc:
                actions.append([-1, "exception on register:", _describe(exc)])
                return envelope(request, "actionlog", actions, code=502)
            actions.append([code, "register", push.name, push.version])
            if code not in (*_OK, 410):
                return envelope(request, "actionlog", actions, code=502)
        for link in release.releasefiles:
            sha256 = release.entries[link["entrypath"]]["hashes"]["sha256"]
            basename = link["entrypath"].rsplit("/", 1)[-1]
            try:
                code, text = await self._post_form(http, target, file_upload_fields(metadata, basename, sha256),
                                                   (basename, blobs.path_for(sha256)))
            except Exception as exc:
                actions.append([-1, "exception on release upload:", _describe(exc)])
                continue
            actions.append([code, "upload", link["entrypath"], "" if code in _OK else text])
        if release.doczip is not None:
            sha256 = release.entries[release.doczip["entrypath"]]["hashes"]["sha256"]
            try:
                code, _text = await self._post_form(http, target, doc_upload_fields(metadata),
                                                    (f"{push.name}.zip", blobs.path_for(sha256)))
            except Exception as exc:
                actions.append([-1, "exception on documentation upload:", _describe(exc)])
            else:
                actions.append([code, "docfile", push.name])
        ok = bool(actions) and actions[-1][0] in _OK
        log.info("pushed {name} {version} from {source} to {url}: {outcome}", name=push.project,
                 version=push.version, source=f"{user}/{index}", url=target.posturl,
                 outcome="ok" if ok else "failed")
        return envelope(request, "actionlog", actions, code=200 if ok else 502)


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text

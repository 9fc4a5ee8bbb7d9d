"""Writes on file URLs ``/U/I/+f/...`` and ``/U/I/+e/...`` (http-api.md §3.14).

* ``POST`` on a release file: upload a toxresult (``devpi test``). The raw
  JSON body becomes a blob in the disk pool; one transaction links it.
* ``DELETE``: delete the file (and its toxresults); its URL answers 410 Gone
  from then on. Refused on non-volatile indexes unless ``?force``.
* ``PATCH`` on a release file: yank or unyank it (PEP 592, docs/yanking.md).

Serving (GET/HEAD) is the file area's (web/files.py).
"""
from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from twisted.web.iweb import IRequest

from devpitx.model.indexes import Stage, get_stage, is_volatile, not_found_message
from devpitx.model.links import delete_file, parse_yank_body, yank_file
from devpitx.model.projects import public_entry
from devpitx.model.releases import ReleaseError, StoredBlob
from devpitx.model.toxresults import check_report, require_release_link, store_toxresult
from devpitx.storage.blobs import BlobStore
from devpitx.storage.keys import file_key
from devpitx.web.api import BAD_JSON, envelope, has_query_flag, message_response, read_json_body, report_commit
from devpitx.web.errors import ApiError, NegotiatedError

if TYPE_CHECKING:
    from devpitx.server import Server

# Tox reports carry command output; allow far more than a configuration body, still bounded.
MAX_TOXRESULT_BYTES = 32 * 1024 * 1024
TOXRESULT_FORBIDDEN = ("No permission to upload tox results. "
                       "You can use the devpi test --no-upload option to skip the upload.")


def read_and_store_report(content: IO[bytes], blobs: BlobStore) -> StoredBlob:
    """Disk pool: read the spooled body, check it is JSON, make it a blob (raises ReleaseError)."""
    content.seek(0)
    raw = content.read(MAX_TOXRESULT_BYTES + 1)
    if len(raw) > MAX_TOXRESULT_BYTES:
        raise ReleaseError(413, f"toxresult exceeds the limit of {MAX_TOXRESULT_BYTES} bytes")
    check_report(raw)
    return StoredBlob(blobs.put_bytes(raw), len(raw))


class Routes:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store

    def install(self, router: Any) -> None:
        router.add("files.post", self.post)
        router.add("files.delete", self.delete)
        router.add("files.patch", self.patch)

    def _stage(self, user: str, index: str) -> Stage:
        stage = get_stage(self._store, user, index)
        if stage is None:
            raise NegotiatedError(404, not_found_message(user, index))
        return stage

    # -- toxresult upload ----------------------------------------------------------------------
    async def post(self, request: IRequest, user: str, index: str, relpath: str, kind: str) -> bytes:
        stage = self._stage(user, index)
        identity = await self._server.identity.require(
            request, "toxresult_upload", url_user=user, index_config=stage.config,
            denied=ApiError(403, TOXRESULT_FORBIDDEN))
        try:
            require_release_link(self._store, user, index, relpath)
            if request.content is None:
                raise ReleaseError(400, BAD_JSON)
            blob = await self._server.run_disk(read_and_store_report, request.content, self._store.blobs)
            with self._store.write() as tx:
                self._stage(user, index)       # the world may have moved during the await
                toxpath = store_toxresult(tx, user, index, relpath, blob, who=identity.username)
        except ReleaseError as exc:
            if exc.code == 400:
                raise NegotiatedError(400, exc.message) from None
            raise ApiError(exc.code, exc.message) from None
        report_commit(request, tx)
        return envelope(request, "toxresultpath", f"{toxpath}#sha256={blob.sha256}")

    # -- deletion ------------------------------------------------------------------------------
    async def delete(self, request: IRequest, user: str, index: str, relpath: str, kind: str) -> bytes:
        stage = self._stage(user, index)
        await self._server.identity.require(request, "del_entry", url_user=user, index_config=stage.config)
        stage = self._stage(user, index)
        if not is_volatile(stage.config) and not has_query_flag(request, "force"):
            # (sic) the reference's message for files, too
            raise NegotiatedError(403, "cannot delete version on non-volatile index")
        try:
            with self._store.write() as tx:
                delete_file(tx, stage, relpath)
        except ReleaseError as exc:
            raise NegotiatedError(exc.code, exc.message) from None
        report_commit(request, tx)
        return message_response(request, f"package '{relpath}' deleted")

    # -- yanking -------------------------------------------------------------------------------
    async def patch(self, request: IRequest, user: str, index: str, relpath: str, kind: str) -> bytes:
        stage = self._stage(user, index)
        await self._server.identity.require(request, "del_entry", url_user=user, index_config=stage.config)
        stage = self._stage(user, index)
        try:
            yanked = parse_yank_body(read_json_body(request))
            with self._store.write() as tx:
                yank_file(tx, stage, relpath, yanked)
        except ReleaseError as exc:
            raise (NegotiatedError if exc.code in (404, 410) else ApiError)(exc.code, exc.message) from None
        report_commit(request, tx)
        entry = public_entry(self._store.get(file_key(relpath)) or {})
        if yanked is not False:
            entry["yanked"] = yanked
        what = "unyanked" if yanked is False else "yanked"
        return envelope(request, "releasefilemeta", entry, message=f"file '{relpath}' {what}")

"""The legacy upload protocol on ``POST /U/I[/]`` as twine, uv and devpi-client speak it (http-api.md §3.8–3.9).

Everything proportional to the upload's size happens in the disk pool: the
multipart body (already spooled to tmp/ by the Request) is parsed and hashed
into a temp file, wheels' METADATA is extracted, and the file is linked into
the blob store. Only then does one synchronous write transaction record it.
A request that fails at any step leaves no trace: temp files are removed and
the transaction rolls back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from devpitx.model.distmeta import ArchiveError, wheel_core_metadata
from devpitx.model.names import normalize_project_name, safe_filename_problem
from devpitx.model.releases import (
    ReleaseError, StoredBlob, doc_version, doczip_basename, metadata_from_form, register, same_named_link,
    store_file, validate_metadata,
)
from devpitx.model.versions import filename_contains_version, filename_matches_project, is_valid_archive_name
from devpitx.storage.keys import index_key
from devpitx.web.errors import NegotiatedError, SubmitError
from devpitx.web.multipart import FormError, ParsedForm, UploadedFile, parse_form
from devpitx.web.push import Pusher
from devpitx.web.root import set_serial

if TYPE_CHECKING:
    from devpitx.server import Server

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
DIGEST_FIELDS = (("sha256_digest", "sha256"), ("blake2_256_digest", "blake2b_256"), ("md5_digest", "md5"))


class Routes:
    log = Logger()

    def __init__(self, server: Server) -> None:
        self._server = server
        self._store = server.store
        self._run_disk = server.run_disk
        self._pusher = Pusher(server)

    def install(self, router: Any) -> None:
        router.add("upload.post", self.post)

    async def post(self, request: IRequest, user: str, index: str) -> bytes:
        ixconfig = self._store.get(index_key(user, index))
        if ixconfig is None:
            raise NegotiatedError(404, f"The stage {user}/{index} could not be found.")
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if request.method != b"POST" or content_type.split(";")[0].strip().lower() not in FORM_TYPES:
            # PUSH, or POST with a JSON body: push (http-api.md §3.8, §3.10).
            return await self._pusher.push(request, user, index)
        if ixconfig.get("type") == "mirror":
            raise SubmitError(404, "cannot submit to mirror index")
        identity = await self._server.identity.require(
            request, "upload", url_user=user, index_config=ixconfig,
            unauthenticated=SubmitError(401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="pypi"'}),
            denied=SubmitError(403, "no permission to submit"),
        )
        try:
            form = await self._run_disk(parse_form, request.content, content_type, self._store.blobs.tmp_dir)
        except FormError as exc:
            raise SubmitError(400, f"invalid upload form: {exc}") from None
        try:
            return await self._handle(request, user, index, form, identity.username)
        except ReleaseError as exc:
            raise SubmitError(exc.code, exc.message) from None
        finally:
            form.discard()

    async def _handle(self, request: IRequest, user: str, index: str, form: ParsedForm, who: str | None) -> bytes:
        action = form.first(":action")
        if not action:
            raise SubmitError(400, ":action field not found")
        metadata = metadata_from_form(form.fields)
        if action == "submit":
            with self._store.write() as tx:
                self._require_stage(tx, user, index)
                register(tx, user, index, metadata, full=True)
            set_serial(request, tx.serial or self._store.serial)
            return b""
        if action not in ("file_upload", "doc_upload"):
            raise SubmitError(400, f"action '{action}' not supported")
        content = form.file("content")
        if content is None:
            raise SubmitError(400, "content file field not found")
        if action == "file_upload":
            return await self._file_upload(request, user, index, form, metadata, content, who)
        return await self._doc_upload(request, user, index, form, metadata, content, who)

    def _require_stage(self, tx: Any, user: str, index: str) -> dict[str, Any]:
        # Re-read after the awaits: the index may have been deleted meanwhile.
        ixconfig = tx.get(index_key(user, index))
        if ixconfig is None:
            raise NegotiatedError(404, f"The stage {user}/{index} could not be found.")
        return ixconfig  # type: ignore[no-any-return]

    async def _file_upload(self, request: IRequest, user: str, index: str, form: ParsedForm,
                           metadata: dict[str, Any], content: UploadedFile, who: str | None) -> bytes:
        name = form.first("name")
        if not name:
            raise SubmitError(400, "name field not found")
        version = form.first("version") or ""
        if not version:
            raise SubmitError(400, "version field not found")
        filename = content.filename
        problem = safe_filename_problem(filename)
        if problem:
            raise SubmitError(400, f"invalid file name {filename!r}: {problem}")
        if not filename_contains_version(filename, version):
            raise SubmitError(400, f"filename '{filename}' does not contain version '{version}'")
        if not is_valid_archive_name(filename):
            raise SubmitError(400, f"'{filename}' is not a valid archive name")
        if not filename_matches_project(filename, name):
            raise SubmitError(400, f"filename '{filename}' does not match project name '{name}'")
        validate_metadata(metadata)
        check_digests(form, content)
        metadata_bytes = None
        if filename.lower().endswith(".whl"):
            try:
                metadata_bytes = await self._run_disk(wheel_core_metadata, content.path, filename)
            except ArchiveError as exc:
                raise SubmitError(400, f"invalid wheel '{filename}': {exc}") from None
        ixconfig = self._require_stage(self._store, user, index)
        if self._refuse_existing(user, index, normalize_project_name(name), version, filename, "releasefile",
                                 content.sha256, ixconfig):
            return _message(request, "Upload of identical file to non volatile index.")
        # Only now, with every check passed, do bytes enter the blob store.
        core_metadata_sha256 = None
        if metadata_bytes is not None:
            core_metadata_sha256 = await self._run_disk(self._store.blobs.put_bytes, metadata_bytes)
        await self._run_disk(self._store.blobs.adopt, content.path, content.sha256)
        blob = StoredBlob(content.sha256, content.size, core_metadata_sha256)
        with self._store.write() as tx:
            ixconfig = self._require_stage(tx, user, index)
            project, version = register(tx, user, index, metadata, full=False)
            relpath = store_file(tx, user, index, project, version, filename, blob, rel="releasefile", who=who,
                                 volatile=bool(ixconfig.get("volatile", True)))
        set_serial(request, tx.serial if tx.serial is not None else self._store.serial)
        if relpath is None:
            return _message(request, "Upload of identical file to non volatile index.")
        self.log.info("stored {relpath} for {who}", relpath=relpath, who=who)
        return b""

    def _refuse_existing(self, user: str, index: str, project: str, version: str, basename: str, rel: str,
                         sha256: str, ixconfig: dict[str, Any]) -> bool:
        """True if an identical file exists on a non-volatile index; 409 if a different one does.

        Checked before storing any bytes; the transaction checks again."""
        if ixconfig.get("volatile", True):
            return False
        link = same_named_link(self._store, user, index, project, version, basename, rel)
        if link is None:
            return False
        if link["hashes"].get("sha256") == sha256:
            return True
        raise SubmitError(409, f"{basename} already exists in non-volatile index")

    async def _doc_upload(self, request: IRequest, user: str, index: str, form: ParsedForm,
                          metadata: dict[str, Any], content: UploadedFile, who: str | None) -> bytes:
        name = form.first("name")
        if not name:
            raise SubmitError(400, "name field not found")
        project = normalize_project_name(name)
        check_digests(form, content)
        version = form.first("version") or ""
        ixconfig = self._require_stage(self._store, user, index)
        if version and self._refuse_existing(user, index, project, version, doczip_basename(project, version),
                                             "doczip", content.sha256, ixconfig):
            return _message(request, "Upload of identical file to non volatile index.")
        await self._run_disk(self._store.blobs.adopt, content.path, content.sha256)
        blob = StoredBlob(content.sha256, content.size)
        with self._store.write() as tx:
            ixconfig = self._require_stage(tx, user, index)
            if version:
                project, version = register(tx, user, index, metadata, full=False)
            else:
                version = doc_version(tx, user, index, project)
            relpath = store_file(tx, user, index, project, version, doczip_basename(project, version), blob,
                                 rel="doczip", who=who, volatile=bool(ixconfig.get("volatile", True)))
        set_serial(request, tx.serial if tx.serial is not None else self._store.serial)
        if relpath is None:
            return _message(request, "Upload of identical file to non volatile index.")
        return b""


def check_digests(form: ParsedForm, content: UploadedFile) -> None:
    """Digests the client sent must match what arrived (an improvement over the reference)."""
    for field, attribute in DIGEST_FIELDS:
        sent = (form.first(field) or "").strip().lower()
        if sent and sent != getattr(content, attribute):
            raise SubmitError(400, f"digest mismatch: {field} does not match the uploaded content")


def _message(request: IRequest, message: str) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
    return message.encode()


"""A primary that speaks exactly the devpitx replication wire format, over a real Store.

The entries it serves are real journal entries (``Store.write`` commits on
the primary's store, read back byte for byte from ``journal/``), and files
are the primary store's blobs. Everything around them follows the fixed
wire format: the §2.3 checks in order (role, expected-primary headers,
bearer token of auth.md §9), the waiting rule (404 / long-poll with 202 /
answer at once), the JSON-lines stream, the JSON list of
``--no-replica-streaming`` (5 MiB cap) and the 406 for other formats.

Knobs let tests break things: hold a stream after some lines, cut it in the
middle of a line, leave serials out, send other uuid headers, force file
statuses, corrupt or hold file bodies. ``requests`` records every request.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from devpitx.auth.tokens import ReplicaAuthError, ReplicaTokens
from devpitx.model.projects import http_date, release_relpath
from devpitx.replica.service import ReplicaService, ReplicaSettings
from devpitx.runtime import run_inline
from devpitx.storage import nodeinfo
from devpitx.storage.keys import file_key, index_key, project_key, user_key, version_key
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store

PRIMARY_UUID = "0a9f" * 8
REPLICA_UUID = "6b1e" * 8
REPLICA_KEY = b"replica key of the tests, 32 b.."
PRIMARY_URL = "http://primary.test"

STREAM_TYPE = "application/x-devpitx-changes+jsonl"
LONG_POLL_SECONDS = 30.0
INITIAL_FETCH_SECONDS = 1.0
LIST_MAX_BYTES = 5 * 1024 * 1024
NOT_JSON_MESSAGE = "devpitx primaries send JSON change records (application/x-devpitx-changes+jsonl)"


@dataclass
class SeenRequest:
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class _HeldStream:
    request: Request
    lines: list[bytes]


@dataclass(eq=False)
class FakePrimary(Resource):
    store: Store
    uuid: str
    replica_key: bytes
    clock: Clock
    role: str = "primary"
    # -- knobs ---------------------------------------------------------------------------------
    check_expected_id: bool = True
    response_uuid: dict[str, str] | None = None        # replaces the uuid headers of changelog answers
    changelog_status: int | None = None                # force a status for changelog requests
    stream_hold_after: int | None = None               # send this many lines, the rest on release_streams()
    stream_cut_after: int | None = None                # send this many lines and half the next, then drop
    skip_serials: set[int] = field(default_factory=set)
    file_status: dict[str, int] = field(default_factory=dict)     # relpath -> forced status
    corrupt: set[str] = field(default_factory=set)                 # relpaths served with one byte changed
    hold_files: set[str] = field(default_factory=set)              # relpaths answered on release_files()
    requests: list[SeenRequest] = field(default_factory=list)

    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)
        self.tokens = ReplicaTokens(self.replica_key)
        self.held_streams: list[_HeldStream] = []
        self.held_files: list[tuple[Request, str]] = []
        self.waiting = 0

    # -- helpers for tests -------------------------------------------------------------------------
    def changelog_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.path.startswith("/+changelog/")]

    def file_requests(self, relpath: str | None = None) -> list[SeenRequest]:
        return [r for r in self.requests if not r.path.startswith("/+changelog/")
                and (relpath is None or r.path == "/" + relpath)]

    def release_streams(self) -> None:
        held, self.held_streams = self.held_streams, []
        for stream in held:
            if stream.request._disconnected:
                continue
            for line in stream.lines:
                stream.request.write(line)
            stream.request.finish()

    def release_files(self) -> None:
        held, self.held_files = self.held_files, []
        for request, relpath in held:
            self.hold_files.discard(relpath)
            if not request._disconnected:
                body = self._file(request, relpath)
                request.write(body)
                request.finish()

    # -- answers -----------------------------------------------------------------------------------
    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        query = request.uri.decode().partition("?")[2]
        self.requests.append(SeenRequest(path, query, {k.decode().lower(): v[0].decode()
                                                       for k, v in request.requestHeaders.getAllRawHeaders()}))
        if path.startswith("/+changelog/"):
            return self._changelog(request, path[len("/+changelog/"):], query)
        relpath = path.lstrip("/")
        if relpath in self.hold_files:
            self.held_files.append((request, relpath))
            return NOT_DONE_YET
        return self._file(request, relpath)

    def _error(self, request: Request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"message": message}).encode()

    def _identity(self, request: Request) -> None:
        request.setHeader(b"X-Devpi-Serial", str(self.store.serial).encode())
        uuid_headers = self.response_uuid if self.response_uuid is not None else {
            "X-Devpi-Uuid": self.uuid, "X-Devpi-Primary-Uuid": self.uuid, "X-Devpi-Master-Uuid": self.uuid}
        for name, value in uuid_headers.items():
            request.setHeader(name.encode(), value.encode())

    def _changelog(self, request: Request, spec: str, query: str) -> bytes | int:
        self._identity(request)
        if self.role != "primary":
            return self._error(request, 403, "Replication protocol disabled")
        expected = [request.getHeader(name) for name in (b"X-Devpi-Expected-Primary-Id",
                                                         b"X-Devpi-Expected-Master-Id")]
        present = [value.decode() for value in expected if value is not None]
        if not present:
            return self._error(request, 400, "missing X-Devpi-Expected-Primary-Id header")
        sent = next((value for value in present if value), "")
        if self.check_expected_id and sent and sent != self.uuid:
            return self._error(request, 400, f"expected {self.uuid} as primary_uuid, replica sent {sent}")
        authorization = (request.getHeader(b"Authorization") or b"").decode()
        replica_uuid = (request.getHeader(b"X-Devpi-Replica-Uuid") or b"").decode()
        if not authorization.startswith("Bearer ") or not replica_uuid:
            return self._error(request, 403, "Authorization required.")
        try:
            self.tokens.check(authorization[len("Bearer "):], replica_uuid, self.clock.seconds())
        except ReplicaAuthError as exc:
            return self._error(request, 403, exc.message)
        if self.changelog_status is not None:
            return self._error(request, self.changelog_status, "forced status")
        many = spec.endswith("-")
        try:
            start = int(spec.rstrip("-"))
        except ValueError:
            return self._error(request, 400, "bad serial")
        accept = (request.getHeader(b"Accept") or b"").decode()
        if many and STREAM_TYPE not in accept and "application/json" not in accept:
            return self._error(request, 406, NOT_JSON_MESSAGE)
        following = self.store.serial + 1
        if start > following:
            return self._error(request, 404, "can only wait for next serial")
        if start < following:
            return self._answer(request, start, many, accept)
        timeout = INITIAL_FETCH_SECONDS if "initial_fetch" in query else LONG_POLL_SECONDS
        wait = self.store.waiter.wait_for_serial(start, timeout)
        self.waiting += 1
        request.notifyFinish().addErrback(lambda _f: wait.cancel())

        def ready(serial: int | None) -> None:
            self.waiting -= 1
            if request._disconnected:
                return
            self._identity(request)
            if serial is None:
                request.setResponseCode(202)
                request.finish()
                return
            body = self._answer(request, start, many, accept)
            if body is not NOT_DONE_YET:
                assert isinstance(body, bytes)
                request.write(body)
                request.finish()

        wait.addCallbacks(ready, lambda _f: setattr(self, "waiting", self.waiting - 1))
        return NOT_DONE_YET

    def _answer(self, request: Request, start: int, many: bool, accept: str) -> bytes | int:
        journal = self.store.journal
        if not many:
            request.setHeader(b"content-type", b"application/json")
            return journal.read_bytes(start)
        last = self.store.serial
        serials = [s for s in range(start, last + 1) if s not in self.skip_serials]
        if STREAM_TYPE in accept:
            request.setHeader(b"content-type", STREAM_TYPE.encode())
            lines = [journal.read_bytes(s) + b"\n" for s in serials]
            if self.stream_cut_after is not None and self.stream_cut_after < len(lines):
                cut = self.stream_cut_after
                for line in lines[:cut]:
                    request.write(line)
                request.write(lines[cut][: len(lines[cut]) // 2])
                request.loseConnection()
                return NOT_DONE_YET
            if self.stream_hold_after is not None and self.stream_hold_after < len(lines):
                for line in lines[:self.stream_hold_after]:
                    request.write(line)
                self.held_streams.append(_HeldStream(request, lines[self.stream_hold_after:]))
                return NOT_DONE_YET
            return b"".join(lines)
        request.setHeader(b"content-type", b"application/json")
        parts: list[bytes] = []
        size = 0
        for serial in serials:
            data = journal.read_bytes(serial)
            parts.append(data)
            size += len(data)
            if size > LIST_MAX_BYTES:
                break
        return b"[" + b",".join(parts) + b"]"

    def _file(self, request: Request, relpath: str) -> bytes:
        if relpath in self.file_status:
            request.setResponseCode(self.file_status[relpath])
            if self.file_status[relpath] == 302:
                request.setHeader(b"location", b"http://elsewhere.test/file")
            return b"forced status"
        entry = self.store.get(file_key(relpath))
        sha256 = None
        if entry is None and relpath.endswith(".metadata"):
            base = self.store.get(file_key(relpath[:-len(".metadata")])) or {}
            sha256 = (base.get("+core_metadata") or {}).get("sha256")
        elif entry:
            sha256 = (entry.get("hashes") or {}).get("sha256")
        elif entry == {}:
            request.setResponseCode(410)
            return b"file existed, deleted in later serial"
        if not sha256 or not self.store.blobs.has(sha256):
            request.setResponseCode(404)
            return b"no such file"
        data = self.store.blobs.path_for(sha256).read_bytes()
        if relpath in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        request.setHeader(b"content-type", b"application/octet-stream")
        return data


# -- commits on the primary's store ----------------------------------------------------------------
def create_index(store: Store, user: str, index: str, *, index_type: str = "stage") -> None:
    with store.write() as tx:
        if tx.get(user_key(user)) is None:
            tx.set(user_key(user), {"username": user, "pwhash": "x"})
        config: dict[str, Any] = {"type": index_type, "bases": [], "volatile": True}
        if index_type == "mirror":
            config["mirror_url"] = "http://upstream.test/simple/"
        tx.set(index_key(user, index), config)


def delete_index(store: Store, user: str, index: str) -> None:
    with store.write() as tx:
        tx.delete(index_key(user, index))


@dataclass(frozen=True)
class Released:
    relpath: str
    content: bytes
    sha256: str
    metadata: bytes | None = None

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


def release_file(store: Store, user: str, index: str, project: str, version: str, basename: str,
                 content: bytes, *, metadata: bytes | None = None, extra: dict[str, Any] | None = None) -> Released:
    """Store the blobs, then commit the project, version and file entry (as an upload does)."""
    sha256 = store.blobs.put_bytes(content)
    metadata_sha256 = store.blobs.put_bytes(metadata) if metadata is not None else None
    relpath = release_relpath(user, index, sha256, basename)
    with store.write() as tx:
        tx.set(project_key(user, index, project), {"name": project})
        tx.set(version_key(user, index, project, version), {"name": project, "version": version})
        entry: dict[str, Any] = {
            "hash_spec": f"sha256={sha256}", "hashes": {"sha256": sha256},
            "last_modified": http_date(tx.at), "project": project, "version": version,
            "+size": len(content), "+upload_time": tx.at, "+rel": "releasefile", **(extra or {}),
        }
        if metadata_sha256 is not None:
            entry["+core_metadata"] = {"sha256": metadata_sha256}
        tx.set(file_key(relpath), entry)
        tx.add_blob(sha256)
        if metadata_sha256 is not None:
            tx.add_blob(metadata_sha256)
    return Released(relpath, content, sha256, metadata)


def tombstone_file(store: Store, relpath: str) -> None:
    with store.write() as tx:
        tx.set(file_key(relpath), {})


# -- a replica following a FakePrimary in process -----------------------------------------------------
class ReplicaCase(SynchronousTestCase):
    """A replica store + ReplicaService whose HTTP client is StubTreq(FakePrimary), on one Clock.

    fsync is a no-op here (durability is tests/storage' business): catch-ups of
    hundreds of entries stay fast.
    """

    def replica_settings(self) -> dict[str, Any]:
        return {}

    def setUp(self) -> None:
        self.patch(os, "fsync", lambda fd: None)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        base = Path(tempfile.mkdtemp(prefix="devpitx-replica-test-"))
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        self.base = base
        self.primary_store = Store.open(base / "primary", self.clock)
        self.addCleanup(self.primary_store.close)
        self.primary = FakePrimary(self.primary_store, PRIMARY_UUID, REPLICA_KEY, self.clock)
        self.http = StubTreq(self.primary)
        # Requests without redirects skip treq in the replica: they go to this Agent.
        self.agent = RequestTraversalAgent(self.primary)
        self.replica_dir = base / "replica"
        self.store = Store.open(self.replica_dir, self.clock, replica=True)
        self.addCleanup(self.store.close)
        self.node = NodeInfo(uuid=REPLICA_UUID, role="replica", primary_url=PRIMARY_URL)
        nodeinfo.save(self.replica_dir, self.node)
        self.fatal: list[tuple[int, str]] = []
        self.service = ReplicaService(
            self.store, self.node, ReplicaSettings(primary_url=PRIMARY_URL, **self.replica_settings()),
            http=self.http, agent=self.agent, replica_key=REPLICA_KEY, clock=self.clock, run_disk=run_inline,
            on_fatal=lambda code, message: self.fatal.append((code, message)))

    def start(self) -> None:
        self.service.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()
            self.pump()

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.clock.advance(0)
            self.http.flush()
            self.agent.flush()

    def pump_until(self, done: Callable[[], bool], rounds: int = 20_000) -> None:
        for _ in range(rounds):
            if done():
                return
            self.pump(1)
        raise AssertionError("the replica did not get there")

    def caught_up(self) -> bool:
        return self.store.serial == self.primary_store.serial

    def commit_users(self, count: int, *, size: int = 0) -> None:
        for _ in range(count):
            serial = self.primary_store.serial + 1
            with self.primary_store.write() as tx:
                tx.set(user_key(f"user{serial}"), {"username": f"user{serial}", "serial": serial,
                                                   "padding": "x" * size})

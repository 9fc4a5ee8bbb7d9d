"""Records for read-path tests, written straight into a store (the formats of model/projects.py).

The upload path is tested elsewhere; these helpers let simple-page and file
tests set up exactly the state they need, including states uploads cannot
produce (odd names, markup in metadata, missing blobs).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

from devpitx.model.names import normalize_project_name
from devpitx.model.projects import http_date, release_relpath
from devpitx.server import Server
from devpitx.storage.keys import file_key, index_key, project_key, user_key, version_key

T = TypeVar("T")


@dataclass(frozen=True)
class StoredFile:
    relpath: str
    sha256: str
    size: int
    content: bytes


def make_index(server: Server, user: str, index: str, *, bases: Iterable[str] = (),
               whitelist: Iterable[str] = (), inheritance: str | None = "intersection",
               index_type: str = "stage", **extra: Any) -> None:
    """A user (if missing) and an index configuration; ``inheritance`` None leaves the key out."""
    config: dict[str, Any]
    if index_type == "mirror":
        config = {"type": "mirror", "volatile": True, "mirror_url": "http://upstream.test/simple/"}
    else:
        config = {"type": "stage", "volatile": True, "bases": list(bases), "acl_upload": [user],
                  "mirror_whitelist": list(whitelist)}
        if inheritance is not None:
            config["mirror_whitelist_inheritance"] = inheritance
    config.update(extra)
    with server.store.write() as tx:
        if tx.get(user_key(user)) is None:
            tx.set(user_key(user), {"username": user, "created": "2024-01-01T00:00:00Z"})
        tx.set(index_key(user, index), config)


def register(server: Server, user: str, index: str, name: str, version: str, **fields: Any) -> None:
    """Versiondata without files (``requires_python`` defaults to "" as after a full register)."""
    project = normalize_project_name(name)
    with server.store.write() as tx:
        key = version_key(user, index, project, version)
        data = dict(tx.get(key) or {"name": name, "version": version, "requires_python": "", "+elinks": []})
        data.update(fields)
        tx.set(key, data)
        if tx.get(project_key(user, index, project)) is None:
            tx.set(project_key(user, index, project), {"name": name})


def add_file(server: Server, user: str, index: str, name: str, version: str, basename: str,
             content: bytes | None = None, *, rel: str = "releasefile", core_metadata: bytes | None = None,
             upload_time: float | None = None, put_blob: bool = True, **fields: Any) -> StoredFile:
    """A release file (blob, entry, link) of a version, registering the version if needed."""
    content = content if content is not None else f"content of {basename}".encode()
    register(server, user, index, name, version, **fields)
    sha256 = hashlib.sha256(content).hexdigest()
    if put_blob:
        assert server.store.blobs.put_bytes(content) == sha256
    project = normalize_project_name(name)
    relpath = release_relpath(user, index, sha256, basename)
    now = upload_time if upload_time is not None else server.clock.seconds()
    entry: dict[str, Any] = {
        "hash_spec": f"sha256={sha256}", "hashes": {"sha256": sha256}, "last_modified": http_date(now),
        "project": project, "version": version, "+size": len(content), "+upload_time": now, "+rel": rel,
    }
    if core_metadata is not None:
        entry["+core_metadata"] = {"sha256": server.store.blobs.put_bytes(core_metadata)}
    with server.store.write() as tx:
        key = version_key(user, index, project, version)
        data = _record(tx.get(key))
        links = [link for link in data["+elinks"] if link["entrypath"].rsplit("/", 1)[-1] != basename]
        links.append({"rel": rel, "entrypath": relpath, "hash_spec": f"sha256={sha256}",
                      "hashes": {"sha256": sha256}, "_log": []})
        data["+elinks"] = links
        tx.set(key, data)
        tx.set(file_key(relpath), entry)
        if put_blob:
            tx.add_blob(sha256)
    return StoredFile(relpath, sha256, len(content), content)


def delete_file(server: Server, user: str, index: str, name: str, version: str, relpath: str) -> None:
    """Remove the link and leave the tombstone ``{}`` (410 from now on)."""
    project = normalize_project_name(name)
    with server.store.write() as tx:
        key = version_key(user, index, project, version)
        data = _record(tx.get(key))
        data["+elinks"] = [link for link in data["+elinks"] if link["entrypath"] != relpath]
        tx.set(key, data)
        tx.set(file_key(relpath), {})


def _record(value: Any) -> dict[str, Any]:
    assert isinstance(value, dict), value
    return dict(value)


def delete_project(server: Server, user: str, index: str, name: str) -> None:
    project = normalize_project_name(name)
    with server.store.write() as tx:
        for version in list(tx.children(f"version/{user}/{index}/{project}")):
            tx.delete(version_key(user, index, project, version))
        tx.delete(project_key(user, index, project))


# -- driving pull producers ----------------------------------------------------------------------
def use_clock_cooperator(case: SynchronousTestCase, clock: Clock) -> None:
    """Twisted's pull-producer adapter cooperates on the global Cooperator: run it on ``clock``."""
    from twisted.internet import task
    case.patch(task, "_theCooperator", Cooperator(scheduler=lambda step: clock.callLater(0, step)))


def drive(clock: Clock, http: StubTreq, d: Deferred[T], max_rounds: int = 100_000) -> T:
    """Pump the in-memory connection and the clock until ``d`` has a result; return it (or raise)."""
    results: list[T | Failure] = []
    d.addBoth(results.append)
    for _ in range(max_rounds):
        if results:
            break
        clock.advance(0)
        http.flush()
    else:
        raise AssertionError("the response did not complete")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result

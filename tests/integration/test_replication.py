"""A primary and a replica as real processes on 127.0.0.1, driven with twine and pip.

The replica starts empty, catches up from serial 0, serves pages and files
itself, relays writes to the primary (answering once it has applied them),
and keeps following while the primary changes.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dists import build_wheel, sha256_file
from tests.helpers.server_process import (
    ServerProcess,
    create_index,
    create_user,
    current_serial,
    expect,
    file_entry,
    login,
    request,
    simple_project_json,
    start_server,
)
from tests.integration.conftest import Clients

pytestmark = pytest.mark.integration

CATCH_UP_TIMEOUT_S = 60.0


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path / "primary", extra_args=["--role", "primary"])
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()


def start_replica(primary: ServerProcess, serverdir: Path) -> ServerProcess:
    return start_server(serverdir, extra_args=[
        "--primary-url", primary.url, "--secretfile", str(primary.serverdir / ".secret")])


def wait_for_serial(url: str, serial: int) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if current_serial(url) >= serial:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not reach serial {serial}")


def replica_status(url: str) -> dict:
    return expect(request(f"{url}/+status"), 200, "status").json()["result"]


def test_replica_follows_serves_and_relays_writes(primary: ServerProcess, clients: Clients,
                                                   tmp_path: Path) -> None:
    create_user(primary.url, "alice", "pw")
    token = login(primary.url, "alice", "pw")
    create_index(primary.url, "alice", token, "dev", volatile=False)
    early = build_wheel(tmp_path / "dist", "early-pkg", "1.0")
    clients.twine_upload(f"{primary.url}/alice/dev/", [early], "alice", "pw")

    replica = start_replica(primary, tmp_path / "replica")
    try:
        wait_for_serial(replica.url, current_serial(primary.url))
        status = replica_status(replica.url)
        assert status["role"] == "REPLICA"
        assert status["primary-url"] == primary.url
        page = expect(simple_project_json(replica.url, "alice/dev", "early-pkg"), 200, "replica page").json()
        assert file_entry(page, early.name)["hashes"]["sha256"] == sha256_file(early)

        # A write sent to the replica happens on the primary and is visible on the replica
        # as soon as the replica answers.
        late = build_wheel(tmp_path / "dist", "late-pkg", "2.0")
        clients.twine_upload(f"{replica.url}/alice/dev/", [late], "alice", "pw")
        expect(simple_project_json(primary.url, "alice/dev", "late-pkg"), 200, "primary page")
        page = expect(simple_project_json(replica.url, "alice/dev", "late-pkg"), 200, "replica page").json()
        assert file_entry(page, late.name)["hashes"]["sha256"] == sha256_file(late)

        # A write on the primary reaches the replica by itself.
        other = build_wheel(tmp_path / "dist", "other-pkg", "3.0")
        clients.twine_upload(f"{primary.url}/alice/dev/", [other], "alice", "pw")
        wait_for_serial(replica.url, current_serial(primary.url))

        # pip gets every file from the replica alone, byte for byte.
        downloaded = clients.pip_download(f"{replica.url}/alice/dev/+simple/", tmp_path / "downloads",
                                          "early-pkg", "late-pkg", "other-pkg")
        assert {p.name: sha256_file(p) for p in downloaded} == {
            w.name: sha256_file(w) for w in (early, late, other)}

        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while replica_status(replica.url).get("replica-in-sync-at") is None:
            assert time.monotonic() < deadline, replica_status(replica.url)
            time.sleep(0.1)
        assert replica_status(replica.url)["replication-errors"] == {}
    finally:
        replica.stop()


def test_standalone_server_refuses_the_changelog(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "standalone")
    try:
        reply = request(f"{srv.url}/+changelog/0-", headers={"X-Devpi-Expected-Primary-Id": ""})
        assert reply.status == 403
    finally:
        srv.stop()


def test_replica_mirror_pages_come_through_the_primary(primary: ServerProcess, clients: Clients,
                                                       tmp_path: Path) -> None:
    """mirror.md §8: the replica never asks upstream; the primary fetches, the replica follows."""
    from tests.integration.test_mirror_install import start_upstream

    wheels = tmp_path / "upstream-files"
    app = build_wheel(wheels, "app", "1.0", requires_dist=["dep-c"])
    dep = build_wheel(wheels, "dep-c", "0.3")
    upstream = start_upstream(wheels, tmp_path, "upstream", html_only=False)
    replica = start_replica(primary, tmp_path / "replica")
    try:
        token = login(primary.url, "root", "")
        create_index(primary.url, "root", token, "local", type="mirror", mirror_url=upstream.url)
        wait_for_serial(replica.url, current_serial(primary.url))
        before = upstream.request_count()
        downloaded = clients.pip_download(f"{replica.url}/root/local/+simple/", tmp_path / "downloads",
                                          "app", extra=["--no-deps"])
        assert [p.name for p in downloaded] == [app.name]
        assert sha256_file(downloaded[0]) == sha256_file(app)
        # Once the primary has the file, the replica serves it itself.
        wait_for_serial(replica.url, current_serial(primary.url))
        again = clients.pip_download(f"{replica.url}/root/local/+simple/", tmp_path / "again", "dep-c")
        assert [sha256_file(p) for p in again] == [sha256_file(dep)]
        assert upstream.request_count() > before            # the primary went upstream for both
        status = replica_status(replica.url)
        assert status["replication-errors"] == {}, status
    finally:
        replica.stop()
        upstream.stop()


def test_files_not_replicated_yet_are_fetched_on_demand(primary: ServerProcess, clients: Clients,
                                                        tmp_path: Path) -> None:
    """replication.md §5.3: with file replication off, every file (and its .metadata) a client
    asks the replica for is fetched from the primary right then, stored, and served."""
    create_user(primary.url, "alice", "pw")
    token = login(primary.url, "alice", "pw")
    create_index(primary.url, "alice", token, "dev", volatile=False)
    wheel = build_wheel(tmp_path / "dist", "lazy-pkg", "1.0")
    clients.twine_upload(f"{primary.url}/alice/dev/", [wheel], "alice", "pw")
    replica = start_server(tmp_path / "replica", extra_args=[
        "--primary-url", primary.url, "--secretfile", str(primary.serverdir / ".secret"),
        "--file-replication-skip-indexes", "all"])
    try:
        wait_for_serial(replica.url, current_serial(primary.url))
        assert not list((tmp_path / "replica" / "+files").rglob("*.whl"))     # nothing replicated
        downloaded = clients.pip_download(f"{replica.url}/alice/dev/+simple/", tmp_path / "downloads", "lazy-pkg")
        assert [sha256_file(p) for p in downloaded] == [sha256_file(wheel)]
        stored = list((tmp_path / "replica" / "+files").rglob("*.whl"))
        assert [sha256_file(p) for p in stored] == [sha256_file(wheel)]
        assert replica_status(replica.url)["replication-errors"] == {}
    finally:
        replica.stop()

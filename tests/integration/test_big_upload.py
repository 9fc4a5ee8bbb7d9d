"""Large uploads: bounded server memory, and crash safety in the middle of one.

Uploads must stream to disk (STYLE §7, DESIGN §4): a 300 MB wheel may not
make the server's resident memory grow anywhere near the file size. And a
server killed with SIGKILL while a body is arriving must come back exactly as
it was: same serial, no leftovers in ``tmp/``, no new files, no project.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.helpers.dists import build_big_wheel, build_wheel, sha256_file
from tests.helpers.server_process import (
    ServerProcess,
    basic_auth,
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

BIG_WHEEL_BYTES = 300 * 1000 * 1000
PEAK_RSS_LIMIT_BYTES = 150 * 1024 * 1024


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own: the memory test must not see other tests' peaks."""
    srv = start_server(tmp_path / "serverdir")
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()


def setup_alice(url: str) -> None:
    create_user(url, "alice", "pw")
    token = login(url, "alice", "pw")
    create_index(url, "alice", token, "dev", volatile=False)


@pytest.mark.slow
def test_300mb_wheel_upload_keeps_server_memory_bounded(
    fresh_server: ServerProcess, clients: Clients, tmp_path: Path
) -> None:
    setup_alice(fresh_server.url)
    wheel = build_big_wheel(tmp_path / "dist", "big-wheel", "1.0", BIG_WHEEL_BYTES)
    assert wheel.stat().st_size > BIG_WHEEL_BYTES
    rss_before = fresh_server.peak_rss_bytes()

    started = time.monotonic()
    clients.twine_upload(f"{fresh_server.url}/alice/dev/", [wheel], "alice", "pw")
    elapsed = time.monotonic() - started

    peak = fresh_server.peak_rss_bytes()
    print(
        f"\n300 MB upload: {elapsed:.1f} s ({wheel.stat().st_size / elapsed / 1e6:.0f} MB/s), "
        f"server peak RSS {peak / 2**20:.1f} MiB (before upload {rss_before / 2**20:.1f} MiB)"
    )
    assert peak < PEAK_RSS_LIMIT_BYTES, f"peak RSS {peak / 2**20:.1f} MiB"

    page = expect(simple_project_json(fresh_server.url, "alice/dev", "big-wheel"), 200, "simple page").json()
    entry = file_entry(page, wheel.name)
    assert entry["hashes"]["sha256"] == sha256_file(wheel)
    assert entry["size"] == wheel.stat().st_size

    # The download goes out over the real socket (sendfile(2) with ordinary writes between):
    # every byte arrives, in order, and the server holds none of it in memory.
    file_url = urljoin(f"{fresh_server.url}/alice/dev/+simple/big-wheel/", entry["url"])
    status, length, digest = download_sha256(file_url)
    assert (status, length, digest) == (200, wheel.stat().st_size, entry["hashes"]["sha256"])
    first, last = 123_456_789, 200_000_000
    status, length, digest = download_sha256(file_url, {"Range": f"bytes={first}-{last}"})
    with wheel.open("rb") as f:
        f.seek(first)
        expected = hashlib.sha256(f.read(last - first + 1)).hexdigest()
    assert (status, length, digest) == (206, last - first + 1, expected)
    assert fresh_server.peak_rss_bytes() < PEAK_RSS_LIMIT_BYTES
    wheel.unlink()  # 300 MB less in the temp dir while the rest of the suite runs


def download_sha256(url: str, headers: dict[str, str] | None = None) -> tuple[int, int, str]:
    """GET ``url`` on 127.0.0.1, hashing the body as it arrives: status, body length, sha256."""
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), url
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        connection.request("GET", parts.path, headers=headers or {})
        response = connection.getresponse()
        digest = hashlib.sha256()
        length = 0
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            length += len(chunk)
        return response.status, length, digest.hexdigest()
    finally:
        connection.close()


def tree_snapshot(root: Path) -> dict[str, int]:
    """Relative path -> size of every file below ``root`` (empty if missing)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_sigkill_during_upload_leaves_serverdir_as_before(clients: Clients, tmp_path: Path) -> None:
    serverdir = tmp_path / "serverdir"
    srv = start_server(serverdir)
    try:
        setup_alice(srv.url)
        # One committed upload, so that +files/ and blobs/ are not trivially empty.
        small = build_wheel(tmp_path / "dist", "small", "1.0")
        clients.twine_upload(f"{srv.url}/alice/dev/", [small], "alice", "pw")
        serial = current_serial(srv.url)
        files_before = tree_snapshot(serverdir / "+files")
        blobs_before = tree_snapshot(serverdir / "blobs")
        assert files_before and blobs_before, (files_before, blobs_before)

        with send_partial_upload(srv, "alice/dev", "crashy", declared_bytes=200_000_000, send_bytes=30_000_000) as sock:
            # The server is busy receiving (not finished, not failed) when it dies:
            # it is alive and has not answered (e.g. refused the upload early).
            assert srv.proc.poll() is None
            assert not has_pending_data(sock), "server answered before the body was complete"
            srv.kill()
    except BaseException:
        if srv.proc.poll() is None:
            srv.kill()
        raise

    restarted = start_server(serverdir)
    try:
        assert current_serial(restarted.url) == serial
        leftovers = tree_snapshot(serverdir / "tmp")
        assert leftovers == {}, f"left in tmp/ after restart: {leftovers}"
        assert tree_snapshot(serverdir / "+files") == files_before
        assert tree_snapshot(serverdir / "blobs") == blobs_before
        resp = simple_project_json(restarted.url, "alice/dev", "crashy")
        assert resp.status == 404, str(resp)
        index = expect(request(f"{restarted.url}/alice/dev"), 200, "GET index").json()
        assert index["result"]["projects"] == ["small"]
        # And the restarted server still accepts uploads.
        clients.twine_upload(f"{restarted.url}/alice/dev/", [build_wheel(tmp_path / "d2", "after", "1.0")], "alice", "pw")
        assert simple_project_json(restarted.url, "alice/dev", "after").status == 200
    finally:
        restarted.stop()


def has_pending_data(sock: socket.socket) -> bool:
    """True if the peer sent something or closed the connection."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (closed) counts as an answer too
        return True
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def send_partial_upload(
    srv: ServerProcess, index: str, project: str, *, declared_bytes: int, send_bytes: int
) -> socket.socket:
    """Start a twine-style multipart upload over a raw socket and stop halfway.

    Sends complete headers (Content-Length = the whole body) and the first
    ``send_bytes`` of the body, then returns with the connection still open,
    as a slow client would. Returns the open socket.
    """
    boundary = "devpitxtestboundary"
    filename = f"{project}-1.0-py3-none-any.whl"
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "metadata_version": "2.1",
        "name": project,
        "version": "1.0",
        "filetype": "bdist_wheel",
        "pyversion": "py3",
    }
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    head_bytes = head.encode()
    content_length = len(head_bytes) + declared_bytes + len(tail)
    request_head = (
        f"POST /{index}/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\n"
        f"Authorization: {basic_auth('alice', 'pw')}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {content_length}\r\n"
        "User-Agent: devpitx-tests slow uploader\r\n"
        "\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(request_head + head_bytes)
    sent = 0
    chunk = os.urandom(1 << 20)
    while sent < send_bytes:
        piece = chunk[: min(len(chunk), send_bytes - sent)]
        sock.sendall(piece)
        sent += len(piece)
    # sendall returns once the kernel has the bytes; give the server a moment
    # to read them off the socket and spool them into its temp file.
    time.sleep(1.0)
    return sock

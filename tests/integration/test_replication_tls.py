"""Replication over TLS with client certificates (DESIGN.md §6), as real processes on 127.0.0.1.

The primary listens with TLS (--ssl-cert/--ssl-key) and requires replica certificates
signed by its --ssl-client-ca on /+changelog. A replica with such a certificate, trusting
the primary's CA (--primary-ca), catches up with a package uploaded over TLS by twine;
replicas with a certificate from another CA, without a certificate, or trusting another
CA never get a change.

The replicas themselves listen on plain HTTP: what is under test is their link to the
primary. Their first failure is awaited in their log (no timed assertions): after it,
+status must show no answer from the primary and no serial.
"""
from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from devpitx.tls import CLIENT_CERTIFICATE_REQUIRED_MESSAGE
from tests.helpers.dists import build_wheel, sha256_file
from tests.helpers.server_process import (
    Response,
    ServerProcess,
    ServerStartError,
    basic_auth,
    devpi_auth,
    expect,
    file_entry,
    format_record,
    request,
    simple_project_json,
    start_server,
)
from tests.helpers.tls_certs import CertificateAuthority
from tests.integration.conftest import Clients

pytestmark = pytest.mark.integration

CATCH_UP_TIMEOUT_S = 60.0
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class Files:
    """PEM files of the deployment's CA and of a stranger's."""

    ca: Path
    server_cert: Path
    server_key: Path
    replica_cert: Path
    replica_key: Path
    other_ca: Path
    foreign_cert: Path
    foreign_key: Path


@pytest.fixture
def pem_files(tmp_path: Path) -> Files:
    directory = tmp_path / "pki"
    ca, other_ca = CertificateAuthority("devpitx replication CA"), CertificateAuthority("someone else's CA")
    server_cert, server_key = ca.issue("primary", dns_names=["localhost"], ip_addresses=["127.0.0.1"]).write(
        directory, "primary")
    replica_cert, replica_key = ca.issue("replica", client=True).write(directory, "replica")
    foreign_cert, foreign_key = other_ca.issue("replica", client=True).write(directory, "foreign")
    return Files(ca.write(directory, "ca"), server_cert, server_key, replica_cert, replica_key,
                 other_ca.write(directory, "other-ca"), foreign_cert, foreign_key)


# -- HTTPS to the primary (server_process.request speaks plain HTTP only) ----------------------------
def https_request(url: str, files: Files, method: str = "GET", *, json_body: Any = None,
                  headers: Mapping[str, str] | None = None) -> Response:
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.hostname == "127.0.0.1", f"refusing non-local URL {url!r}"
    context = ssl.create_default_context(cafile=str(files.ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    body = json.dumps(json_body).encode() if json_body is not None else None
    all_headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if body else {}),
                   **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        with opener.open(req, timeout=30) as resp:
            return Response(resp.status, resp.reason, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.reason, e.headers, e.read())


def https_serial(url: str, files: Files) -> int:
    serial = expect(https_request(f"{url}/+api", files), 200, "primary +api").serial
    assert serial is not None
    return serial


def twine_upload(clients: Clients, repository_url: str, ca: Path, wheel: Path, user: str, password: str) -> None:
    argv = [sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", repository_url, "--cert", str(ca), "-u", user, "-p", password, str(wheel)]
    for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", " ".join(argv), re.IGNORECASE):
        assert url.startswith("https://127.0.0.1:"), f"non-local URL {url!r}"
    # requests lets a CA bundle named in the environment override --cert: only ours counts here.
    env = {name: value for name, value in clients.env.items()
           if not (name.upper().endswith("CA_BUNDLE") or name.upper().startswith("SSL_CERT"))}
    result = subprocess.run(argv, check=False, env=env, cwd=clients.workdir, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"twine failed\n{result.stdout}\n{result.stderr}"


# -- processes ----------------------------------------------------------------------------------------
@dataclass
class Primary:
    process: ServerProcess

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.process.port}"


@pytest.fixture
def primary(tmp_path: Path, pem_files: Files) -> Iterator[Primary]:
    srv = start_server(tmp_path / "primary", extra_args=[
        "--role", "primary", "--ssl-cert", str(pem_files.server_cert), "--ssl-key", str(pem_files.server_key),
        "--ssl-client-ca", str(pem_files.ca)])
    try:
        yield Primary(srv)
    finally:
        if srv.proc.poll() is None:
            srv.stop()


def start_replica(primary: Primary, serverdir: Path, *tls_args: Path | str) -> ServerProcess:
    return start_server(serverdir, extra_args=[
        "--primary-url", primary.url, "--secretfile", str(primary.process.serverdir / ".secret"),
        *map(str, tls_args)])


def status(url: str) -> dict[str, Any]:
    result: dict[str, Any] = expect(request(f"{url}/+status"), 200, "status").json()["result"]
    return result


def wait_for_replication_error(replica: ServerProcess) -> str:
    """The text of the replica's first "replication ... failed" log record."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        for record in replica.log_records():
            if "replication from" in str(record.get("log_format", "")):
                return format_record(record)
        assert replica.proc.poll() is None, replica.describe()
        time.sleep(0.1)
    raise AssertionError(f"no replication failure logged\n{replica.describe()}")


def assert_never_caught_up(replica: ServerProcess) -> None:
    fields = status(replica.url)
    assert fields["update-from-primary-at"] is None, fields
    assert fields["primary-uuid"] is None, fields
    assert fields["serial"] == -1, fields


# -- tests --------------------------------------------------------------------------------------------
def test_replica_with_certificate_catches_up_over_tls(primary: Primary, pem_files: Files, clients: Clients,
                                                      tmp_path: Path) -> None:
    expect(https_request(f"{primary.url}/alice", pem_files, "PUT", json_body={"password": "pw"}), 201, "user")
    token = expect(https_request(f"{primary.url}/+login", pem_files, "POST",
                                 json_body={"user": "alice", "password": "pw"}), 200, "login").json()
    expect(https_request(f"{primary.url}/alice/dev", pem_files, "PUT", json_body={"bases": [], "volatile": False},
                         headers={"X-Devpi-Auth": devpi_auth("alice", token["result"]["password"])}), 200, "index")
    wheel = build_wheel(tmp_path / "dist", "tls-pkg", "1.0")
    twine_upload(clients, f"{primary.url}/alice/dev/", pem_files.ca, wheel, "alice", "pw")
    # Other endpoints answer TLS clients without a certificate; the changelog does not.
    expect(https_request(f"{primary.url}/alice/dev/+simple/tls-pkg/", pem_files, headers={"Accept": SIMPLE_JSON}),
           200, "primary page")
    refused = https_request(f"{primary.url}/+changelog/0-", pem_files, headers={
        "X-Devpi-Expected-Primary-Id": "", "Authorization": basic_auth("alice", "pw")})
    assert (refused.status, refused.json()["message"]) == (403, CLIENT_CERTIFICATE_REQUIRED_MESSAGE)

    replica = start_replica(primary, tmp_path / "replica", "--replica-cert", pem_files.replica_cert,
                            "--replica-key", pem_files.replica_key, "--primary-ca", pem_files.ca)
    try:
        target = https_serial(primary.url, pem_files)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while (fields := status(replica.url))["replica-in-sync-at"] is None or fields["serial"] < target:
            assert time.monotonic() < deadline, f"{fields}\n{replica.describe()}"
            time.sleep(0.1)
        assert fields["replication-errors"] == {}
        assert fields["primary-url"] == primary.url
        page = expect(simple_project_json(replica.url, "alice/dev", "tls-pkg"), 200, "replica page").json()
        entry = file_entry(page, wheel.name)
        assert entry["hashes"]["sha256"] == sha256_file(wheel)
        # The file itself came from the primary over TLS and is served by the replica.
        href = urljoin(f"{replica.url}/alice/dev/+simple/tls-pkg/", entry["url"]).split("#")[0]
        download = expect(request(href, headers={"Accept": "*/*"}), 200, "file from the replica")
        assert download.body == wheel.read_bytes()

        # A write sent to the replica is relayed to the primary over the same TLS client.
        late = build_wheel(tmp_path / "dist", "late-pkg", "2.0")
        clients.twine_upload(f"{replica.url}/alice/dev/", [late], "alice", "pw")
        page = expect(https_request(f"{primary.url}/alice/dev/+simple/late-pkg/", pem_files,
                                    headers={"Accept": SIMPLE_JSON}), 200, "primary page of the relayed upload").json()
        assert file_entry(page, late.name)["hashes"]["sha256"] == sha256_file(late)
    finally:
        replica.stop()


def test_replicas_without_a_good_certificate_or_trust_never_catch_up(primary: Primary, pem_files: Files,
                                                                      tmp_path: Path) -> None:
    foreign = start_replica(primary, tmp_path / "foreign", "--replica-cert", pem_files.foreign_cert,
                            "--replica-key", pem_files.foreign_key, "--primary-ca", pem_files.ca)
    anonymous = start_replica(primary, tmp_path / "anonymous", "--primary-ca", pem_files.ca)
    distrustful = start_replica(primary, tmp_path / "distrustful", "--replica-cert", pem_files.replica_cert,
                                "--replica-key", pem_files.replica_key, "--primary-ca", pem_files.other_ca)
    try:
        # A certificate from another CA: the primary ends the handshake.
        assert "unknown ca" in wait_for_replication_error(foreign)
        assert_never_caught_up(foreign)
        # No certificate: TLS works, the changelog answers 403.
        assert CLIENT_CERTIFICATE_REQUIRED_MESSAGE in wait_for_replication_error(anonymous)
        assert_never_caught_up(anonymous)
        # A primary whose certificate the replica cannot verify: the replica hangs up.
        assert "certificate verify failed" in wait_for_replication_error(distrustful)
        assert_never_caught_up(distrustful)
    finally:
        for replica in (foreign, anonymous, distrustful):
            replica.stop(check_log=False)     # their replication errors are the point


def test_unusable_certificate_files_are_fatal_at_start(pem_files: Files, tmp_path: Path) -> None:
    for args, message in (
            (["--ssl-cert", pem_files.server_cert, "--ssl-key", pem_files.replica_key],
             f"fatal: --ssl-key '{pem_files.replica_key}' is not the key of the certificate in --ssl-cert"),
            (["--ssl-cert", pem_files.server_cert, "--ssl-key", pem_files.server_key,
              "--ssl-client-ca", tmp_path / "missing.pem"],
             f"fatal: --ssl-client-ca: cannot read '{tmp_path / 'missing.pem'}'")):
        with pytest.raises(ServerStartError) as caught:
            start_server(tmp_path / "refused", extra_args=[str(arg) for arg in args], timeout=30)
        assert message in str(caught.value)
        assert "Traceback" not in str(caught.value)

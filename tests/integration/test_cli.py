"""The ``devpitx`` command line: init, --version, serve, locking, shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from packaging.version import Version

from tests.helpers.server_process import (
    FAST_ARGON2_ARGS,
    ServerProcess,
    create_user,
    current_serial,
    expect,
    find_listening_port,
    login,
    request,
    server_command,
    start_server,
)
from tests.integration.conftest import Clients

pytestmark = pytest.mark.integration

_LISTENING_RE = re.compile(r"listening on (?:127\.0\.0\.1|localhost):(\d+)")


def devpitx_script() -> str:
    path = Path(sys.executable).with_name("devpitx")
    assert path.exists(), f"console script {path} missing: is devpitx installed in this venv?"
    return str(path)


def run_devpitx(clients: Clients, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return clients.run([devpitx_script(), *args], check=False, timeout=60)


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; SIGKILLed at teardown if the test left them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_init_creates_serverdir_with_root_and_mirror(clients: Clients, tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    result = run_devpitx(clients, "init", "--serverdir", serverdir, *FAST_ARGON2_ARGS)
    assert result.returncode == 0, result
    assert (serverdir / ".nodeinfo").is_file()

    srv = start_server(serverdir)
    try:
        root = expect(request(f"{srv.url}/root"), 200, "GET /root").json()["result"]
        assert root["username"] == "root"
        assert root["indexes"]["pypi"]["type"] == "mirror"
        login(srv.url, "root", "")  # default root password is empty
    finally:
        srv.stop()


def test_init_options_no_root_pypi_and_root_passwd(clients: Clients, tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    result = run_devpitx(
        clients, "init", "--serverdir", serverdir, "--no-root-pypi", "--root-passwd", "s3cret", *FAST_ARGON2_ARGS
    )
    assert result.returncode == 0, result
    srv = start_server(serverdir)
    try:
        root = expect(request(f"{srv.url}/root"), 200, "GET /root").json()["result"]
        assert "pypi" not in root.get("indexes", {}), root
        login(srv.url, "root", "s3cret")
        assert request(f"{srv.url}/+login", "POST", json_body={"user": "root", "password": ""}).status == 401
    finally:
        srv.stop()


def test_init_refuses_initialised_serverdir(clients: Clients, tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    assert run_devpitx(clients, "init", "--serverdir", serverdir, *FAST_ARGON2_ARGS).returncode == 0
    nodeinfo = (serverdir / ".nodeinfo").read_bytes()

    result = run_devpitx(clients, "init", "--serverdir", serverdir, *FAST_ARGON2_ARGS)
    assert result.returncode == 1, result
    assert f"fatal: The path '{serverdir}' already contains devpi-server data." in result.stderr, result
    assert (serverdir / ".nodeinfo").read_bytes() == nodeinfo


def test_version_last_line_is_devpi_server_feature_level(clients: Clients) -> None:
    result = run_devpitx(clients, "--version")
    assert result.returncode == 0, result
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert lines, result
    # devpi-client's test-suite compares this line with devpi-server releases.
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", lines[-1]), lines
    assert Version(lines[-1]) >= Version("6.11"), lines


def wait_for_port_in_output(output_file: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING_RE.search(output_file.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"devpitx serve did not announce a port (exit {proc.poll()}):\n{output_file.read_text(errors='replace')}"
    )


def test_serve_initialises_default_serverdir_and_serves_api(
    clients: Clients, tmp_path: Path, stopper: list[subprocess.Popen[bytes]]
) -> None:
    # No --serverdir: the default lives under HOME, which the client env points at tmp.
    home = Path(clients.env["HOME"])
    default_serverdir = home / ".devpitx" / "server"
    assert not default_serverdir.exists()
    output_file = tmp_path / "serve.out"
    with open(output_file, "wb") as out:
        proc = subprocess.Popen(
            [devpitx_script(), "serve", "--listen", "tcp:0:interface=127.0.0.1", *FAST_ARGON2_ARGS],
            env=dict(clients.env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    stopper.append(proc)
    url = f"http://127.0.0.1:{wait_for_port_in_output(output_file, proc)}"

    resp = expect(request(f"{url}/+api"), 200, "GET /+api")
    data = resp.json()
    assert data["type"] == "apiconfig"
    assert data["result"]["login"] == f"{url}/+login"
    assert data["result"]["authstatus"][0] == "noauth"
    assert (default_serverdir / ".nodeinfo").is_file()
    # The header carries the same compatibility version as --version's last line.
    version_lines = run_devpitx(clients, "--version").stdout.split()
    assert resp.headers["X-Devpi-Server-Version"] == version_lines[-1]

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    # `devpitx serve` may stop by re-raising SIGTERM (like twist) or exit 0.
    assert code in (0, -signal.SIGTERM), f"exit {code}\n{output_file.read_text(errors='replace')}"


def test_second_server_on_same_serverdir_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    log_file = tmp_path / "second.log"
    with open(tmp_path / "second.out", "wb") as out:
        second = subprocess.Popen(
            server_command(server.serverdir, log_file), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        code = second.wait(timeout=60)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        raise AssertionError("a second server on the same serverdir kept running")
    output = (tmp_path / "second.out").read_text(errors="replace")
    assert code > 0, f"exit {code}\n{output}"
    assert find_listening_port(log_file) is None, "the second server opened a port"
    # The first server is unaffected.
    expect(request(f"{server.url}/+api"), 200, "first server /+api")


def test_sigterm_is_a_clean_exit_and_state_survives(tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    srv = start_server(serverdir)
    create_user(srv.url, "bob", "pw")
    serial = current_serial(srv.url)
    srv.stop()  # asserts exit by SIGTERM and no errors in the log

    again = start_server(serverdir)
    try:
        assert current_serial(again.url) == serial
        assert login(again.url, "bob", "pw")
    finally:
        again.stop()


def test_twistd_runs_the_same_service(tmp_path: Path, clients: Clients, stopper: list[subprocess.Popen[bytes]]) -> None:
    twistd = Path(sys.executable).with_name("twistd")
    log_file = tmp_path / "twistd.log"
    argv: Sequence[str | Path] = [
        twistd, "-n", f"--logfile={log_file}", "--pidfile=", "devpitx", "--serverdir", tmp_path / "srv", "--listen", "tcp:0:interface=127.0.0.1",
        *FAST_ARGON2_ARGS,
    ]
    with open(tmp_path / "twistd.out", "wb") as out:
        proc = subprocess.Popen([str(a) for a in argv], env=dict(clients.env), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    stopper.append(proc)
    deadline = time.monotonic() + 60
    port = None
    while port is None and time.monotonic() < deadline and proc.poll() is None:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        match = _LISTENING_RE.search(text)
        port = int(match.group(1)) if match else None
        time.sleep(0.05)
    assert port is not None, (tmp_path / "twistd.out").read_text(errors="replace")
    expect(request(f"http://127.0.0.1:{port}/+api"), 200, "twistd /+api")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)

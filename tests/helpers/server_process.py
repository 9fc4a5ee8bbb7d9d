"""Run the real devpitx server as a subprocess, and talk to its JSON API.

Integration tests need what in-process tests cannot show: that the twistd
plugin loads, a real port opens, real clients accept our wire format and the
process shuts down cleanly. The server is started with
``python -m twisted --log-format=json`` bound to 127.0.0.1 port 0; the chosen
port is read from the ``listening on {listening_host}:{listening_port}`` log
event, so tests never race for fixed ports.

The JSON-API helpers use urllib with proxies disabled and refuse any URL that
is not on 127.0.0.1: tests must never reach another host.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Tiny argon2 parameters: the secret derivation otherwise costs seconds per start.
FAST_ARGON2_ARGS = ("--argon2-memory-cost", "8", "--argon2-parallelism", "1", "--argon2-time-cost", "1")
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


class ServerStartError(RuntimeError):
    """The server process exited or never announced its port."""


def read_log_records(log_file: Path) -> list[dict[str, Any]]:
    """Parse a twisted JSON log file (records separated by the RS character).

    A record that is still being written (the last one) may not parse yet; it
    is skipped and will be seen on the next call.
    """
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for chunk in text.split("\x1e"):
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            record = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def format_record(record: Mapping[str, Any]) -> str:
    """Best-effort rendering of a JSON log record for failure messages."""
    text = record.get("log_format") or ""
    try:
        text = text.format(**record)
    except Exception:  # noqa: BLE001 - a broken format string must not hide the record
        pass
    failure = record.get("log_failure")
    if failure:
        text += f"\n{failure}"
    return f"[{record.get('log_level', {}).get('name', '?')}] {record.get('log_namespace', '?')}: {text}"


def find_listening_port(log_file: Path) -> int | None:
    for record in read_log_records(log_file):
        port = record.get("listening_port")
        if isinstance(port, int) and "listening on" in str(record.get("log_format", "")):
            return port
    return None


def wait_for_listening_port(
    log_file: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> int:
    """Poll the JSON log until the server announces its port.

    If ``proc`` is given and exits first, fail at once with its output instead
    of waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = find_listening_port(log_file)
        if port is not None:
            return port
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"server exited with {proc.returncode} before listening")
        time.sleep(0.05)
    raise ServerStartError(f"no 'listening on' record in {log_file} after {timeout}s")


def server_command(serverdir: Path, log_file: Path, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "twisted",
        "--log-format=json",
        f"--log-file={log_file}",
        "devpitx",
        "--serverdir",
        str(serverdir),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        *FAST_ARGON2_ARGS,
        *extra_args,
    ]


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    # Configuration for the server comes from the command line only.
    for name in list(env):
        if name.startswith("DEVPISERVER_") or name == "DEVPI_SERVERDIR":
            del env[name]
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    """A running ``python -m twisted devpitx`` process."""

    proc: subprocess.Popen[bytes]
    serverdir: Path
    log_file: Path
    output_file: Path
    port: int
    _output: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_records(self) -> list[dict[str, Any]]:
        return read_log_records(self.log_file)

    def error_records(self) -> list[dict[str, Any]]:
        """Records at level error/critical, or carrying a failure (tracebacks)."""
        return [
            r
            for r in self.log_records()
            if r.get("log_failure") or r.get("log_level", {}).get("name") in ("error", "critical")
        ]

    def output(self) -> str:
        """stdout and stderr of the process so far (startup errors land here)."""
        try:
            return self.output_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """Tail of output and log, for assertion messages."""
        log = "\n".join(format_record(r) for r in self.log_records()[-40:])
        return f"--- output ---\n{self.output()[-4000:]}\n--- log (last records) ---\n{log}"

    def peak_rss_bytes(self) -> int:
        """Peak resident set size (VmHWM) of the server process so far."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                assert unit == "kB", line
                return int(value) * 1024
        raise AssertionError(f"no VmHWM in /proc/{self.pid}/status")

    def stop(self, check_log: bool = True) -> None:
        """SIGTERM, wait, and assert a clean shutdown.

        twistd re-raises SIGTERM after stopping its services, so a clean exit is
        "killed by SIGTERM" (-15), not 0. With ``check_log`` the log must also be
        free of errors and tracebacks.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._close()
            raise AssertionError(f"server did not stop within {STOP_TIMEOUT_SECONDS}s\n{self.describe()}")
        self._close()
        assert code == -signal.SIGTERM, f"unclean exit {code}\n{self.describe()}"
        if check_log:
            errors = self.error_records()
            assert not errors, "errors logged:\n" + "\n".join(format_record(r) for r in errors)

    def kill(self) -> None:
        """SIGKILL: simulate a crash (no cleanup code runs in the server)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        self._close()

    def _close(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None


def start_server(
    serverdir: Path,
    *,
    log_file: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> ServerProcess:
    """Start ``python -m twisted devpitx`` on 127.0.0.1:0 and wait for its port.

    ``serverdir`` may be missing or empty: the server initialises it. Logs go
    next to the serverdir (``<serverdir>.log.N`` so that a restart on the same
    serverdir keeps the previous log for diagnosis).
    """
    serverdir = Path(serverdir)
    serverdir.parent.mkdir(parents=True, exist_ok=True)
    if log_file is None:
        n = 0
        while (candidate := serverdir.with_name(f"{serverdir.name}.log.{n}")).exists():
            n += 1
        log_file = candidate
    output_file = log_file.with_name(log_file.name + ".out")
    output = open(output_file, "wb")
    proc = subprocess.Popen(
        server_command(serverdir, log_file, extra_args),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=_server_env(),
    )
    server = ServerProcess(proc, serverdir, log_file, output_file, port=0, _output=output)
    try:
        server.port = wait_for_listening_port(log_file, timeout, proc)
    except ServerStartError as e:
        server.kill()
        raise ServerStartError(f"{e}\n{server.describe()}") from None
    return server


# ---------------------------------------------------------------------------
# JSON API helpers (urllib, 127.0.0.1 only)

# No ProxyHandler entries: an http_proxy variable in the environment must not
# send test traffic anywhere but to the local server.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def assert_local_url(url: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1", f"refusing non-local URL {url!r}"


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def serial(self) -> int | None:
        value = self.headers.get("X-Devpi-Serial")
        return int(value) if value is not None else None

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.body[:2000]!r}"


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def devpi_auth(user: str, token: str) -> str:
    """Value of the X-Devpi-Auth header devpi-client sends."""
    return base64.b64encode(f"{user}:{token}".encode()).decode("ascii")


def request(
    url: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request; returns the response whatever its status (no raising)."""
    assert_local_url(url)
    all_headers = {"Accept": "application/json"}
    if json_body is not None:
        body = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.reason, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.reason, e.headers, e.read())


def expect(response: Response, status: int, what: str) -> Response:
    assert response.status == status, f"{what}: expected {status}, got {response}"
    return response


def create_user(base_url: str, user: str, password: str) -> Response:
    return expect(
        request(f"{base_url}/{user}", "PUT", json_body={"password": password}), 201, f"create user {user}"
    )


def login(base_url: str, user: str, password: str) -> str:
    """POST /+login and return the login token."""
    resp = expect(
        request(f"{base_url}/+login", "POST", json_body={"user": user, "password": password}),
        200,
        f"login {user}",
    )
    data = resp.json()
    assert data["type"] == "proxyauth", data
    token = data["result"]["password"]
    assert isinstance(token, str) and token.isascii(), data
    return token


def create_index(
    base_url: str,
    user: str,
    token: str,
    index: str,
    *,
    bases: Sequence[str] = (),
    volatile: bool = False,
    **config: Any,
) -> Response:
    """PUT /user/index authenticated with devpi-client's X-Devpi-Auth header."""
    body = {"bases": list(bases), "volatile": volatile, **config}
    resp = request(
        f"{base_url}/{user}/{index}",
        "PUT",
        json_body=body,
        headers={"X-Devpi-Auth": devpi_auth(user, token)},
    )
    return expect(resp, 200, f"create index {user}/{index}")


def current_serial(base_url: str) -> int:
    resp = expect(request(f"{base_url}/+api"), 200, "GET /+api")
    serial = resp.serial
    assert serial is not None, f"no X-Devpi-Serial on {resp}"
    return serial


SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def simple_project_json(base_url: str, index: str, project: str) -> Response:
    """GET the PEP 691 project page of ``index`` (``user/name``)."""
    return request(f"{base_url}/{index}/+simple/{project}/", headers={"Accept": SIMPLE_JSON})


def iter_files(page: Mapping[str, Any], filename: str) -> Iterator[Mapping[str, Any]]:
    return (f for f in page["files"] if f["filename"] == filename)


def file_entry(page: Mapping[str, Any], filename: str) -> Mapping[str, Any]:
    matches = list(iter_files(page, filename))
    assert len(matches) == 1, f"expected one {filename} in {page}"
    return matches[0]

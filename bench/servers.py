"""Start, watch and stop the processes under test: devpitx, devpi-server and (optionally) nginx.

Every process listens on 127.0.0.1 only and gets a fresh server directory
inside the run's work directory. The harness keeps the ``Popen`` of every
process it started and stops exactly those PIDs (SIGTERM, then SIGKILL after
a timeout); it never signals anything it did not start.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import wait_until_ready

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
DEVPI_VENV = BENCH_DIR / ".venv-devpi-server"
DEVPITX_PYTHON = REPO / ".venv" / "bin" / "python"
STOP_TIMEOUT_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 180.0
# The reference servers' defaults for the secret's key derivation; --fast-argon2 swaps in the
# tiny values test suites use, for both servers alike.
FAST_ARGON2 = ("--argon2-memory-cost", "8", "--argon2-parallelism", "1", "--argon2-time-cost", "1")
ROOT_PASSWORD = "bench-root-password"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The harness environment minus anything that could redirect a server or point it elsewhere."""
    env = dict(os.environ)
    for name in list(env):
        upper = name.upper()
        if upper.startswith("DEVPISERVER_") or upper == "DEVPI_SERVERDIR" or upper.endswith("_PROXY"):
            del env[name]
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- memory of a process tree -----------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Resident memory of a server: its main process, and the process with its children."""

    rss_bytes: int
    peak_bytes: int  # VmHWM of the main process
    tree_rss_bytes: int


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """All living descendants of ``pid`` (devpitx checks passwords in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_of(pid: int) -> Memory:
    rss = _status_kib(pid, "VmRSS") * 1024
    tree = rss + sum(_status_kib(p, "VmRSS") * 1024 for p in descendants(pid))
    return Memory(rss, _status_kib(pid, "VmHWM") * 1024, tree)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, own processes); False if not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- processes ---------------------------------------------------------------------------


@dataclass
class Server:
    """A started server process; ``stop()`` ends exactly this PID."""

    name: str
    argv: list[str]
    serverdir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_seconds: float = 0.0
    _log_file: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> float:
        """Spawn the process and wait until ``/+api`` answers; return the seconds from spawn to ready."""
        assert self.proc is None or not self.alive(), f"{self.name} already running"
        self._log_file = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=clean_env(), cwd=self.serverdir.parent)
        try:
            wait_until_ready(self.url, READY_TIMEOUT_SECONDS, alive=self.alive)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}:\n{self.log_tail()}") from None
        self.ready_seconds = time.monotonic() - self.started_at
        return self.ready_seconds

    def memory(self) -> Memory:
        return memory_of(self.pid)

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL after STOP_TIMEOUT_SECONDS; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return code

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def write_secret(path: Path) -> Path:
    """A secret file as devpi-gen-secret writes it (base64 of 32 random bytes, mode 0600).

    Each server gets one from the start: a replica must share its primary's
    secret, and login tokens then survive the restarts of the start-up measure.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)))
    return path


def devpitx_server(workdir: Path, port: int, argon2: Sequence[str] = (), name: str = "devpitx",
                   extra: Sequence[str] = ()) -> Server:
    """devpitx via its twistd plugin; it initialises a missing server directory itself."""
    serverdir = workdir / f"{name}-serverdir"
    secret = workdir / "devpitx.secret"
    if not secret.exists():
        write_secret(secret)
    argv = [
        str(DEVPITX_PYTHON), "-m", "twisted", f"--log-file={workdir / f'{name}-twisted.log'}",
        "devpitx", "--serverdir", str(serverdir), "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--secretfile", str(secret), *argon2, *extra,
    ]
    if not extra:
        argv += ["--no-root-pypi", "--root-passwd", ROOT_PASSWORD]
    return Server(name, argv, serverdir, port, workdir / f"{name}.log")


def devpitx_replica(workdir: Path, port: int, primary_url: str, argon2: Sequence[str] = ()) -> Server:
    """A devpitx replica of the devpitx under test (spec/cli.md: --primary-url, same secret file)."""
    return devpitx_server(workdir, port, argon2, name="devpitx-replica",
                          extra=("--role", "replica", "--primary-url", primary_url))


def devpi_server(workdir: Path, port: int, argon2: Sequence[str] = (), name: str = "devpi-server",
                 extra: Sequence[str] = ()) -> Server:
    """devpi-server from its own venv; ``init_devpi_server`` must have run on the serverdir."""
    serverdir = workdir / f"{name}-serverdir"
    secret = workdir / "devpi-server.secret"
    if not secret.exists():
        write_secret(secret)
    argv = [str(DEVPI_VENV / "bin" / "devpi-server"), "--serverdir", str(serverdir),
            "--host", "127.0.0.1", "--port", str(port), "--secretfile", str(secret), *argon2, *extra]
    return Server(name, argv, serverdir, port, workdir / f"{name}.log")


def devpi_replica(workdir: Path, port: int, primary_url: str, argon2: Sequence[str] = ()) -> Server:
    return devpi_server(workdir, port, argon2, name="devpi-server-replica", extra=("--primary-url", primary_url))


def init_devpi_server(server: Server, replica_of: str | None = None) -> None:
    """``devpi-init`` without root/pypi: nothing in the benchmark may reach an upstream index."""
    argv = [str(DEVPI_VENV / "bin" / "devpi-init"), "--serverdir", str(server.serverdir)]
    if replica_of:
        argv += ["--role", "replica", "--primary-url", replica_of]
    else:
        argv += ["--no-root-pypi", "--root-passwd", ROOT_PASSWORD]
    subprocess.run(argv, check=True, capture_output=True, env=clean_env(), timeout=300)


def as_primary(server: Server) -> Server:
    """The same server, to be started with ``--role primary`` (replication must be asked for)."""
    return Server(server.name, [*server.argv, "--role", "primary"], server.serverdir, server.port,
                  server.log_path)


# -- tools -------------------------------------------------------------------------------


def venv_python() -> str:
    """The interpreter to create tool venvs with: the project's (known to have venv and pip)."""
    return str(DEVPITX_PYTHON) if DEVPITX_PYTHON.exists() else sys.executable


def devpi_server_version() -> str | None:
    exe = DEVPI_VENV / "bin" / "devpi-server"
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=clean_env(), timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return lines[-1].strip() if out.returncode == 0 and lines else None


def ensure_devpi_server(upgrade: bool = True) -> str:
    """Create bench/.venv-devpi-server and install the newest devpi-server into it (by name, via pip)."""
    if not (DEVPI_VENV / "bin" / "python").exists():
        print(f"creating {DEVPI_VENV.relative_to(REPO)}", flush=True)
        subprocess.run([venv_python(), "-m", "venv", str(DEVPI_VENV)], check=True, timeout=300)
    if upgrade or devpi_server_version() is None:
        print("installing the newest devpi-server with pip", flush=True)
        subprocess.run([str(DEVPI_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--upgrade", "devpi-server"],
                       check=True, timeout=900)
    version = devpi_server_version()
    if version is None:
        raise RuntimeError("devpi-server --version failed after installation")
    return version


def compile_devpitx_bytecode() -> None:
    """Write devpitx's bytecode, as installing a release with pip does (devpi-server's venv has it).

    The project venv holds an editable install: under PYTHONDONTWRITEBYTECODE every start
    would compile devpitx's modules from source again, which a real installation never does.
    """
    subprocess.run([str(DEVPITX_PYTHON), "-m", "compileall", "-q", str(REPO / "devpitx"),
                    str(REPO / "twisted" / "plugins")], check=True, timeout=300, stdout=subprocess.DEVNULL)


def ensure_wrk() -> str:
    """wrk from Debian's package, installed with apt-get when missing (root only)."""
    if shutil.which("wrk") is None:
        _apt_install("wrk")
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is missing: install it (Debian: apt-get install -y wrk)")
    return exe


def ensure_nginx(install: bool) -> str | None:
    exe = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin:/sbin"))
    if exe is None and install:
        try:
            _apt_install("nginx-light")
        except RuntimeError as exc:
            print(f"nginx not available ({exc}); the nginx column stays empty", flush=True)
            return None
        exe = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")
    return exe


_apt_updated = False


def _apt_install(package: str) -> None:
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{package} is missing and apt-get cannot run here")
    env = {**clean_env(), "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        print("apt-get update", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        _apt_updated = True
    print(f"apt-get install {package}", flush=True)
    # policy-rc.d on containers keeps the packaged service from starting; we run our own instance.
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, timeout=900,
                   stdout=subprocess.DEVNULL)


@dataclass
class Nginx:
    """nginx serving a directory of static files: the physical-limit reference."""

    exe: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root(self) -> Path:
        return self.workdir / "www"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        conf = self.workdir / "nginx.conf"
        tmp = self.workdir / "tmp"
        # One process, no master (so the PID we hold is the server), no access log (neither
        # Python server is asked to skip its request logging either, but nginx is the
        # physical-limit reference, not a contestant).
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.workdir / 'nginx.pid'};
error_log {self.workdir / 'nginx-error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/html html; application/vnd.pypi.simple.v1+json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
    }}
}}
""")
        log = open(self.workdir / "nginx.out", "ab")
        self.proc = subprocess.Popen([self.exe, "-p", str(self.workdir), "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     env=clean_env())
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.workdir / 'nginx.out').read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)

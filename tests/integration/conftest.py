"""Fixtures for integration tests: a real server process and real clients.

Every client (pip, uv, twine, devpi) runs as a subprocess in an isolated
environment: its own HOME and XDG directories, no configuration files, no
caches, no proxies, no keyring, and every command line is checked to name
only http://127.0.0.1 URLs. A developer's pip.conf or uv.toml must not be able
to send a test to another index, and a test must not pass because of
something cached from an earlier run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.server_process import (
    ServerProcess,
    create_index,
    create_user,
    login,
    start_server,
)

CLIENT_TIMEOUT_SECONDS = 300.0
# A command-line argument: text or a path.
Arg = str | os.PathLike[str]
_URL_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this directory starts real processes; mark them so that
    # `-m "not integration"` gives a quick in-process run.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _venv_bin(name: str) -> str:
    """A console script installed next to the running interpreter."""
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{path} missing: install the test extra (pip install -e '.[test]')"
    return str(path)


def uv_bin() -> str:
    import uv

    return uv.find_uv_bin()


def assert_only_local_urls(argv: Sequence[str]) -> None:
    for arg in argv:
        for url in _URL_RE.findall(arg):
            assert url.startswith("http://127.0.0.1:"), f"client command names non-local URL {url!r}: {argv}"


@dataclass
class Clients:
    """Runs real client tools in an isolated environment."""

    env: Mapping[str, str]
    workdir: Path

    def run(
        self,
        argv: Sequence[Arg],
        *,
        check: bool = True,
        cwd: Path | None = None,
        timeout: float = CLIENT_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        args = [os.fspath(a) for a in argv]
        assert_only_local_urls(args)
        result = subprocess.run(
            args,
            env=dict(self.env),
            cwd=cwd or self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(args)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    # -- uploads -------------------------------------------------------------

    def twine_upload(
        self, repository_url: str, files: Sequence[Path], user: str, password: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv: list[Arg] = [
                sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
                "--repository-url", repository_url, "-u", user, "-p", password, *files,
        ]
        return self.run(argv, check=check)

    def uv_publish(
        self, publish_url: str, files: Sequence[Path], user: str, password: str, *, check: bool = True,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        argv: list[Arg] = [
                uv_bin(), "publish", "--no-config", "--trusted-publishing", "never",
                "--publish-url", publish_url, "--username", user, "--password", password, *extra, *files,
        ]
        return self.run(argv, check=check)

    # -- environments --------------------------------------------------------

    def make_venv(self, path: Path) -> Path:
        """A fresh venv for pip to install into; returns its python.

        The venv has no pip of its own (ensurepip costs ~5 s per venv); the
        outer pip installs into it with ``--python``, which runs that same pip
        under the venv's interpreter.
        """
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
        return path / "bin" / "python"

    def make_uv_venv(self, path: Path) -> Path:
        argv: list[Arg] = [uv_bin(), "venv", "--no-config", "--quiet", "--python", sys.executable, path]
        self.run(argv)
        return path / "bin" / "python"

    # -- installs ------------------------------------------------------------

    def pip(self, python: Path, *args: Arg, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv: list[Arg] = [sys.executable, "-m", "pip", "--python", python, *args]
        return self.run(argv, check=check)

    def pip_install(
        self, python: Path, index_url: str, *reqs: str, extra: Sequence[str] = (), check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.pip(
            python, "install", "--no-cache-dir", "--no-deps", "--index-url", index_url, *extra, *reqs, check=check
        )

    def pip_download(self, index_url: str, dest: Path, *reqs: str, extra: Sequence[str] = ()) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        argv: list[Arg] = [
            sys.executable, "-m", "pip", "download", "--no-cache-dir", "--no-deps",
            "--index-url", index_url, "--dest", dest, *extra, *reqs,
        ]
        self.run(argv)
        return sorted(dest.iterdir())

    def uv_pip_install(
        self, python: Path, index_url: str, *reqs: str, extra: Sequence[str] = (), check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv: list[Arg] = [
            uv_bin(), "pip", "install", "--no-config", "--no-cache", "--no-deps",
            "--python", python, "--index-url", index_url, *extra, *reqs,
        ]
        return self.run(argv, check=check)

    def installed_version(self, python: Path, module: str) -> str:
        """``module.__version__`` as seen by the venv's interpreter."""
        argv: list[Arg] = [python, "-c", f"import {module}; print({module}.__version__)"]
        result = self.run(argv, cwd=self.workdir)
        return result.stdout.strip()


def isolated_client_env(base: Path) -> dict[str, str]:
    """os.environ without anything that could configure or redirect clients."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.startswith(("PIP_", "UV_", "TWINE_", "DEVPI", "PYTHON", "VIRTUAL_ENV", "CONDA"))
            # CA bundle variables override the CA a test hands a client (twine --cert) in requests.
            or k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle",
                             "curl_ca_bundle", "ssl_cert_file", "ssl_cert_dir")
        )
    }
    home = base / "home"
    for sub in ("", ".config", ".cache", ".local/share"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local/share"),
        # pip: no config files (global, user, site), no version check against an index.
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        # uv: no uv.toml/pyproject discovery, a private cache, never fetch interpreters.
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(base / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        # Keyring lookups could block or reach a system service; credentials are explicit.
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        UV_KEYRING_PROVIDER="disabled",
        # Belt and braces with the explicit URLs: loopback never goes through a proxy.
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module (per xdist worker); stopped with SIGTERM, asserting a clean exit."""
    base = tmp_path_factory.mktemp("server")
    srv = start_server(base / "serverdir")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Clients:
    base = tmp_path_factory.mktemp("clients")
    workdir = base / "work"
    workdir.mkdir()
    return Clients(isolated_client_env(base), workdir)


@pytest.fixture
def clients_env(clients: Clients) -> Mapping[str, str]:
    """The isolated environment the client tools run in."""
    return clients.env


@dataclass(frozen=True)
class IndexUser:
    """A user with a password, a login token and one non-volatile index."""

    base_url: str
    name: str
    password: str
    token: str
    index: str

    @property
    def index_url(self) -> str:
        """Upload URL (``pypisubmit``): the index URL with a trailing slash."""
        return f"{self.base_url}/{self.name}/{self.index}/"

    @property
    def simple_url(self) -> str:
        return f"{self.base_url}/{self.name}/{self.index}/+simple/"


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> IndexUser:
    create_user(server.url, "alice", "alice-pw")
    token = login(server.url, "alice", "alice-pw")
    create_index(server.url, "alice", token, "dev", bases=(), volatile=False)
    return IndexUser(server.url, "alice", "alice-pw", token, "dev")


@pytest.fixture
def project_name() -> str:
    """A project name unique to the test, so tests sharing a server don't interfere."""
    return f"pkg-{uuid.uuid4().hex[:10]}"

"""pip and uv install through a devpitx mirror of a local upstream: cold, warm, and with upstream gone.

The upstream is ``tests/mirror/fake_upstream.py`` run as a process on
127.0.0.1 (one serving PEP 691 JSON with core metadata, one HTML only),
serving wheels with dependencies: ``app`` needs ``dep-a`` and ``dep-b<2``,
``dep-a`` needs ``dep-c``. devpitx starts without ``root/pypi`` and gets
mirror indexes pointing at those upstreams, so the public index is never
involved. Timings and upstream request counts are printed (``-s`` shows
them), not asserted.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.dists import build_wheel
from tests.helpers.server_process import (
    ServerProcess, create_index, create_user, expect, login, request, start_server,
)
from tests.integration.conftest import Clients, uv_bin

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_START_SECONDS = 30.0
EXPECTED = {"app": "1.0", "dep_a": "1.1", "dep_b": "1.5", "dep_c": "0.3"}


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def request_count(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()          # by PID: the process this test started
        self.proc.wait(timeout=30)


def start_upstream(directory: Path, workdir: Path, name: str, *, html_only: bool) -> Upstream:
    port_file = workdir / f"{name}.port"
    log = workdir / f"{name}.requests"
    command = [sys.executable, "-m", "tests.mirror.fake_upstream", str(directory), "--port-file", str(port_file),
               "--log", str(log)] + (["--html-only"] if html_only else [])
    output = open(workdir / f"{name}.out", "wb")
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + UPSTREAM_START_SECONDS
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"fake upstream {name} did not start: "
                                 f"{(workdir / f'{name}.out').read_text(errors='replace')}")
        time.sleep(0.05)
    return Upstream(proc, f"http://127.0.0.1:{port_file.read_text().strip()}/simple/", log)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("upstream-files")
    build_wheel(dest, "app", "1.0", requires_dist=["dep-a>=1", "dep-b<2"])
    build_wheel(dest, "dep-a", "1.0", requires_dist=["dep-c"])
    build_wheel(dest, "dep-a", "1.1", requires_dist=["dep-c"])
    build_wheel(dest, "dep-b", "1.5")
    build_wheel(dest, "dep-b", "2.0")
    build_wheel(dest, "dep-c", "0.3", requires_python=">=3.8")
    return dest


@dataclass
class Setup:
    server: ServerProcess
    json_upstream: Upstream
    html_upstream: Upstream
    workdir: Path


@pytest.fixture
def setup(tmp_path: Path, wheels: Path) -> Iterator[Setup]:
    json_upstream = start_upstream(wheels, tmp_path, "json-upstream", html_only=False)
    html_upstream = start_upstream(wheels, tmp_path, "html-upstream", html_only=True)
    server = start_server(tmp_path / "serverdir", extra_args=["--no-root-pypi"])
    try:
        token = login(server.url, "root", "")
        for index, upstream in (("pypi", json_upstream), ("uvpypi", json_upstream), ("htmlpypi", html_upstream)):
            create_index(server.url, "root", token, index, type="mirror", mirror_url=upstream.url,
                         title=f"mirror of {upstream.url}")
        create_user(server.url, "alice", "alice-pw")
        create_index(server.url, "alice", login(server.url, "alice", "alice-pw"), "dev", bases=["root/pypi"])
        assert_only_local_mirrors(server.url)
        yield Setup(server, json_upstream, html_upstream, tmp_path)
    finally:
        for upstream in (json_upstream, html_upstream):
            upstream.stop()
        server.stop()


def assert_only_local_mirrors(url: str) -> None:
    """No index of this server may point anywhere but at the test's own upstreams."""
    for user in ("root", "alice"):
        indexes = expect(request(f"{url}/{user}"), 200, f"GET /{user}").json()["result"]["indexes"]
        for name, config in indexes.items():
            if config.get("type") == "mirror":
                assert config["mirror_url"].startswith("http://127.0.0.1:"), (user, name, config)


@dataclass
class Measured:
    what: str
    seconds: float
    upstream_requests: int | None


def install(clients: Clients, tool: str, index_url: str, venv: Path) -> float:
    started = time.monotonic()
    if tool == "pip":
        python = clients.make_venv(venv)
        started = time.monotonic()
        clients.pip(python, "install", "--no-cache-dir", "--index-url", index_url, "app")
    else:
        python = clients.make_uv_venv(venv)
        started = time.monotonic()
        clients.run([uv_bin(), "pip", "install", "--no-config", "--no-cache", "--python", python,
                     "--index-url", index_url, "app"])
    seconds = time.monotonic() - started
    check = ("import app, dep_a, dep_b, dep_c; "
             "print(app.__version__, dep_a.__version__, dep_b.__version__, dep_c.__version__)")
    out = clients.run([python, "-c", check]).stdout.split()
    assert out == list(EXPECTED.values()), out
    return seconds


def test_pip_and_uv_through_the_mirror_cold_warm_and_without_upstream(setup: Setup, clients: Clients) -> None:
    url = setup.server.url
    results: list[Measured] = []
    n = 0

    def measured(what: str, tool: str, index: str, upstream: Upstream | None) -> None:
        nonlocal n
        n += 1
        before = upstream.request_count() if upstream is not None else 0
        seconds = install(clients, tool, f"{url}/{index}/+simple/", setup.workdir / f"venv{n}")
        count = upstream.request_count() - before if upstream is not None else None
        results.append(Measured(what, seconds, count))

    measured("pip cold, JSON upstream (root/pypi)", "pip", "root/pypi", setup.json_upstream)
    measured("pip warm, JSON upstream (root/pypi)", "pip", "root/pypi", setup.json_upstream)
    measured("uv cold, JSON upstream (root/uvpypi)", "uv", "root/uvpypi", setup.json_upstream)
    measured("uv warm, JSON upstream (root/uvpypi)", "uv", "root/uvpypi", setup.json_upstream)
    measured("pip cold, HTML-only upstream (root/htmlpypi)", "pip", "root/htmlpypi", setup.html_upstream)
    measured("uv warm, HTML-only upstream (root/htmlpypi)", "uv", "root/htmlpypi", setup.html_upstream)
    measured("pip via alice/dev -> root/pypi (warm)", "pip", "alice/dev", setup.json_upstream)

    cold = [r for r in results if "cold" in r.what]
    warm = [r for r in results if "warm" in r.what]
    assert all(r.upstream_requests for r in cold), results      # cold installs did go upstream
    assert all(r.upstream_requests == 0 for r in warm), results  # warm ones never did

    # Upstream gone, and the server restarted (so every cached page counts as expired).
    for upstream in (setup.json_upstream, setup.html_upstream):
        upstream.stop()
    setup.server.stop()
    setup.server = start_server(setup.server.serverdir, extra_args=["--no-root-pypi"])
    url = setup.server.url
    measured("pip, upstream stopped, after restart (root/pypi)", "pip", "root/pypi", None)
    measured("uv, upstream stopped, after restart (root/uvpypi)", "uv", "root/uvpypi", None)
    measured("uv, upstream stopped (alice/dev)", "uv", "alice/dev", None)
    measured("pip, upstream stopped (root/htmlpypi)", "pip", "root/htmlpypi", None)

    # The mirror answers without upstream; the page says so with no-cache headers.
    page = expect(request(f"{url}/root/pypi/+simple/app/",
                          headers={"Accept": "application/vnd.pypi.simple.v1+json"}), 200, "stale page")
    assert "no-store" in (page.headers.get("Cache-Control") or ""), page.headers

    print("\nmirror install measurements (local upstream, 4 wheels to install):")
    for r in results:
        requests = "-" if r.upstream_requests is None else str(r.upstream_requests)
        print(f"  {r.what:<52} {r.seconds:6.2f} s   upstream requests: {requests}")

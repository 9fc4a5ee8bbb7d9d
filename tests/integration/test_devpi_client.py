"""The unmodified ``devpi`` command (devpi-client) against the real server process, one workflow per test.

Each test runs the ``devpi`` script of this venv with its own ``--clientdir``
(login state and current index never leak between tests), in its own
session (no controlling terminal, so ``getpass`` reads the password prompts
from stdin), and asserts on the exit code, on what the command printed and
on the server's JSON afterwards. Users, indexes and projects get names
unique to the test because the server is shared by the module.

``devpi upload --with-docs`` runs ``sphinx-build``: a stand-in on PATH writes
a one-page HTML build, which is what the client zips and uploads.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dists import build_sdist, build_wheel, filename_name, sha256_file
from tests.helpers.server_process import ServerProcess, create_index, create_user, devpi_auth, login, request
from tests.integration.conftest import Clients, assert_only_local_urls

pytestmark = pytest.mark.integration

DEVPI_TIMEOUT_SECONDS = 120.0
FAKE_SPHINX = textwrap.dedent("""\
    #!{python}
    import pathlib, sys
    out = pathlib.Path(sys.argv[-1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text("<html><body>documentation</body></html>\\n")
""")


@dataclass
class Devpi:
    """Runs ``devpi --clientdir <own dir> ...`` in an isolated environment."""

    url: str
    clientdir: Path
    env: dict[str, str]
    cwd: Path

    def run(self, *args: str | Path, stdin: str = "", rc: int = 0, cwd: Path | None = None) -> str:
        """The command's stdout+stderr; asserts its exit code."""
        devpi = Path(sys.executable).with_name("devpi")
        argv = [str(devpi), "--clientdir", str(self.clientdir), *map(str, args)]
        assert_only_local_urls(argv)
        result = subprocess.run(argv, env=self.env, cwd=cwd or self.cwd, input=stdin, capture_output=True,
                                text=True, timeout=DEVPI_TIMEOUT_SECONDS, start_new_session=True)
        output = result.stdout + result.stderr
        assert result.returncode == rc, f"{shlex.join(argv)} exited {result.returncode}, not {rc}:\n{output}"
        return output


@dataclass(frozen=True)
class Account:
    name: str
    password: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"X-Devpi-Auth": devpi_auth(self.name, self.token)}


@pytest.fixture
def devpi(server: ServerProcess, clients: Clients, tmp_path: Path) -> Devpi:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    sphinx = fakebin / "sphinx-build"
    sphinx.write_text(FAKE_SPHINX.format(python=sys.executable))
    sphinx.chmod(0o755)
    env = dict(clients.env)
    env["PATH"] = f"{fakebin}:{env.get('PATH', '/usr/bin:/bin')}"
    work = tmp_path / "work"
    work.mkdir()
    return Devpi(server.url, tmp_path / "client", env, work)


@pytest.fixture
def account(server: ServerProcess) -> Account:
    name = f"u{uuid.uuid4().hex[:8]}"
    password = "password-" + name
    create_user(server.url, name, password)
    return Account(name, password, login(server.url, name, password))


def logged_in(devpi: Devpi, account: Account, index: str = "dev", **config: Any) -> str:
    """Create ``account/index`` over HTTP, then ``devpi use`` it and ``devpi login``; returns its URL."""
    config.setdefault("volatile", False)
    create_index(devpi.url, account.name, account.token, index, **config)
    url = f"{devpi.url}/{account.name}/{index}"
    devpi.run("use", url)
    assert f"logged in '{account.name}'" in devpi.run("login", account.name, "--password", account.password)
    return url


def get_json(url: str, account: Account | None = None) -> Any:
    response = request(url, headers=account.headers() if account else None)
    assert response.status == 200, str(response)
    return response.json()["result"]


def project_files(url: str) -> dict[str, list[str]]:
    """version -> sorted basenames of release files, from the project JSON."""
    result = get_json(url)
    return {version: sorted(link["href"].rsplit("/", 1)[-1] for link in data["+links"]
                            if link["rel"] == "releasefile")
            for version, data in result.items()}


def release_files(dest: Path, name: str, version: str) -> tuple[Path, Path]:
    return build_sdist(dest, name, version, summary="test package"), build_wheel(dest, name, version)


# -- use, login, logoff -----------------------------------------------------------------------------
def test_use(devpi: Devpi, account: Account) -> None:
    create_index(devpi.url, account.name, account.token, "base", volatile=False)
    create_index(devpi.url, account.name, account.token, "dev", volatile=False, bases=[f"{account.name}/base"])
    out = devpi.run("use", devpi.url)
    assert f"using server: {devpi.url}/ (not logged in)" in out
    assert "no current index" in out
    out = devpi.run("use", f"{account.name}/dev")
    assert f"current devpi index: {devpi.url}/{account.name}/dev (not logged in)" in out
    assert "supported features: push-no-docs, push-only-docs, push-register-project, server-keyvalue-parsing" in out
    out = devpi.run("use", "-l")
    assert f"{account.name}/dev" in out and f"bases={account.name}/base" in out
    current = json.loads((devpi.clientdir / "current.json").read_text())
    assert current["index"] == f"{devpi.url}/{account.name}/dev"
    assert current["pypisubmit"] == f"{devpi.url}/{account.name}/dev/"
    assert current["simpleindex"] == f"{devpi.url}/{account.name}/dev/+simple/"
    devpi.run("use", f"{account.name}/nope", rc=1)


def test_login_and_logoff(devpi: Devpi, account: Account) -> None:
    devpi.run("use", devpi.url)
    out = devpi.run("login", account.name, "--password", "wrong", rc=1)
    assert f"401 Unauthorized: user '{account.name}' could not be authenticated" in out
    out = devpi.run("login", account.name, "--password", account.password)
    assert f"logged in '{account.name}'" in out and "credentials valid for 10.00 hours" in out
    (auth,) = json.loads((devpi.clientdir / "auth.json").read_text())["auth"][f"{devpi.url}/"]
    assert auth[0] == account.name
    # the stored token is accepted by the server
    assert get_json(f"{devpi.url}/+api", Account(account.name, "", auth[1]))["authstatus"][:2] == ["ok", account.name]
    assert f"(logged in as {account.name})" in devpi.run("use")
    assert "login information deleted" in devpi.run("logoff")
    assert "(not logged in)" in devpi.run("use")


# -- users ------------------------------------------------------------------------------------------
def test_user_create_modify_list_delete(devpi: Devpi) -> None:
    name = f"c{uuid.uuid4().hex[:8]}"
    devpi.run("use", devpi.url)
    out = devpi.run("user", "-c", name, "password=secret-pw-1", "email=c@example.invalid", "title=Carol")
    assert f"user created: {name}" in out
    created = get_json(f"{devpi.url}/{name}")
    assert (created["email"], created["title"]) == ("c@example.invalid", "Carol")
    devpi.run("user", "-c", name, "password=x", rc=1)      # 409
    devpi.run("login", name, "--password", "secret-pw-1")
    out = devpi.run("user", "-m", name, "email=new@example.invalid", "description=hello")
    assert f"user modified: {name}" in out
    modified = get_json(f"{devpi.url}/{name}")
    assert (modified["email"], modified["description"], modified["created"]) == (
        "new@example.invalid", "hello", created["created"])
    assert "modified" in modified
    assert name in devpi.run("user", "-l").split()
    assert "email=new@example.invalid" in devpi.run("user", name)
    out = devpi.run("user", "--delete", "-y", name)
    assert f"user deleted: {name}" in out
    assert request(f"{devpi.url}/{name}").status == 404


def test_passwd(devpi: Devpi, account: Account) -> None:
    devpi.run("use", devpi.url)
    devpi.run("login", account.name, "--password", account.password)
    out = devpi.run("passwd", stdin="brand-new-password\nbrand-new-password\n")
    assert f"user modified: {account.name}" in out
    assert request(f"{devpi.url}/+login", "POST", json_body={"user": account.name, "password": "brand-new-password"}
                   ).status == 200
    assert request(f"{devpi.url}/+login", "POST", json_body={"user": account.name, "password": account.password}
                   ).status == 401


# -- indexes ----------------------------------------------------------------------------------------
def test_index_create_modify_list_delete(devpi: Devpi, account: Account) -> None:
    devpi.run("use", devpi.url)
    devpi.run("login", account.name, "--password", account.password)
    out = devpi.run("index", "-c", "base", "volatile=True")
    assert "volatile=True" in out
    out = devpi.run("index", "-c", "dev", "bases=root/pypi", "volatile=False", "mirror_whitelist=Foo_Bar")
    assert "bases=root/pypi" in out and "mirror_whitelist=foo-bar" in out
    url = f"{devpi.url}/{account.name}/dev?no_projects="
    devpi.run("index", "dev", f"bases+={account.name}/base")
    assert get_json(url)["bases"] == ["root/pypi", f"{account.name}/base"]
    devpi.run("index", "dev", "bases-=root/pypi", "acl_upload+=:ANONYMOUS:", "mirror_whitelist=a,b")
    config = get_json(url)
    assert config["bases"] == [f"{account.name}/base"]
    assert config["acl_upload"] == [account.name, ":ANONYMOUS:"]
    assert config["mirror_whitelist"] == ["a", "b"]
    devpi.run("index", "dev", "acl_upload=")
    assert get_json(url)["acl_upload"] == []
    out = devpi.run("index", "dev", "bases-=root/pypi", rc=1)
    assert "The 'bases' setting doesn't have value 'root/pypi'" in out
    out = devpi.run("index", "-l")
    assert f"{account.name}/base" in out and f"{account.name}/dev" in out
    out = devpi.run("index", "--delete", "-y", "dev", rc=1)
    assert f"403 Forbidden: index {account.name}/dev non-volatile, cannot delete" in out
    devpi.run("index", "dev", "volatile=True")
    devpi.run("index", "--delete", "-y", "dev")
    assert request(url).status == 404


# -- upload -----------------------------------------------------------------------------------------
def test_upload_sdist_and_wheel(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account)
    sdist, wheel = release_files(tmp_path / "dist", project_name, "1.0")
    out = devpi.run("upload", sdist, wheel)
    assert f"file_upload of {sdist.name} to {index_url}/" in out
    assert f"file_upload of {wheel.name} to {index_url}/" in out
    assert project_files(f"{index_url}/{project_name}") == {"1.0": sorted([sdist.name, wheel.name])}
    data = get_json(f"{index_url}/{project_name}/1.0")
    assert data["summary"] == "test package"
    hashes = {link["href"].rsplit("/", 1)[-1]: link["hashes"]["sha256"] for link in data["+links"]}
    assert hashes == {sdist.name: sha256_file(sdist), wheel.name: sha256_file(wheel)}
    # identical again: fine on a non-volatile index; different content: refused with the reason
    devpi.run("upload", sdist)
    other = build_sdist(tmp_path / "other", project_name, "1.0", summary="changed")
    out = devpi.run("upload", other, rc=1)
    assert f"409 FAIL file_upload of {other.name}" in out
    assert "already exists in non-volatile index" in out


def make_project_dir(tmp_path: Path, name: str, version: str) -> Path:
    """A source tree (from one of our sdists: in-tree build backend, no build requirements) with docs."""
    import tarfile
    sdist = build_sdist(tmp_path / "sdist", name, version)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (root,) = (tmp_path / "src").iterdir()
    (root / "docs").mkdir()
    (root / "docs" / "conf.py").write_text("project = 'test'\n")
    return root


def test_upload_with_docs_and_only_docs(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account, volatile=True)
    root = make_project_dir(tmp_path, project_name, "1.0")
    out = devpi.run("upload", "--no-isolation", "--no-vcs", "--wheel", "--with-docs", cwd=root)
    wheel = f"{filename_name(project_name)}-1.0-py3-none-any.whl"
    assert f"file_upload of {wheel} to {index_url}/" in out
    assert f"doc_upload of {project_name}-1.0.doc.zip to {index_url}/" in out
    links = get_json(f"{index_url}/{project_name}/1.0")["+links"]
    assert sorted(link["rel"] for link in links) == ["doczip", "releasefile"]
    (doc,) = [link["href"] for link in links if link["rel"] == "doczip"]
    assert doc.endswith(f"/{project_name}-1.0.doc.zip")
    served = request(doc, headers={"Accept": "*/*"})
    assert served.status == 200 and served.headers["Content-Type"] == "application/zip"
    assert b"index.html" in served.body
    # --only-docs builds and uploads nothing but the docs (replacing them on this volatile index)
    out = devpi.run("upload", "--no-isolation", "--no-vcs", "--only-docs", cwd=root)
    assert "doc_upload of" in out and "file_upload" not in out
    links = get_json(f"{index_url}/{project_name}/1.0")["+links"]
    assert sorted(link["rel"] for link in links) == ["doczip", "releasefile"]
    (doczip,) = [link for link in links if link["rel"] == "doczip"]
    assert [entry["what"] for entry in doczip["log"]][0] == "overwrite"


# -- list -------------------------------------------------------------------------------------------
REPORT = {"reportversion": "1", "host": "ci-host", "platform": "linux", "testenvs": {"py311": {
    "python": {"version": "3.11.7 (main)"},
    "setup": [{"command": ["pip", "install"], "retcode": "0", "output": "installed"}],
    "test": [{"command": ["pytest"], "retcode": "1", "output": "E assert 1 == 2"}]}}}


def test_list(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    create_index(devpi.url, account.name, account.token, "base", volatile=False)
    index_url = logged_in(devpi, account, bases=[f"{account.name}/base"])
    devpi.run("upload", *[f for v in ("1.0", "1.1", "2.0", "3.0") for f in release_files(tmp_path / v, project_name, v)])
    base_sdist = build_sdist(tmp_path / "base", project_name, "3.0", summary="in base")
    devpi.run("upload", "--index", f"{account.name}/base", base_sdist)
    assert devpi.run("list").split() == [project_name]
    assert devpi.run("list", "-v").split() == [f"{project_name}==3.0"]
    assert devpi.run("list", "-v", "--all").split() == [f"{project_name}=={v}" for v in ("1.0", "1.1", "2.0", "3.0")]
    sdist = f"{filename_name(project_name)}-3.0.tar.gz"
    lines = devpi.run("list", project_name).splitlines()
    assert any(line.startswith(f"{index_url}/+f/") and line.endswith(sdist) for line in lines), lines
    assert any(line.startswith(f"{devpi.url}/{account.name}/base/+f/") for line in lines), lines   # shadowed
    assert any("older versions not shown" in line for line in lines), lines
    assert sum(".whl" in line for line in devpi.run("list", "--all", project_name).splitlines()) == 4
    ignore = devpi.run("list", "--ignore-bases", project_name)
    assert f"/{account.name}/base/" not in ignore
    # toxresults (as devpi test posts them) with -t and -f
    wheel_href = next(link["href"] for link in get_json(f"{index_url}/{project_name}/3.0")["+links"]
                      if link["href"].endswith(".whl"))
    posted = request(wheel_href, "POST", json_body=REPORT)
    assert posted.status == 200 and posted.json()["type"] == "toxresultpath"
    out = devpi.run("list", "-t", project_name)
    assert "ci-host    linux   py311      3.11.7 tests failed" in out
    out = devpi.run("list", "-f", project_name)
    assert "FAIL: pytest" in out and "E assert 1 == 2" in out


# -- remove -----------------------------------------------------------------------------------------
def test_remove(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account)
    devpi.run("upload", *[f for v in ("1.0", "2.0", "3.0") for f in release_files(tmp_path / v, project_name, v)])
    out = devpi.run("remove", "-y", f"{project_name}==1.0", rc=1)
    assert "403 Forbidden: cannot delete version on non-volatile index" in out
    out = devpi.run("remove", "-y", "--force", f"{project_name}==1.0")
    assert f"deleting release 1.0 of {project_name}" in out
    assert sorted(project_files(f"{index_url}/{project_name}")) == ["2.0", "3.0"]
    # one file by URL
    wheel_href = next(link["href"] for link in get_json(f"{index_url}/{project_name}/2.0")["+links"]
                      if link["href"].endswith(".whl"))
    devpi.run("remove", "-y", wheel_href, rc=1)
    devpi.run("remove", "-y", "--force", wheel_href)
    assert project_files(f"{index_url}/{project_name}")["2.0"] == [f"{filename_name(project_name)}-2.0.tar.gz"]
    assert request(wheel_href, headers={"Accept": "*/*"}).status == 410
    # the whole project
    out = devpi.run("remove", "-y", project_name, rc=1)
    assert f"project '{project_name}' is on non-volatile index {account.name}/dev" in out
    devpi.run("remove", "-y", "--force", project_name)
    assert request(f"{index_url}/{project_name}").status == 404
    assert get_json(index_url)["projects"] == []
    out = devpi.run("remove", "-y", f"{project_name}==9.0", rc=1)
    assert f"no project '{project_name}'" in out


def test_remove_on_volatile_index(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account, volatile=True)
    devpi.run("upload", *[build_sdist(tmp_path / v, project_name, v) for v in ("1.0", "2.0")])
    devpi.run("remove", "-y", f"{project_name}<2")
    assert list(project_files(f"{index_url}/{project_name}")) == ["2.0"]
    devpi.run("remove", "-y", project_name)
    assert get_json(index_url)["projects"] == []


# -- push -------------------------------------------------------------------------------------------
def test_push_between_indexes(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account)
    create_index(devpi.url, account.name, account.token, "prod", volatile=False)
    sdist, wheel = release_files(tmp_path, project_name, "1.0")
    devpi.run("upload", sdist, wheel)
    out = devpi.run("push", f"{project_name}==1.0", f"{account.name}/prod")
    target = f"{account.name}/prod"
    assert f"200 register {project_name} 1.0 -> {target}" in out
    sha = sha256_file(wheel)
    assert f"200 store_releasefile {target}/+f/{sha[:3]}/{sha[3:16]}/{wheel.name}" in out
    prod = get_json(f"{devpi.url}/{target}/{project_name}/1.0")
    assert sorted(link["href"].rsplit("/", 1)[-1] for link in prod["+links"]) == sorted([sdist.name, wheel.name])
    log = prod["+links"][0]["log"]
    assert [e["what"] for e in log] == ["upload", "push"]
    assert (log[1]["src"], log[1]["dst"], log[1]["who"]) == (f"{account.name}/dev", target, account.name)
    # into a non-volatile index that has the files already: refused, nothing changes
    out = devpi.run("push", f"{project_name}==1.0", target, rc=1)
    assert "409 Conflict" in out and "already exists in non-volatile index" in out
    out = devpi.run("push", f"{project_name}==9.9", target, rc=1)
    assert f"there are no files for {project_name} 9.9 on stage {account.name}/dev" in out


class _FakeRemoteHandler(BaseHTTPRequestHandler):
    """Another index on 127.0.0.1: legacy uploads (POST) and simple pages of ``pages`` (GET)."""

    received: list[dict[str, Any]]
    pages: dict[str, bytes]

    def do_POST(self) -> None:   # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        content_type = self.headers.get("Content-Type", "")
        fields: dict[str, Any] = {}
        if content_type.startswith("multipart/"):
            message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=HTTP)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                fields[str(name)] = part.get_filename() or part.get_content()
        self.received.append({"method": "POST", "auth": self.headers.get("Authorization"), "fields": fields})
        self._answer(200, b"", "text/plain")

    def do_GET(self) -> None:   # noqa: N802
        self.received.append({"method": "GET", "path": self.path})
        page = self.pages.get(self.path)
        if page is None:
            self._answer(404, b"not found", "text/plain")
        elif self.path.startswith("/files/"):
            self._answer(200, page, "application/octet-stream")
        else:
            self._answer(200, page, "application/vnd.pypi.simple.v1+json")

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class FakeRemote:
    url: str
    received: list[dict[str, Any]]
    pages: dict[str, bytes]


@pytest.fixture
def fake_remote() -> Iterator[FakeRemote]:
    received: list[dict[str, Any]] = []
    pages: dict[str, bytes] = {}
    handler = type("Handler", (_FakeRemoteHandler,), {"received": received, "pages": pages})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeRemote(f"http://127.0.0.1:{httpd.server_address[1]}", received, pages)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_push_from_a_mirror(devpi: Devpi, account: Account, project_name: str, tmp_path: Path,
                            fake_remote: FakeRemote) -> None:
    """The mirror downloads (and caches) what it has not got yet, then the files are copied."""
    create_index(devpi.url, account.name, account.token, "mirror", type="mirror",
                 mirror_url=f"{fake_remote.url}/simple/", volatile=True)
    logged_in(devpi, account)
    sdist = build_sdist(tmp_path, project_name, "1.0")
    sha = sha256_file(sdist)
    fake_remote.pages["/simple/"] = json.dumps(
        {"meta": {"api-version": "1.0"}, "projects": [{"name": project_name}]}).encode()
    fake_remote.pages[f"/simple/{project_name}/"] = json.dumps({"meta": {"api-version": "1.0"}, "name": project_name,
        "files": [{"filename": sdist.name, "url": f"../../files/{sdist.name}", "hashes": {"sha256": sha}}]}).encode()
    fake_remote.pages[f"/files/{sdist.name}"] = sdist.read_bytes()
    out = devpi.run("push", "--index", f"{account.name}/mirror", f"{project_name}==1.0", f"{account.name}/dev")
    relpath = f"{account.name}/dev/+f/{sha[:3]}/{sha[3:16]}/{sdist.name}"
    assert f"200 store_releasefile {relpath}" in out
    assert {"method": "GET", "path": f"/files/{sdist.name}"} in fake_remote.received
    served = request(f"{devpi.url}/{relpath}", headers={"Accept": "*/*"})
    assert served.status == 200 and served.body == sdist.read_bytes()


def test_push_to_an_external_index(devpi: Devpi, account: Account, project_name: str, tmp_path: Path,
                                   fake_remote: FakeRemote) -> None:
    logged_in(devpi, account)
    sdist, wheel = release_files(tmp_path / "dist", project_name, "1.0")
    devpi.run("upload", sdist, wheel)
    pypirc = devpi.cwd / "pypirc"
    pypirc.write_text(f"[distutils]\nindex-servers = fake\n[fake]\nrepository = {fake_remote.url}/legacy/\n"
                      "username = uploader\npassword = upload-secret\n")
    out = devpi.run("push", "--pypirc", "pypirc", f"{project_name}==1.0", "pypi:fake")
    assert f"200 upload {account.name}/dev/+f/" in out and wheel.name in out and sdist.name in out
    received = fake_remote.received
    assert [r["fields"][":action"] for r in received] == ["file_upload", "file_upload"]
    assert {r["fields"]["content"] for r in received} == {sdist.name, wheel.name}
    assert {r["auth"] for r in received} == {"Basic dXBsb2FkZXI6dXBsb2FkLXNlY3JldA=="}   # uploader:upload-secret


# -- getjson, refresh, yank -------------------------------------------------------------------------
def test_getjson(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    logged_in(devpi, account)
    devpi.run("upload", build_sdist(tmp_path, project_name, "1.0"))
    index = json.loads(devpi.run("getjson", f"/{account.name}/dev"))
    assert index["type"] == "indexconfig" and index["result"]["projects"] == [project_name]
    version = json.loads(devpi.run("getjson", f"{project_name}/1.0"))
    assert version["type"] == "versiondata"
    (link,) = version["result"]["+links"]
    assert link["href"].startswith(f"{devpi.url}/{account.name}/dev/+f/")
    out = devpi.run("getjson", f"{project_name}/9.9", rc=1)
    assert f"The version 9.9 of project {project_name} does not exist." in out


def test_refresh(devpi: Devpi, account: Account, project_name: str, fake_remote: FakeRemote) -> None:
    # A mirror of the fake remote (never the default upstream: tests stay on 127.0.0.1).
    create_index(devpi.url, account.name, account.token, "mirror", type="mirror",
                 mirror_url=f"{fake_remote.url}/simple/", volatile=True)
    index_url = logged_in(devpi, account, bases=[f"{account.name}/mirror"])
    page_path = f"/simple/{project_name}/"
    sha = "a" * 64
    fake_remote.pages["/simple/"] = json.dumps(
        {"meta": {"api-version": "1.0"}, "projects": [{"name": project_name}]}).encode()
    fake_remote.pages[page_path] = json.dumps({"meta": {"api-version": "1.0"}, "name": project_name, "files": [
        {"filename": f"{project_name}-1.0.tar.gz", "url": f"{fake_remote.url}/files/{project_name}-1.0.tar.gz",
         "hashes": {"sha256": sha}}]}).encode()
    assert list(get_json(f"{index_url}/{project_name}")) == ["1.0"]
    fetched = sum(r.get("path") == page_path for r in fake_remote.received)
    out = devpi.run("refresh", project_name)
    assert f"Refreshed {project_name}" in out and "Couldn't refresh" not in out
    assert sum(r.get("path") == page_path for r in fake_remote.received) > fetched


def test_yank_with_patchjson(devpi: Devpi, account: Account, project_name: str, tmp_path: Path) -> None:
    index_url = logged_in(devpi, account)
    devpi.run("upload", build_sdist(tmp_path, project_name, "1.0"))
    out = devpi.run("patchjson", f"{project_name}/1.0", "-", stdin='{"yanked": "broken"}')
    assert f"project '{project_name}' version '1.0' yanked" in out
    page = request(f"{index_url}/+simple/{project_name}/", headers={"Accept": "text/html"})
    assert 'data-yanked="broken"' in page.body.decode()
    devpi.run("patchjson", f"{project_name}/1.0", "-", stdin='{"yanked": false}')
    page = request(f"{index_url}/+simple/{project_name}/", headers={"Accept": "text/html"})
    assert "data-yanked" not in page.body.decode()

"""Real twine, uv and pip against a real server: publish, then install.

One server per module (and xdist worker). The module-scoped ``released``
fixture uploads an sdist and a wheel once; tests that upload more use their
own project names so they can run in any order.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from tests.helpers.dists import (
    BuiltWheel,
    build_sdist,
    build_wheel,
    build_wheel_info,
    import_name,
    normalize_name,
    sha256_file,
)
from tests.helpers.server_process import (
    SIMPLE_JSON,
    ServerProcess,
    create_index,
    expect,
    file_entry,
    request,
    simple_project_json,
)
from tests.integration.conftest import Clients, IndexUser

pytestmark = pytest.mark.integration

RELEASED = "Hello.Devpitx"


@dataclass(frozen=True)
class Released:
    project: str
    wheel: BuiltWheel
    sdist: Path


@pytest.fixture(scope="module")
def released(
    alice: IndexUser, clients: Clients, tmp_path_factory: pytest.TempPathFactory
) -> Released:
    """An sdist and a wheel of RELEASED 1.0 uploaded with twine using the password."""
    dist = tmp_path_factory.mktemp("released")
    wheel = build_wheel_info(dist, RELEASED, "1.0", requires_python=">=3.8", summary="hello")
    sdist = build_sdist(dist, RELEASED, "1.0", requires_python=">=3.8", summary="hello")
    clients.twine_upload(alice.index_url, [sdist, wheel.path], alice.name, alice.password)
    return Released(RELEASED, wheel, sdist)


def project_page(user: IndexUser, project: str, index: str | None = None) -> dict[str, Any]:
    index = index or f"{user.name}/{user.index}"
    resp = expect(simple_project_json(user.base_url, index, normalize_name(project)), 200, f"simple page {project}")
    assert resp.headers.get_content_type() == SIMPLE_JSON, resp.headers
    page: dict[str, Any] = resp.json()
    return page


def page_url(user: IndexUser, project: str, index: str | None = None) -> str:
    index = index or f"{user.name}/{user.index}"
    return f"{user.base_url}/{index}/+simple/{normalize_name(project)}/"


def test_twine_upload_with_password_lists_both_files(alice: IndexUser, released: Released) -> None:
    page = project_page(alice, released.project)
    assert page["name"] == normalize_name(released.project)
    assert sorted(f["filename"] for f in page["files"]) == sorted([released.sdist.name, released.wheel.path.name])
    assert file_entry(page, released.wheel.path.name)["hashes"]["sha256"] == released.wheel.sha256
    assert file_entry(page, released.sdist.name)["hashes"]["sha256"] == sha256_file(released.sdist)
    assert file_entry(page, released.wheel.path.name)["requires-python"] == ">=3.8"


def test_twine_upload_with_login_token(
    alice: IndexUser, clients: Clients, tmp_path: Path, project_name: str
) -> None:
    wheel = build_wheel(tmp_path, project_name, "0.1")
    sdist = build_sdist(tmp_path, project_name, "0.1")
    clients.twine_upload(alice.index_url, [sdist, wheel], alice.name, alice.token)
    page = project_page(alice, project_name)
    assert sorted(f["filename"] for f in page["files"]) == sorted([sdist.name, wheel.name])


def test_twine_upload_with_wrong_password_is_refused(
    alice: IndexUser, clients: Clients, tmp_path: Path, project_name: str
) -> None:
    wheel = build_wheel(tmp_path, project_name, "0.1")
    result = clients.twine_upload(alice.index_url, [wheel], alice.name, "wrong", check=False)
    assert result.returncode != 0
    assert "401" in result.stdout + result.stderr or "403" in result.stdout + result.stderr
    assert simple_project_json(alice.base_url, "alice/dev", project_name).status == 404


def test_pip_install_wheel(alice: IndexUser, released: Released, clients: Clients, tmp_path: Path) -> None:
    python = clients.make_venv(tmp_path / "venv")
    result = clients.pip_install(
        python, alice.simple_url, f"{released.project}==1.0", extra=["--only-binary", ":all:"]
    )
    assert released.wheel.path.name in result.stdout
    assert clients.installed_version(python, import_name(released.project)) == "1.0"


def test_pip_install_sdist_builds_offline(
    alice: IndexUser, released: Released, clients: Clients, tmp_path: Path
) -> None:
    # The sdist's build backend is inside the sdist (no build requirements), so
    # pip fetches nothing but the sdist from our server.
    python = clients.make_venv(tmp_path / "venv")
    result = clients.pip_install(python, alice.simple_url, f"{released.project}==1.0", extra=["--no-binary", ":all:"])
    assert released.sdist.name in result.stdout
    assert clients.installed_version(python, import_name(released.project)) == "1.0"


def test_pip_install_with_index_url_without_simple(
    alice: IndexUser, released: Released, clients: Clients, tmp_path: Path
) -> None:
    # --index-url http://host/U/I/ relies on the installer shortcut routes.
    python = clients.make_venv(tmp_path / "venv")
    clients.pip_install(python, alice.index_url, f"{released.project}==1.0", extra=["--only-binary", ":all:"])
    assert clients.installed_version(python, import_name(released.project)) == "1.0"


def test_uv_pip_install_wheel(alice: IndexUser, released: Released, clients: Clients, tmp_path: Path) -> None:
    python = clients.make_uv_venv(tmp_path / "venv")
    clients.uv_pip_install(python, alice.simple_url, f"{released.project}==1.0", extra=["--only-binary", ":all:"])
    assert clients.installed_version(python, import_name(released.project)) == "1.0"


def test_inheriting_index_serves_base_release(
    server: ServerProcess, alice: IndexUser, released: Released, clients: Clients, tmp_path: Path
) -> None:
    create_index(server.url, alice.name, alice.token, "inherit", bases=["alice/dev"], volatile=False)
    page = project_page(alice, released.project, index="alice/inherit")
    entry = file_entry(page, released.wheel.path.name)
    assert entry["hashes"]["sha256"] == released.wheel.sha256
    inherit_simple = f"{server.url}/alice/inherit/+simple/"
    python = clients.make_venv(tmp_path / "pip-venv")
    clients.pip_install(python, inherit_simple, f"{released.project}==1.0", extra=["--only-binary", ":all:"])
    assert clients.installed_version(python, import_name(released.project)) == "1.0"
    uv_python = clients.make_uv_venv(tmp_path / "uv-venv")
    clients.uv_pip_install(uv_python, inherit_simple, f"{released.project}==1.0")
    assert clients.installed_version(uv_python, import_name(released.project)) == "1.0"


def test_pip_download_hash_matches_simple_page(
    alice: IndexUser, released: Released, clients: Clients, tmp_path: Path
) -> None:
    (downloaded,) = clients.pip_download(
        alice.simple_url, tmp_path / "dl", f"{released.project}==1.0", extra=["--only-binary", ":all:"]
    )
    assert downloaded.name == released.wheel.path.name
    page = project_page(alice, released.project)
    assert sha256_file(downloaded) == file_entry(page, downloaded.name)["hashes"]["sha256"]
    assert downloaded.read_bytes() == released.wheel.path.read_bytes()


def test_identical_reupload_succeeds(alice: IndexUser, released: Released, clients: Clients) -> None:
    clients.twine_upload(alice.index_url, [released.wheel.path], alice.name, alice.password)
    page = project_page(alice, released.project)
    assert file_entry(page, released.wheel.path.name)["hashes"]["sha256"] == released.wheel.sha256


def test_changed_file_with_same_name_is_refused_with_409(
    alice: IndexUser, released: Released, clients: Clients, tmp_path: Path
) -> None:
    changed = build_wheel(tmp_path, released.project, "1.0", extra_files={"changed.txt": "different content\n"})
    assert changed.name == released.wheel.path.name
    assert changed.read_bytes() != released.wheel.path.read_bytes()
    result = clients.twine_upload(alice.index_url, [changed], alice.name, alice.password, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "409" in output, output
    # The stored file is untouched.
    page = project_page(alice, released.project)
    assert file_entry(page, released.wheel.path.name)["hashes"]["sha256"] == released.wheel.sha256


def test_uv_exclude_newer_picks_version_uploaded_before_timestamp(
    alice: IndexUser, clients: Clients, tmp_path: Path, project_name: str
) -> None:
    old = build_wheel(tmp_path, project_name, "1.0")
    new = build_wheel(tmp_path, project_name, "2.0")
    clients.twine_upload(alice.index_url, [old], alice.name, alice.password)
    # A full second on each side of the cut-off: upload-time may be stored
    # with whole-second precision and the cut-off is formatted the same way.
    time.sleep(1.0)
    cutoff = datetime.now(timezone.utc).replace(microsecond=0)
    time.sleep(1.5)
    clients.twine_upload(alice.index_url, [new], alice.name, alice.password)

    page = project_page(alice, project_name)
    upload_times = {
        f["filename"]: datetime.fromisoformat(f["upload-time"]) for f in page["files"]
    }
    assert upload_times[old.name] < cutoff < upload_times[new.name], (upload_times, cutoff)

    stamp = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    python = clients.make_uv_venv(tmp_path / "venv-old")
    clients.uv_pip_install(python, alice.simple_url, project_name, extra=["--exclude-newer", stamp])
    assert clients.installed_version(python, import_name(project_name)) == "1.0"
    # Without the cut-off the newest version wins: the filter, not luck, chose 1.0.
    python = clients.make_uv_venv(tmp_path / "venv-new")
    clients.uv_pip_install(python, alice.simple_url, project_name)
    assert clients.installed_version(python, import_name(project_name)) == "2.0"


def test_simple_json_is_api_1_1_with_core_metadata(alice: IndexUser, released: Released) -> None:
    page = project_page(alice, released.project)
    assert page["meta"]["api-version"] == "1.1"
    assert page["versions"] == ["1.0"]
    for path in (released.wheel.path, released.sdist):
        entry = file_entry(page, path.name)
        assert entry["size"] == path.stat().st_size
        uploaded = datetime.fromisoformat(entry["upload-time"])
        assert entry["upload-time"].endswith("Z") and uploaded.tzinfo is not None
        assert abs((datetime.now(timezone.utc) - uploaded).total_seconds()) < 3600

    wheel_entry = file_entry(page, released.wheel.path.name)
    metadata_sha256 = hashlib.sha256(released.wheel.metadata).hexdigest()
    assert wheel_entry["core-metadata"] == {"sha256": metadata_sha256}
    metadata_url = urljoin(page_url(alice, released.project), wheel_entry["url"]) + ".metadata"
    resp = expect(request(metadata_url, headers={"Accept": "*/*"}), 200, f"GET {metadata_url}")
    assert resp.body == released.wheel.metadata
    assert hashlib.sha256(resp.body).hexdigest() == metadata_sha256
    # sdists have no METADATA file to serve: they must not advertise one.
    assert not file_entry(page, released.sdist.name).get("core-metadata")

    file_url = urljoin(page_url(alice, released.project), wheel_entry["url"])
    resp = expect(request(file_url, headers={"Accept": "*/*"}), 200, f"GET {file_url}")
    assert resp.body == released.wheel.path.read_bytes()


def test_uv_publish(alice: IndexUser, clients: Clients, tmp_path: Path, project_name: str) -> None:
    wheel = build_wheel_info(tmp_path, project_name, "3.0")
    sdist = build_sdist(tmp_path, project_name, "3.0")
    clients.uv_publish(alice.index_url, [wheel.path, sdist], alice.name, alice.password)
    page = project_page(alice, project_name)
    assert file_entry(page, wheel.path.name)["hashes"]["sha256"] == wheel.sha256
    assert file_entry(page, sdist.name)["hashes"]["sha256"] == sha256_file(sdist)
    # Publishing the identical files again is accepted (uv treats it as success).
    clients.uv_publish(alice.index_url, [wheel.path, sdist], alice.name, alice.password)
    python = clients.make_uv_venv(tmp_path / "venv")
    clients.uv_pip_install(python, alice.simple_url, f"{project_name}==3.0")
    assert clients.installed_version(python, import_name(project_name)) == "3.0"


def test_devpi_client_upload_and_list(
    server: ServerProcess, clients: Clients, tmp_path: Path, project_name: str
) -> None:
    devpi = [str(Path(sys.executable).with_name("devpi")), "--clientdir", str(tmp_path / "devpi-client")]
    clients.run([*devpi, "use", server.url])
    clients.run([*devpi, "user", "-c", "carol", "password=carol-pw"])
    clients.run([*devpi, "login", "carol", "--password", "carol-pw"])
    clients.run([*devpi, "index", "-c", "dev", "bases=", "volatile=False"])
    clients.run([*devpi, "use", "carol/dev"])
    dist = tmp_path / "dist"
    wheel = build_wheel(dist, project_name, "1.5")
    sdist = build_sdist(dist, project_name, "1.5")
    clients.run([*devpi, "upload", "--from-dir", dist])

    listing = clients.run([*devpi, "list", project_name]).stdout
    for path in (wheel, sdist):
        assert f"{server.url}/carol/dev/+f/" in listing and path.name in listing, listing
    page = expect(simple_project_json(server.url, "carol/dev", normalize_name(project_name)), 200, "page").json()
    assert file_entry(page, wheel.name)["hashes"]["sha256"] == sha256_file(wheel)

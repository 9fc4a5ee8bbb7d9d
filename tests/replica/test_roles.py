"""Role determination (spec/cli.md §2.3) and initialising a node for its role."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.cli import main as cli_main
from devpitx.cli import tap
from devpitx.cli.admin import init_serverdir
from devpitx.config import Config
from devpitx.replica.roles import RoleChoice, RoleError, apply_role, choose_role
from devpitx.storage import nodeinfo
from devpitx.storage.keys import user_key
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store
from tests.helpers.testserver import cheap_hash

URL = "http://primary.test"
URL2 = "https://other-primary.test/devpi"

# (stored role, stored primary URL, --role, --primary-url) -> (role, primary URL) or a fatal message part.
RULES: list[tuple[str | None, str | None, str, str | None, tuple[str, str | None] | str]] = [
    # first start (no node info yet)
    (None, None, "auto", None, ("standalone", None)),
    (None, None, "auto", URL, ("replica", URL)),
    (None, None, "standalone", None, ("standalone", None)),
    (None, None, "primary", None, ("primary", None)),
    (None, None, "master", None, ("primary", None)),
    (None, None, "replica", URL, ("replica", URL)),
    (None, None, "replica", None, "need to specify --primary-url to run as replica"),
    (None, None, "standalone", URL, ("standalone", None)),
    # later starts, --role auto
    ("standalone", None, "auto", None, ("standalone", None)),
    ("primary", None, "auto", None, ("standalone", None)),
    ("master", None, "auto", None, ("standalone", None)),
    ("replica", URL, "auto", None, ("replica", URL)),
    ("replica", URL, "auto", URL2, ("replica", URL2)),
    ("replica", None, "auto", None, "primary URL isn't set in nodeinfo, but role is set to replica"),
    ("replica", None, "auto", URL, ("replica", URL)),
    ("standalone", None, "auto", URL, "cannot run as replica, was previously run as standalone"),
    ("primary", None, "auto", URL, "cannot run as replica, was previously run as primary"),
    ("standalone", URL, "auto", None, "primary URL set in nodeinfo, but role isn't set to replica"),
    # later starts, explicit roles
    ("standalone", None, "primary", None, ("primary", None)),
    ("primary", None, "primary", None, ("primary", None)),
    ("primary", None, "master", None, ("primary", None)),
    ("master", None, "primary", None, ("primary", None)),
    ("primary", None, "standalone", None, ("standalone", None)),
    ("replica", URL, "primary", None, ("primary", None)),
    ("replica", URL, "standalone", None, ("standalone", None)),
    ("replica", URL, "replica", None, ("replica", URL)),
    ("replica", URL, "replica", URL2, ("replica", URL2)),
    ("replica", None, "replica", None, "need to specify --primary-url to run as replica"),
    ("standalone", None, "replica", URL, "cannot run as replica, was previously run as standalone"),
    ("primary", None, "replica", URL, "cannot run as replica, was previously run as primary"),
    ("master", None, "replica", URL, "cannot run as replica, was previously run as primary"),
]


@pytest.mark.parametrize(("stored", "stored_url", "requested", "url", "expected"), RULES)
def test_role_rules(stored: str | None, stored_url: str | None, requested: str, url: str | None,
                    expected: tuple[str, str | None] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(RoleError, match=expected.replace("'", ".")):
            choose_role(stored, stored_url, requested, url)
    else:
        assert choose_role(stored, stored_url, requested, url) == RoleChoice(*expected)


def test_apply_role_keeps_identity_and_extra_fields() -> None:
    stored = NodeInfo(uuid="u" * 32, role="replica", primary_url=URL, primary_uuid="p" * 32,
                      extra={"plugin": 1})
    promoted = apply_role(stored, "primary", None)
    assert promoted == NodeInfo(uuid="u" * 32, role="primary", primary_url=None, primary_uuid="p" * 32,
                                extra={"plugin": 1})
    assert stored.role == "replica" and stored.primary_url == URL      # not changed in place
    assert apply_role(stored, "auto", None) == stored


def test_legacy_master_role_loads_as_primary(tmp_path: Path) -> None:
    tmp_path.joinpath(".nodeinfo").write_text(json.dumps({"uuid": "u" * 32, "role": "master"}))
    assert nodeinfo.load(tmp_path).role == "primary"


# -- first start and later starts of a server directory ------------------------------------------
def config(serverdir: Path, role: str = "auto", primary_url: str | None = None) -> Config:
    return Config(serverdir=serverdir, listen=("tcp:0",), role=role, primary_url=primary_url)


def stored_nodeinfo(serverdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((serverdir / ".nodeinfo").read_text())
    return data


@pytest.fixture
def cheap_init(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``initialise_in_child`` without the child process and the expensive root password hash."""
    roles: list[str] = []

    def initialise(cfg: Config, role: str = "standalone") -> None:
        roles.append(role)
        init_serverdir(cfg.serverdir, hasher=cheap_hash, make_secret=False, role=role)

    monkeypatch.setattr(tap, "initialise_in_child", initialise)
    return roles


def test_first_start_of_a_replica_creates_an_empty_directory(tmp_path: Path, cheap_init: list[str]) -> None:
    serverdir = tmp_path / "replica"
    node = tap.prepare_node(config(serverdir, primary_url=URL))
    assert cheap_init == []
    assert (node.role, node.primary_url, node.primary_uuid) == ("replica", URL, None)
    assert stored_nodeinfo(serverdir) == {"uuid": node.uuid, "role": "replica", "masterurl": URL}
    assert not (serverdir / ".secret").exists()      # a replica needs its primary's secret
    store = Store.open(serverdir, Clock())
    try:
        assert store.serial == -1
        assert store.get(user_key("root")) is None
    finally:
        store.close()
    # The next start keeps it a replica, from the stored URL alone.
    assert tap.prepare_node(config(serverdir)) == node


def test_first_start_of_a_primary(tmp_path: Path, cheap_init: list[str]) -> None:
    serverdir = tmp_path / "primary"
    node = tap.prepare_node(config(serverdir, role="master"))
    assert cheap_init == ["primary"]
    assert node.role == "primary"
    assert stored_nodeinfo(serverdir)["role"] == "primary"
    store = Store.open(serverdir, Clock())
    try:
        assert store.get(user_key("root")) is not None      # primaries get the initial state
    finally:
        store.close()
    # Without --role primary it runs (and is recorded) as standalone.
    assert tap.prepare_node(config(serverdir)).role == "standalone"
    assert stored_nodeinfo(serverdir)["role"] == "standalone"
    assert tap.prepare_node(config(serverdir, role="primary")).uuid == node.uuid


def test_role_conflicts_are_fatal_and_change_nothing(tmp_path: Path, cheap_init: list[str]) -> None:
    serverdir = tmp_path / "standalone"
    tap.prepare_node(config(serverdir))
    before = (serverdir / ".nodeinfo").read_bytes()
    with pytest.raises(RoleError, match="cannot run as replica, was previously run as standalone"):
        tap.prepare_node(config(serverdir, primary_url=URL))
    with pytest.raises(RoleError, match="cannot run as replica"):
        tap.prepare_node(config(serverdir, role="replica", primary_url=URL))
    assert (serverdir / ".nodeinfo").read_bytes() == before


def test_replica_can_be_promoted(tmp_path: Path, cheap_init: list[str]) -> None:
    serverdir = tmp_path / "replica"
    tap.prepare_node(config(serverdir, primary_url=URL))
    node = tap.prepare_node(config(serverdir, role="primary"))
    assert (node.role, node.primary_url) == ("primary", None)
    assert "masterurl" not in stored_nodeinfo(serverdir)


def test_replica_directory_with_journal_entries_is_refused(tmp_path: Path) -> None:
    serverdir = tmp_path / "half"
    init_serverdir(serverdir, hasher=cheap_hash, make_secret=False)
    (serverdir / ".nodeinfo").unlink()
    with pytest.raises(nodeinfo.ServerDirError, match="already holds journal entries"):
        init_serverdir(serverdir, role="replica", primary_url=URL)


def test_devpitx_init_for_a_replica(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serverdir = tmp_path / "replica"
    assert cli_main.main(["init", "--serverdir", str(serverdir), "--primary-url", URL + "/"]) == 0
    assert stored_nodeinfo(serverdir)["masterurl"] == URL
    assert stored_nodeinfo(serverdir)["role"] == "replica"
    assert cli_main.main(["init", "--serverdir", str(tmp_path / "x"), "--role", "replica"]) == 1
    assert "need to specify --primary-url" in capsys.readouterr().err
    assert cli_main.main(["init", "--serverdir", str(tmp_path / "y"), "--primary-url", URL,
                          "--master-url", URL]) == 1
    assert "Can't use both --master-url and --primary-url" in capsys.readouterr().err
    assert cli_main.main(["init", "--serverdir", str(tmp_path / "z"), "--primary-url", "http://u:pw@h"]) == 1
    assert "credentials" in capsys.readouterr().err

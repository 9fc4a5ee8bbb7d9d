"""Tests for devpitx.model.indexes: stage resolution order and index create/modify/delete."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.model.indexes import (
    StageError, create_index, delete_index, delete_user, get_stage, index_exists, modify_index, sro,
    split_index_name, stage_project_names,
)
from devpitx.model.ixconfig import NOOP_MESSAGE, root_pypi_config
from devpitx.model.releases import register
from devpitx.storage.keys import index_key, project_key, user_key, version_key
from devpitx.storage.store import Store

NOW = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = Clock()
    clock.advance(NOW)
    opened = Store.open(tmp_path / "srv", clock)
    try:
        yield opened
    finally:
        opened.close()


def stage(store: Store, name: str, **config: Any) -> None:
    user, index = name.split("/")
    with store.write() as tx:
        if tx.get(user_key(user)) is None:
            tx.set(user_key(user), {"created": "2024-01-01T00:00:00Z"})
        tx.set(index_key(user, index), {"type": "stage", "volatile": True, **config})


def mirror(store: Store, name: str) -> None:
    user, index = name.split("/")
    with store.write() as tx:
        tx.set(user_key(user), {"created": "2024-01-01T00:00:00Z"})
        tx.set(index_key(user, index), root_pypi_config())


def order(store: Store, name: str) -> list[str]:
    return [s.name for s in sro(store, *name.split("/"))]


# -- sro (model.md §6.1) ----------------------------------------------------------------
def test_sro_spec_example(store: Store) -> None:
    mirror(store, "root/pypi")
    stage(store, "u1/dev")
    stage(store, "u2/dev", bases=["u1/dev"])
    stage(store, "u3/dev", bases=["u2/dev", "root/pypi"])
    assert order(store, "u3/dev") == ["u3/dev", "u2/dev", "u1/dev", "root/pypi"]


def test_sro_breadth_first_and_mirrors_last_in_discovery_order(store: Store) -> None:
    mirror(store, "m/one")
    mirror(store, "m/two")
    stage(store, "a/deep", bases=["m/one"])
    stage(store, "a/left", bases=["a/deep", "m/two"])
    stage(store, "a/right", bases=["m/one"])
    stage(store, "a/top", bases=["a/left", "a/right"])
    assert order(store, "a/top") == ["a/top", "a/left", "a/right", "a/deep", "m/two", "m/one"]


def test_sro_diamond_visits_each_index_once(store: Store) -> None:
    stage(store, "u/base")
    stage(store, "u/b1", bases=["u/base"])
    stage(store, "u/b2", bases=["u/base"])
    stage(store, "u/top", bases=["u/b1", "u/b2", "u/b1"])
    assert order(store, "u/top") == ["u/top", "u/b1", "u/b2", "u/base"]


def test_sro_cycles_and_self_base(store: Store) -> None:
    stage(store, "u/a", bases=["u/b", "u/a"])
    stage(store, "u/b", bases=["u/a"])
    assert order(store, "u/a") == ["u/a", "u/b"]
    assert order(store, "u/b") == ["u/b", "u/a"]


def test_sro_skips_missing_and_malformed_bases(store: Store) -> None:
    stage(store, "u/base")
    stage(store, "u/dev", bases=["gone/away", "nonsense", "u/base", 7])
    assert order(store, "u/dev") == ["u/dev", "u/base"]


def test_sro_of_a_mirror_and_of_nothing(store: Store) -> None:
    mirror(store, "root/pypi")
    assert order(store, "root/pypi") == ["root/pypi"]
    assert order(store, "no/such") == []


def test_split_index_name() -> None:
    assert split_index_name("u/i") == ("u", "i")
    for bad in ("u", "u/", "/i", "u/i/x", ""):
        assert split_index_name(bad) is None


# -- create ----------------------------------------------------------------------------
def test_create_stores_defaults_and_validates_bases(store: Store) -> None:
    mirror(store, "root/pypi")
    with store.write() as tx:
        tx.set(user_key("alice"), {"created": "x"})
        config = create_index(tx, "alice", "dev", {"bases": "root/pypi"}, create_owner=False, now=NOW)
    assert store.get(index_key("alice", "dev")) == config
    assert config["bases"] == ["root/pypi"]
    assert index_exists(store, "alice/dev")


@pytest.mark.parametrize(("user", "index", "body", "code", "message"), [
    ("root", "pypi", {}, 409, "index 'root/pypi' exists"),
    ("root", "..", {}, 400, "indexname '..' contains characters that aren't allowed. "
                            "Any ascii symbol besides -.@_ is blocked."),
    ("root", "x" * 201, {}, 400, "indexname is too long: 201 bytes, at most 200 are allowed."),
    ("root", "dev", {"bases": "no/where"}, 400, "base index 'no/where' does not exist"),
    ("root", "dev", ["a"], 400, "index configuration must be a JSON object"),
    ("nobody", "dev", {}, 404, "no user 'nobody'"),
])
def test_create_refusals_change_nothing(store: Store, user: str, index: str, body: Any, code: int,
                                        message: str) -> None:
    mirror(store, "root/pypi")
    serial = store.serial
    with pytest.raises(StageError) as info, store.write() as tx:
        create_index(tx, user, index, body, create_owner=False, now=NOW)
    assert (info.value.code, info.value.message) == (code, message)
    assert store.serial == serial


def test_create_can_create_the_owner(store: Store) -> None:
    with store.write() as tx:
        create_index(tx, "plugged", "dev", {}, create_owner=True, now=NOW)
    assert store.get(user_key("plugged")) == {"created": "2023-11-14T22:13:20Z"}


def test_created_owner_name_is_validated(store: Store) -> None:
    with pytest.raises(StageError) as info, store.write() as tx:
        create_index(tx, "a:b", "dev", {}, create_owner=True, now=NOW)
    assert info.value.code == 400
    assert store.get(user_key("a:b")) is None


# -- modify ----------------------------------------------------------------------------
def test_modify_and_noop(store: Store) -> None:
    stage(store, "u/dev")
    with store.write() as tx:
        config = modify_index(tx, "u", "dev", {"title": "T"}, error_on_noop=True)
    assert store.get(index_key("u", "dev")) == config
    assert config["title"] == "T"
    serial = store.serial
    with store.write() as tx:
        assert modify_index(tx, "u", "dev", ["title=T"], error_on_noop=False) == config
    assert store.serial == serial
    with pytest.raises(StageError) as info, store.write() as tx:
        modify_index(tx, "u", "dev", ["title=T"], error_on_noop=True)
    assert (info.value.code, info.value.message) == (400, NOOP_MESSAGE)


def test_modify_missing_and_invalid(store: Store) -> None:
    stage(store, "u/dev")
    with pytest.raises(StageError) as info, store.write() as tx:
        modify_index(tx, "u", "nope", {}, error_on_noop=False)
    assert info.value.code == 404
    with pytest.raises(StageError) as info, store.write() as tx:
        modify_index(tx, "u", "dev", {"type": "mirror"}, error_on_noop=False)
    assert (info.value.code, info.value.message) == (400, "the 'type' of an index can't be changed")


# -- delete ----------------------------------------------------------------------------
def test_delete_removes_projects(store: Store) -> None:
    stage(store, "u/dev")
    with store.write() as tx:
        register(tx, "u", "dev", {"name": "pkg", "version": "1.0"}, full=True)
    with store.write() as tx:
        delete_index(tx, "u", "dev", NOW)
    for key in (index_key("u", "dev"), project_key("u", "dev", "pkg"), version_key("u", "dev", "pkg", "1.0")):
        assert store.get(key) is None


def test_delete_refuses_non_volatile_and_missing(store: Store) -> None:
    stage(store, "u/dev", volatile=False)
    stage(store, "u/old")
    with store.write() as tx:      # a configuration without the key counts as protected
        tx.set(index_key("u", "old"), {"type": "stage"})
    for index, code in (("dev", 403), ("old", 403), ("nope", 404)):
        with pytest.raises(StageError) as info, store.write() as tx:
            delete_index(tx, "u", index, NOW)
        assert info.value.code == code


def test_delete_user_cascades_or_refuses_as_a_whole(store: Store) -> None:
    stage(store, "u/a")
    stage(store, "u/b", volatile=False)
    serial = store.serial
    with pytest.raises(StageError) as info, store.write() as tx:
        delete_user(tx, "u", NOW)
    assert (info.value.code, info.value.message) == (403, "user 'u' has non-volatile index: b")
    assert store.serial == serial
    with store.write() as tx:
        tx.set(index_key("u", "b"), {"type": "stage", "volatile": True})
    with store.write() as tx:
        delete_user(tx, "u", NOW)
    assert store.get(user_key("u")) is None
    assert list(store.children("index/u")) == []
    with pytest.raises(StageError) as info, store.write() as tx:
        delete_user(tx, "u", NOW)
    assert info.value.code == 404


def test_stage_project_names(store: Store) -> None:
    stage(store, "u/dev")
    mirror(store, "root/pypi")
    with store.write() as tx:
        register(tx, "u", "dev", {"name": "Zed", "version": "1"}, full=True)
        register(tx, "u", "dev", {"name": "abc", "version": "1"}, full=True)
        tx.set("mirrorlinks/root/pypi/cached", {"links": []})
    dev = get_stage(store, "u", "dev")
    pypi = get_stage(store, "root", "pypi")
    assert dev is not None and pypi is not None
    assert stage_project_names(store, dev) == ["abc", "zed"]
    assert stage_project_names(store, pypi) == ["cached"]

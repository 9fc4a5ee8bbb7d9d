"""Tests for devpitx.model.users: body checks, create/modify records, views."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from devpitx.model.users import (
    EPOCH_TIMESTAMP, UserError, UserUpdate, check_user_name, create_user, get_user, is_password_only, modify_user,
    parse_new_user, parse_user_patch, replace_pwhash, user_config_view,
)
from devpitx.storage.keys import index_key, user_key
from devpitx.storage.store import Store
from tests.helpers.testserver import cheap_hash

NOW = 1_700_000_000.0
LATER = NOW + 3600


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = Clock()
    clock.advance(NOW)
    opened = Store.open(tmp_path / "srv", clock)
    with opened.write() as tx:
        tx.set(user_key("alice"), {"pwhash": "old", "email": "a@example.org", "created": "2024-01-01T00:00:00Z"})
    try:
        yield opened
    finally:
        opened.close()


def refusal(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(UserError) as info:
        fn(*args)
    return info.value.code, info.value.message


# -- PUT bodies ---------------------------------------------------------------------------
def test_parse_new_user(store: Store) -> None:
    update = parse_new_user(store, "bob", {"password": "pw", "title": "", "custom_data": [1],
                                           "indexes": {"x": {}}, "username": "eve"})
    assert update == UserUpdate(password="pw", pwhash=None, info={"title": "", "custom_data": [1]})
    assert update.needs_hashing and update.sets_password


def test_parse_new_user_order_of_checks(store: Store) -> None:
    # reference order: exists, password, name, unknown keys
    assert refusal(parse_new_user, store, "alice", {"bogus": 1}) == (409, "user already exists")
    assert refusal(parse_new_user, store, "a:b", {"bogus": 1})[1] == "password needs to be set"
    assert refusal(parse_new_user, store, "a:b", {"password": "x", "bogus": 1})[1].startswith("username 'a:b'")
    assert refusal(parse_new_user, store, "bob", {"password": "x", "b": 1, "a": 2}) == (
        400, "Unknown keys in user config: a, b")


def test_pwhash_must_be_argon2(store: Store) -> None:
    good = cheap_hash("x")
    update = parse_new_user(store, "bob", {"password": "ignored", "pwhash": good})
    assert update.pwhash == good and not update.needs_hashing
    for bad in ("abc", "$argon2id$v=19$m=x", "0" * 64, ["x"]):
        assert refusal(parse_new_user, store, "bob", {"password": "", "pwhash": bad})[0] == 400


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "a\x00", "x" * 201, "\ud800"])
def test_invalid_user_names(name: str) -> None:
    assert refusal(check_user_name, name)[0] == 400


@pytest.mark.parametrize("name", ["föö", "😀", "foo@bar42", "a.b-c_d", "x" * 200])
def test_valid_user_names(name: str) -> None:
    check_user_name(name)


# -- PATCH bodies -------------------------------------------------------------------------
def test_patch_ignores_unknown_keys_and_tells_password_only() -> None:
    update = parse_user_patch({"email": "", "created": "x", "indexes": {}, "password": "p"})
    assert update == UserUpdate(password="p", info={"email": ""})
    assert is_password_only({"password": "p"})
    assert not is_password_only({"password": "p", "email": "e"})
    assert not is_password_only(["password"])
    assert refusal(parse_user_patch, ["password"]) == (400, "user configuration must be a JSON object")
    assert refusal(parse_user_patch, {"description": 3}) == (400, "'description' must be a string")


def test_modify_sets_modified_and_removes_false_values(store: Store) -> None:
    with store.write() as tx:
        changed = modify_user(tx, "alice", UserUpdate(info={"email": None, "title": "T"}), None, LATER)
    assert changed
    assert store.get(user_key("alice")) == {"pwhash": "old", "title": "T", "created": "2024-01-01T00:00:00Z",
                                            "modified": "2023-11-14T23:13:20Z"}


def test_modify_without_change_writes_nothing(store: Store) -> None:
    serial = store.serial
    with store.write() as tx:
        assert not modify_user(tx, "alice", UserUpdate(info={"email": "a@example.org", "title": ""}), None, LATER)
    assert store.serial == serial


def test_modify_password_drops_legacy_salt_and_dates_old_records(store: Store) -> None:
    with store.write() as tx:
        tx.set(user_key("old"), {"pwhash": "f" * 64, "pwsalt": "salt"})
    with store.write() as tx:
        modify_user(tx, "old", UserUpdate(password="new"), "newhash", LATER)
    record = store.get(user_key("old"))
    assert record == {"pwhash": "newhash", "created": EPOCH_TIMESTAMP, "modified": "2023-11-14T23:13:20Z"}


def test_given_pwhash_wins_over_password(store: Store) -> None:
    with store.write() as tx:
        modify_user(tx, "alice", UserUpdate(password="p", pwhash="given"), "computed", LATER)
    assert get_user(store, "alice") == {"pwhash": "given", "created": "2024-01-01T00:00:00Z",
                                        "email": "a@example.org", "modified": "2023-11-14T23:13:20Z"}


def test_modify_missing_user(store: Store) -> None:
    with pytest.raises(UserError) as info, store.write() as tx:
        modify_user(tx, "nobody", UserUpdate(), None, LATER)
    assert (info.value.code, info.value.message) == (404, "no user 'nobody'")


# -- create, rehash, view -------------------------------------------------------------------
def test_create_user(store: Store) -> None:
    with store.write() as tx:
        create_user(tx, "bob", "hash", {"email": "b@example.org", "title": "", "custom_data": None}, NOW)
    assert store.get(user_key("bob")) == {"pwhash": "hash", "email": "b@example.org",
                                          "created": "2023-11-14T22:13:20Z"}
    with pytest.raises(UserError) as info, store.write() as tx:
        create_user(tx, "bob", None, {}, NOW)
    assert info.value.code == 409


def test_replace_pwhash_only_if_unchanged(store: Store) -> None:
    with store.write() as tx:
        assert not replace_pwhash(tx, "alice", "other", "new")
        assert not replace_pwhash(tx, "nobody", "old", "new")
        assert replace_pwhash(tx, "alice", "old", "new")
    assert get_user(store, "alice") == {"pwhash": "new", "email": "a@example.org",
                                        "created": "2024-01-01T00:00:00Z"}


def test_user_config_view(store: Store) -> None:
    with store.write() as tx:
        tx.set(index_key("alice", "dev"), {"type": "stage", "volatile": True})
    assert user_config_view(store, "alice") == {
        "username": "alice", "email": "a@example.org", "created": "2024-01-01T00:00:00Z",
        "indexes": {"dev": {"type": "stage", "volatile": True}},
    }
    assert user_config_view(store, "nobody") is None

"""Tests for devpitx.model.ixconfig: index configuration create/modify rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpitx.model.ixconfig import (
    DEFAULT_CACHE_EXPIRY_SECONDS,
    DEFAULT_MIRROR_URL,
    DEFAULT_MIRROR_WEB_URL_FMT,
    MESSAGE_SEPARATOR,
    NOOP_MESSAGE,
    ConfigError,
    cache_expiry_seconds,
    modify_index_config,
    new_index_config,
    parse_acl_list,
    parse_boolean,
    parse_list,
    root_pypi_config,
    toxresult_upload_acl,
    whitelist_inheritance,
)

EXISTING = {"root/pypi", "foo/prod", "foo/dev", "bar/base"}
UPSTREAM = "https://upstream.example/simple/"


def exists(name: str) -> bool:
    return name in EXISTING


def create(body: dict[str, Any], owner: str = "foo") -> dict[str, Any]:
    return new_index_config(owner, body, base_exists=exists)


def modify(current: dict[str, Any], body: Any, owner: str = "foo") -> dict[str, Any]:
    return modify_index_config(current, body, owner=owner, base_exists=exists)


def error_of(fn: Any, *args: Any) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return str(info.value)


STAGE_DEFAULTS = {
    "type": "stage",
    "volatile": True,
    "bases": [],
    "acl_upload": ["foo"],
    "acl_toxresult_upload": [":ANONYMOUS:"],
    "mirror_whitelist": [],
    "mirror_whitelist_inheritance": "intersection",
}


# --- constants --------------------------------------------------------------


def test_default_mirror_url_is_an_https_simple_index() -> None:
    parts = urlsplit(DEFAULT_MIRROR_URL)
    assert parts.scheme == "https"
    assert parts.netloc
    assert parts.path == "/simple/"


def test_web_url_format_is_derived_from_the_mirror_url() -> None:
    parts = urlsplit(DEFAULT_MIRROR_URL)
    assert DEFAULT_MIRROR_WEB_URL_FMT == f"{parts.scheme}://{parts.netloc}/project/{{name}}/"
    assert DEFAULT_MIRROR_WEB_URL_FMT.format(name="pkg").endswith("/project/pkg/")


def test_root_pypi_config() -> None:
    assert root_pypi_config() == {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": DEFAULT_MIRROR_URL,
        "mirror_web_url_fmt": DEFAULT_MIRROR_WEB_URL_FMT,
    }
    # a fresh dict each time: callers may store and mutate it
    assert root_pypi_config() is not root_pypi_config()


def test_noop_message() -> None:
    assert NOOP_MESSAGE == "The requested modifications resulted in no changes"


def test_messages_are_joined_with_comma_space() -> None:
    assert MESSAGE_SEPARATOR == ", "
    err = ConfigError(["a", "b"])
    assert str(err) == "a, b" and err.messages == ["a", "b"] and err.message == "a, b"
    assert ConfigError("one").messages == ["one"]
    assert isinstance(err, ValueError)


# --- value parsing (model.md §3.4) --------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("True", True), ("true", True), ("YES", True), ("yes", True),
     ("False", False), ("false", False), ("no", False), ("No", False)],
)
def test_parse_boolean(value: Any, expected: bool) -> None:
    assert parse_boolean(value) is expected


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "Unknown boolean value 0."), (1, "Unknown boolean value 1."),
     (None, "Unknown boolean value None."), (1.5, "Unknown boolean value 1.5."),
     ("0", "Unknown boolean value '0'."), ("", "Unknown boolean value ''."),
     ("on", "Unknown boolean value 'on'.")],
)
def test_parse_boolean_refuses(value: Any, message: str) -> None:
    assert error_of(parse_boolean, value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", []), ("a", ["a"]), (" a , b ,,c, ", ["a", "b", "c"]), (["x", "y"], ["x", "y"]),
     (("x",), ["x"]), ({"b", "a"}, ["a", "b"]), ([], [])],
)
def test_parse_list(value: Any, expected: list[str]) -> None:
    assert parse_list(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [(1, "Unknown list value 1."), (None, "Unknown list value None."),
     ({"a": 1}, "Unknown list value {'a': 1}."), ([1], "Unknown list value [1].")],
)
def test_parse_list_refuses(value: Any, message: str) -> None:
    assert error_of(parse_list, value) == message


def test_parse_acl_list_uppercases_special_principals() -> None:
    assert parse_acl_list([":anonymous:"]) == [":ANONYMOUS:"]
    assert parse_acl_list(":Authenticated:, alice, :group") == [":AUTHENTICATED:", "alice", ":group"]
    assert parse_acl_list(["Alice"]) == ["Alice"]


# --- creation (model.md §3.2, §3.3, §3.5) --------------------------------------


def test_put_empty_body_gives_stage_defaults() -> None:
    assert create({}) == STAGE_DEFAULTS


def test_owner_is_the_default_uploader() -> None:
    assert create({}, owner="alice")["acl_upload"] == ["alice"]


def test_projects_in_body_is_ignored() -> None:
    assert create({"projects": ["a"]}) == STAGE_DEFAULTS


def test_values_given_as_strings_like_devpi_client_sends_them() -> None:
    config = create({"bases": "foo/prod,root/pypi", "volatile": "False",
                     "acl_upload": "foo, :anonymous:", "mirror_whitelist": "he_llo,Django",
                     "mirror_whitelist_inheritance": "UNION", "title": "Dev"})
    assert config == {
        **STAGE_DEFAULTS,
        "bases": ["foo/prod", "root/pypi"],
        "volatile": False,
        "acl_upload": ["foo", ":ANONYMOUS:"],
        "mirror_whitelist": ["he-llo", "django"],
        "mirror_whitelist_inheritance": "union",
        "title": "Dev",
    }


def test_whitelist_is_normalized_except_star() -> None:
    assert create({"mirror_whitelist": "he_llo,Django"})["mirror_whitelist"] == ["he-llo", "django"]
    assert create({"mirror_whitelist": ["*", "Foo.Bar"]})["mirror_whitelist"] == ["*", "foo-bar"]


def test_acl_toxresult_upload_special_principal() -> None:
    config = create({"acl_toxresult_upload": [":anonymous:"]})
    assert config["acl_toxresult_upload"] == [":ANONYMOUS:"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/root/pypi", ["root/pypi"]), ("root/pypi/", ["root/pypi"]), ([" /foo/prod/ "], ["foo/prod"]),
     ("", []), (["root/pypi", "foo/dev"], ["root/pypi", "foo/dev"])],
)
def test_bases_are_stripped(value: Any, expected: list[str]) -> None:
    assert create({"bases": value})["bases"] == expected


def test_bases_errors_are_reported_together() -> None:
    message = error_of(create, {"bases": "not/exists,root,root/pypi,a/b/c,//"})
    assert message == (
        "base index 'not/exists' does not exist, "
        "invalid base index spec: 'root', "
        "invalid base index spec: 'a/b/c', "
        "invalid base index spec: '//'"
    )


def test_single_missing_base() -> None:
    assert error_of(create, {"bases": ["not/exists"]}) == "base index 'not/exists' does not exist"


def test_free_form_keys_are_stored_as_given() -> None:
    custom = {"nested": [1, {"x": None}]}
    config = create({"title": "T", "description": 5, "custom_data": custom})
    assert config["title"] == "T" and config["description"] == 5 and config["custom_data"] == custom
    config["custom_data"]["nested"].append(2)
    assert custom == {"nested": [1, {"x": None}]}


def test_unknown_type() -> None:
    assert error_of(create, {"type": "foo"}) == "unknown index type 'foo'"
    assert error_of(create, {"type": 3}) == "unknown index type 3"


def test_unknown_keys() -> None:
    assert error_of(create, {"foo": "bar"}) == "indexconfig got unexpected keyword arguments: foo=bar"
    assert error_of(create, {"foo": "bar", "x": 1}) == (
        "indexconfig got unexpected keyword arguments: foo=bar, x=1"
    )


def test_mirror_keys_are_unknown_for_a_stage() -> None:
    assert error_of(create, {"mirror_url": UPSTREAM}) == (
        f"indexconfig got unexpected keyword arguments: mirror_url={UPSTREAM}"
    )


def test_boolean_error_at_creation() -> None:
    assert error_of(create, {"volatile": 0}) == "Unknown boolean value 0."
    assert error_of(create, {"volatile": "maybe"}) == "Unknown boolean value 'maybe'."


def test_legacy_pypi_whitelist_is_dropped_for_stages() -> None:
    assert create({"pypi_whitelist": ["x"]}) == STAGE_DEFAULTS


def test_whitelist_inheritance_choices() -> None:
    assert create({"mirror_whitelist_inheritance": "Intersection"})["mirror_whitelist_inheritance"] == (
        "intersection"
    )
    assert error_of(create, {"mirror_whitelist_inheritance": "both"}) == (
        "Unknown value 'both' for mirror_whitelist_inheritance, must be 'intersection' or 'union'."
    )
    assert error_of(create, {"mirror_whitelist_inheritance": 1}) == (
        "Unknown value 1 for mirror_whitelist_inheritance, must be 'intersection' or 'union'."
    )


def test_all_value_problems_are_reported_together() -> None:
    message = error_of(create, {"volatile": "x", "bases": "not/exists", "unknown": 1})
    assert message == (
        "Unknown boolean value 'x'., base index 'not/exists' does not exist, "
        "indexconfig got unexpected keyword arguments: unknown=1"
    )


def test_body_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError):
        new_index_config("foo", ["a"], base_exists=exists)  # type: ignore[arg-type]


def test_mirror_creation_example() -> None:
    assert create({"type": "mirror", "mirror_url": DEFAULT_MIRROR_URL}) == {
        "type": "mirror", "mirror_url": DEFAULT_MIRROR_URL, "volatile": True,
    }


def test_mirror_drops_stage_only_keys() -> None:
    config = create({"type": "mirror", "mirror_url": UPSTREAM, "bases": "not/exists",
                     "acl_upload": ["x"], "mirror_whitelist": ["*"], "pypi_whitelist": []})
    assert config == {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True}


def test_mirror_without_url_is_refused() -> None:
    assert error_of(create, {"type": "mirror"}) == "'mirror_url' option must be set for a mirror index."


def test_mirror_options() -> None:
    config = create({
        "type": "mirror", "mirror_url": "http://user:pw@upstream.example/simple",
        "mirror_cache_expiry": "60", "mirror_no_project_list": "yes",
        "mirror_use_external_urls": True, "mirror_ignore_serial_header": "False",
        "mirror_web_url_fmt": "https://upstream.example/p/{name}", "volatile": "no",
        "title": "Up", "description": "d", "custom_data": {"k": 1},
    })
    assert config == {
        "type": "mirror", "mirror_url": "http://user:pw@upstream.example/simple",
        "mirror_cache_expiry": 60, "mirror_no_project_list": True,
        "mirror_use_external_urls": True, "mirror_ignore_serial_header": False,
        "mirror_web_url_fmt": "https://upstream.example/p/{name}", "volatile": False,
        "title": "Up", "description": "d", "custom_data": {"k": 1},
    }


@pytest.mark.parametrize(
    "url", ["ftp://upstream.example/", "upstream.example/simple", "", "http://", "https:// x/",
            "https://upstream.example/\n", 5, None, "HTTP://upstream.example/", "http://[::1/"],
)
def test_mirror_url_must_be_a_url(url: Any) -> None:
    assert error_of(create, {"type": "mirror", "mirror_url": url}) == "'mirror_url' option must be a URL."


@pytest.mark.parametrize(("value", "expected"), [(30, 30), ("30", 30), (" 45 ", 45), (60.0, 60), (0, 0)])
def test_mirror_cache_expiry(value: Any, expected: int) -> None:
    config = create({"type": "mirror", "mirror_url": UPSTREAM, "mirror_cache_expiry": value})
    assert config["mirror_cache_expiry"] == expected


@pytest.mark.parametrize("value", ["abc", "1.5", 1.5, True, None, [], ""])
def test_mirror_cache_expiry_must_be_an_integer(value: Any) -> None:
    assert error_of(create, {"type": "mirror", "mirror_url": UPSTREAM, "mirror_cache_expiry": value}) == (
        "'mirror_cache_expiry' option must be an integer"
    )


def test_stage_keys_unknown_for_mirror_are_refused() -> None:
    assert error_of(create, {"type": "mirror", "mirror_url": UPSTREAM, "mirror_whitelist_inheritance": "union"}) == (
        "indexconfig got unexpected keyword arguments: mirror_whitelist_inheritance=union"
    )


@given(st.dictionaries(st.sampled_from(["volatile", "bases", "acl_upload", "mirror_whitelist", "title",
                                        "mirror_whitelist_inheritance", "junk", "type"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=12)
                       | st.lists(st.text(max_size=6), max_size=3)))
def test_creation_either_succeeds_or_raises_config_error(body: dict[str, Any]) -> None:
    try:
        config = create(body)
    except ConfigError as exc:
        assert exc.messages and all(isinstance(m, str) and m for m in exc.messages)
        return
    assert config["type"] in ("stage", "mirror")
    assert isinstance(config["volatile"], bool)
    assert all(base in EXISTING for base in config.get("bases", []))


# --- dict PATCH (model.md §3.6, http-api.md §3.7.4) ----------------------------


def stage(**extra: Any) -> dict[str, Any]:
    return {**STAGE_DEFAULTS, **extra}


def test_patch_changes_only_given_keys() -> None:
    current = stage(title="old", bases=["root/pypi"])
    new = modify(current, {"volatile": "false"})
    assert new == stage(title="old", bases=["root/pypi"], volatile=False)
    assert current == stage(title="old", bases=["root/pypi"])


def test_patch_unwraps_a_get_envelope() -> None:
    current = stage()
    body = {"type": "indexconfig", "result": {**stage(title="new"), "projects": ["a", "b"]}}
    assert modify(current, body) == stage(title="new")


def test_patch_with_same_type_is_accepted_and_other_type_refused() -> None:
    assert modify(stage(), {"type": "stage", "title": "t"}) == stage(title="t")
    assert error_of(modify, stage(), {"type": "mirror"}) == "the 'type' of an index can't be changed"


def test_patch_ignores_projects() -> None:
    assert modify(stage(), {"projects": ["x"]}) == stage()


def test_patch_refuses_unknown_keys() -> None:
    assert error_of(modify, stage(), {"foo": 1}) == "indexconfig got unexpected keyword arguments: foo=1"


def test_patch_validates_values() -> None:
    assert error_of(modify, stage(), {"volatile": 0}) == "Unknown boolean value 0."
    assert error_of(modify, stage(), {"bases": "/not/exists"}) == "base index '/not/exists' does not exist"


def test_patch_keeps_unknown_stored_keys() -> None:
    current = stage(plugin_key={"x": 1})
    assert modify(current, {"title": "t"}) == stage(plugin_key={"x": 1}, title="t")


def test_patch_removes_legacy_pypi_whitelist() -> None:
    assert modify(stage(pypi_whitelist=["a"]), {}) == stage()
    mirror = {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True, "pypi_whitelist": []}
    assert modify(mirror, {"volatile": False}) == {"type": "mirror", "mirror_url": UPSTREAM, "volatile": False}


def test_patch_does_not_recheck_existing_bases() -> None:
    # foo/gone was deleted after it became a base: unrelated changes still work
    current = stage(bases=["foo/gone"])
    assert modify(current, {"title": "t"}) == stage(bases=["foo/gone"], title="t")
    assert modify(current, {"bases": ["foo/gone", "root/pypi"]})["bases"] == ["foo/gone", "root/pypi"]
    assert error_of(modify, current, {"bases": ["foo/gone", "bar/gone"]}) == "base index 'bar/gone' does not exist"


def test_patch_fills_missing_defaults_of_old_indexes() -> None:
    old = {"type": "stage", "volatile": True, "bases": [], "acl_upload": ["foo"], "mirror_whitelist": []}
    new = modify(old, {"title": "t"})
    assert new["acl_toxresult_upload"] == [":ANONYMOUS:"]
    # an old index behaved as "union"; a modification must not change that
    assert new["mirror_whitelist_inheritance"] == "union"
    assert old == {"type": "stage", "volatile": True, "bases": [], "acl_upload": ["foo"], "mirror_whitelist": []}


def test_patch_result_equals_current_for_a_noop() -> None:
    current = stage(title="t")
    assert modify(current, {"title": "t"}) == current
    assert modify(current, {}) == current


def test_patch_of_unknown_type_index_is_refused() -> None:
    assert error_of(modify, {"type": "plugin"}, {"title": "x"}) == "unknown index type 'plugin'"


def test_patch_mirror() -> None:
    current = {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True}
    assert modify(current, {"mirror_cache_expiry": "10", "bases": ["x/y"]}) == {
        **current, "mirror_cache_expiry": 10,
    }
    assert error_of(modify, current, {"mirror_url": "nope"}) == "'mirror_url' option must be a URL."


def test_patch_envelope_with_bad_result() -> None:
    with pytest.raises(ConfigError):
        modify(stage(), {"type": "indexconfig", "result": ["x"]})


def test_patch_body_must_be_object_or_list() -> None:
    with pytest.raises(ConfigError):
        modify(stage(), "volatile=False")
    with pytest.raises(ConfigError):
        modify(stage(), 5)


# --- operation-list PATCH (http-api.md §3.7.4) --------------------------------


def test_ops_set_values_with_string_parsing() -> None:
    new = modify(stage(), ["volatile=False", "bases=root/pypi,foo/prod", "title=Hello = World",
                           "acl_upload=foo,:anonymous:", "mirror_whitelist=he_llo"])
    assert new == stage(volatile=False, bases=["root/pypi", "foo/prod"], title="Hello = World",
                        acl_upload=["foo", ":ANONYMOUS:"], mirror_whitelist=["he-llo"])


def test_ops_empty_set_gives_empty_list_or_value() -> None:
    new = modify(stage(bases=["root/pypi"], title="x"), ["bases=", "title="])
    assert new == stage(bases=[], title="")
    assert error_of(modify, stage(), ["volatile="]) == "Unknown boolean value ''."


def test_ops_add_and_remove() -> None:
    new = modify(stage(), ["bases+=root/pypi"])
    assert new["bases"] == ["root/pypi"]
    assert modify(new, ["bases-=root/pypi"])["bases"] == []
    new = modify(stage(), ["mirror_whitelist+=foo", "mirror_whitelist+=bar"])
    assert new["mirror_whitelist"] == ["foo", "bar"]
    assert modify(new, ["mirror_whitelist-=foo"])["mirror_whitelist"] == ["bar"]


def test_ops_remove_absent_value() -> None:
    current = stage(mirror_whitelist=["bar"])
    assert error_of(modify, current, ["mirror_whitelist-=foo"]) == (
        "The 'mirror_whitelist' setting doesn't have value 'foo'"
    )


def test_ops_add_is_idempotent_and_normalized() -> None:
    current = stage(mirror_whitelist=["he-llo"], acl_upload=["foo"], bases=["root/pypi"])
    new = modify(current, ["mirror_whitelist+=He_llo", "acl_upload+=foo", "bases+=/root/pypi/",
                           "acl_toxresult_upload+=:anonymous:"])
    assert new == current


def test_ops_remove_matches_normalized_value() -> None:
    current = stage(mirror_whitelist=["he-llo"], acl_upload=["foo", ":AUTHENTICATED:"], bases=["root/pypi"])
    new = modify(current, ["mirror_whitelist-=He_llo", "acl_upload-=:authenticated:", "bases-=/root/pypi"])
    assert new == stage(mirror_whitelist=[], acl_upload=["foo"], bases=[])


def test_ops_add_checks_new_bases() -> None:
    assert error_of(modify, stage(), ["bases+=not/exists"]) == "base index 'not/exists' does not exist"
    assert error_of(modify, stage(), ["bases+=nobase"]) == "invalid base index spec: 'nobase'"


def test_ops_add_empty_value_changes_nothing() -> None:
    assert modify(stage(), ["acl_upload+="]) == stage()


def test_ops_add_to_missing_list_starts_empty() -> None:
    current = {"type": "stage", "volatile": True}
    assert modify(current, ["mirror_whitelist+=x"])["mirror_whitelist"] == ["x"]


def test_ops_remove_from_missing_key_is_refused() -> None:
    mirror = {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True}
    assert error_of(modify, mirror, ["mirror_whitelist-=x"]) == (
        "The 'mirror_whitelist' setting doesn't have value 'x'"
    )


def test_ops_drop_optional_keys() -> None:
    current = stage(title="t", description="d", custom_data={"a": 1})
    assert modify(current, ["title-=", "description-=", "custom_data-="]) == stage()
    # dropping what isn't there is fine
    assert modify(stage(), ["title-="]) == stage()


@pytest.mark.parametrize("key", ["volatile", "bases", "acl_upload", "acl_toxresult_upload",
                                 "mirror_whitelist", "mirror_whitelist_inheritance", "type"])
def test_ops_cannot_drop_default_keys(key: str) -> None:
    assert error_of(modify, stage(), [f"{key}-="]) == "Default values can't be removed."


def test_ops_mirror_defaults_and_optional_keys() -> None:
    current = {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True, "mirror_cache_expiry": 5,
               "mirror_web_url_fmt": "x"}
    assert modify(current, ["mirror_cache_expiry-=", "mirror_web_url_fmt-="]) == {
        "type": "mirror", "mirror_url": UPSTREAM, "volatile": True,
    }
    assert error_of(modify, current, ["volatile-="]) == "Default values can't be removed."
    assert error_of(modify, current, ["mirror_url-="]) == "'mirror_url' option must be set for a mirror index."
    assert modify(current, ["volatile=False"])["volatile"] is False


def test_ops_type_rules() -> None:
    assert modify(stage(), ["type=stage"]) == stage()
    assert error_of(modify, stage(), ["type=mirror"]) == "the 'type' of an index can't be changed"
    assert error_of(modify, stage(), ["type+=x"]) == "The 'type' setting is not a list"


def test_ops_add_to_non_list_key_is_refused() -> None:
    assert error_of(modify, stage(), ["volatile+=x"]) == "The 'volatile' setting is not a list"
    assert error_of(modify, stage(), ["title-=x"]) == "The 'title' setting is not a list"


def test_ops_unknown_keys() -> None:
    assert error_of(modify, stage(), ["foo=bar"]) == "indexconfig got unexpected keyword arguments: foo=bar"
    assert error_of(modify, stage(), ["foo+=bar"]) == "indexconfig got unexpected keyword arguments: foo=bar"


def test_ops_preserve_unknown_stored_keys_for_add_remove_drop() -> None:
    current = stage(plugin_key="x", mirror_whitelist=["a"])
    new = modify(current, ["mirror_whitelist+=b", "mirror_whitelist-=a", "title-="])
    assert new == stage(plugin_key="x", mirror_whitelist=["b"])
    assert modify(current, ["plugin_key-="]) == stage(mirror_whitelist=["a"])


def test_ops_with_a_set_refuse_unknown_stored_keys() -> None:
    current = stage(plugin_key="x")
    assert error_of(modify, current, ["title=t"]) == (
        "indexconfig got unexpected keyword arguments: plugin_key=x"
    )


def test_ops_item_without_equals_sets_empty_value() -> None:
    assert modify(stage(title="x"), ["title"]) == stage(title="")


def test_ops_ignore_projects_and_stage_keys_on_mirrors() -> None:
    mirror = {"type": "mirror", "mirror_url": UPSTREAM, "volatile": True}
    assert modify(mirror, ["projects=a", "bases=x/y", "acl_upload+=z"]) == mirror
    assert error_of(modify, mirror, ["bases-=x/y"]) == "The 'bases' setting doesn't have value 'x/y'"


def test_ops_apply_in_order() -> None:
    new = modify(stage(), ["mirror_whitelist=a,b", "mirror_whitelist-=a", "mirror_whitelist+=c"])
    assert new["mirror_whitelist"] == ["b", "c"]


def test_ops_must_be_strings() -> None:
    with pytest.raises(ConfigError):
        modify(stage(), [1])


def test_empty_op_list_is_a_noop() -> None:
    assert modify(stage(title="t"), []) == stage(title="t")


@given(st.lists(st.sampled_from([
    "volatile=False", "volatile=yes", "bases+=root/pypi", "bases-=root/pypi", "bases=foo/prod",
    "mirror_whitelist+=X_y", "mirror_whitelist-=x-y", "title=t", "title-=", "custom_data-=",
    "acl_upload+=:anonymous:", "acl_upload-=foo", "volatile-=", "junk=1", "bases+=no/pe",
]), max_size=6))
def test_op_lists_never_crash(ops: list[str]) -> None:
    current = stage(bases=["root/pypi"])
    try:
        new = modify(current, ops)
    except ConfigError as exc:
        assert exc.messages
        return
    assert new["type"] == "stage"
    assert all(isinstance(v, str) for v in new["mirror_whitelist"])
    assert current == stage(bases=["root/pypi"])


# --- reading stored configs ----------------------------------------------------


def test_effective_values_of_old_indexes() -> None:
    assert toxresult_upload_acl({"type": "stage"}) == [":ANONYMOUS:"]
    assert toxresult_upload_acl({"acl_toxresult_upload": ["alice"]}) == ["alice"]
    assert whitelist_inheritance({"type": "stage"}) == "union"
    assert whitelist_inheritance({"mirror_whitelist_inheritance": "intersection"}) == "intersection"


def test_cache_expiry_seconds() -> None:
    assert DEFAULT_CACHE_EXPIRY_SECONDS == 1800
    assert cache_expiry_seconds({"type": "mirror"}) == 1800
    assert cache_expiry_seconds({"type": "mirror"}, 60) == 60
    assert cache_expiry_seconds({"mirror_cache_expiry": 5}, 60) == 5

"""Tests for devpitx.model.names: user/index/project/version/file name rules."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from devpitx.model.names import (
    MAX_FILENAME_BYTES,
    InvalidName,
    normalize_project_name,
    project_name_problem,
    safe_filename_problem,
    validate_index_name,
    validate_user_name,
    version_problem,
)

BLOCKED_SYMBOLS = "!\"#$%&'()*+,/:;<=>?[\\]^`{|}~"


# --- user and index names (model.md §1.1) -----------------------------------


@pytest.mark.parametrize(
    "name", ["foo_bar", "foo-bar", "foo.bar42", "foo@bar42", "föö", "😀", "Root", "a", "...", ".hidden"]
)
def test_valid_user_and_index_names(name: str) -> None:
    validate_user_name(name)
    validate_index_name(name)


@pytest.mark.parametrize("name", ["foo:bar42", "foo!bar42", "foo~bar42", ":foobar"])
def test_reference_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_user_name(name)
    assert str(info.value) == (
        f"username '{name}' contains characters that aren't allowed. "
        "Any ascii symbol besides -.@_ is blocked."
    )


def test_index_name_message_says_indexname() -> None:
    with pytest.raises(InvalidName) as info:
        validate_index_name("de/v")
    assert str(info.value) == (
        "indexname 'de/v' contains characters that aren't allowed. "
        "Any ascii symbol besides -.@_ is blocked."
    )
    assert info.value.message == str(info.value)


@pytest.mark.parametrize("char", list(BLOCKED_SYMBOLS) + [" "] + [chr(c) for c in range(0x20)])
def test_every_blocked_character_is_refused(char: str) -> None:
    for validate in (validate_user_name, validate_index_name):
        with pytest.raises(InvalidName):
            validate(f"a{char}b")


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_names_that_cannot_be_directories_are_refused(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_user_name(name)
    assert str(info.value).startswith(f"username '{name}' contains characters")
    with pytest.raises(InvalidName):
        validate_index_name(name)


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidName):
        validate_user_name("a\ud800")


def test_invalid_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)


@given(st.text(alphabet=string.ascii_letters + string.digits + "-.@_", min_size=1))
def test_names_from_allowed_ascii_are_valid_unless_dots(name: str) -> None:
    if name in (".", ".."):
        with pytest.raises(InvalidName):
            validate_user_name(name)
    else:
        validate_user_name(name)


@given(st.text(min_size=1))
def test_valid_names_never_contain_path_separators(name: str) -> None:
    try:
        validate_index_name(name)
    except InvalidName:
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..")


# --- normalization (model.md §1.3) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Foo.Bar_baz", "foo-bar-baz"),
        ("pkg__hello", "pkg-hello"),
        ("Pkg5", "pkg5"),
        ("he_llo", "he-llo"),
        ("Django", "django"),
        ("a-._b", "a-b"),
        ("föö", "f-"),
        ("", ""),
    ],
)
def test_normalize_project_name(name: str, expected: str) -> None:
    assert normalize_project_name(name) == expected


project_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", fullmatch=True)


@given(st.text())
def test_normalize_is_idempotent(name: str) -> None:
    once = normalize_project_name(name)
    assert normalize_project_name(once) == once


@given(st.text())
def test_normalized_names_use_only_lowercase_alnum_and_single_dashes(name: str) -> None:
    normalized = normalize_project_name(name)
    assert set(normalized) <= set(string.ascii_lowercase + string.digits + "-")
    assert "--" not in normalized


@given(project_names)
def test_normalized_valid_names_stay_valid(name: str) -> None:
    assert project_name_problem(name) is None
    assert project_name_problem(normalize_project_name(name)) is None


@given(project_names)
def test_normalize_equals_pep503_for_valid_names(name: str) -> None:
    assert normalize_project_name(name) == canonicalize_name(name)


# --- project names and versions (model.md §1.2, §4.4) ----------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("pkg", None),
        ("Pkg5", None),
        ("hello.pkg", None),
        ("a", None),
        ("", 'Missing required field "name"'),
        ("pkg hello", "Invalid package name. Names must contain only ASCII letters, digits, "
                      "underscores, hyphens, and periods"),
        ("föö", "Invalid package name. Names must contain only ASCII letters, digits, "
                "underscores, hyphens, and periods"),
        ("pkg<1", "Invalid package name. Names must contain only ASCII letters, digits, "
                  "underscores, hyphens, and periods"),
        ("pkg\n", "Invalid package name. Names must contain only ASCII letters, digits, "
                  "underscores, hyphens, and periods"),
        ("_pkg", "Invalid package name. Names must start with an ASCII letter or digit"),
        ("-pkg", "Invalid package name. Names must start with an ASCII letter or digit"),
        ("pkg.", "Invalid package name. Names must end with an ASCII letter or digit"),
        ("pkg_", "Invalid package name. Names must end with an ASCII letter or digit"),
    ],
)
def test_project_name_problem(name: str, reason: str | None) -> None:
    assert project_name_problem(name) == reason


@pytest.mark.parametrize("version", ["1.0", "1.0.0", "2.0-alpha1", "1.0_gaadc053", "1.0+local", "v1"])
def test_valid_versions(version: str) -> None:
    assert version_problem(version) is None


def test_empty_version_is_missing() -> None:
    assert version_problem("") == 'Missing required field "version"'


@pytest.mark.parametrize("char", list('<>%#"'))
def test_url_unsafe_versions(char: str) -> None:
    assert version_problem(f"1.0{char}1") == "Invalid package name or version (URL safety)"


@pytest.mark.parametrize("version", ["1/0", "1\\0", ".", "..", "1\x00", "1\n0", "1\x7f", "1\x85", "1\ud800"])
def test_path_unsafe_versions(version: str) -> None:
    assert version_problem(version) == "Invalid version (path safety)"


# --- release file names -----------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    ["pkg-1.0.tar.gz", "pkg_hello-1.0_gaadc053-py3-none-any.whl", "föö-1.0.zip", "a" * 251 + ".zip"],
)
def test_safe_filenames(filename: str) -> None:
    assert safe_filename_problem(filename) is None


@pytest.mark.parametrize(
    "filename",
    [
        "",
        ".",
        "..",
        ".pkg-1.0.tar.gz",
        "../pkg-1.0.tar.gz",
        "dir/pkg-1.0.tar.gz",
        "dir\\pkg-1.0.tar.gz",
        "pkg\x00-1.0.tar.gz",
        "pkg\n-1.0.tar.gz",
        "pkg\x7f-1.0.tar.gz",
        " pkg-1.0.tar.gz",
        "pkg-1.0.tar.gz ",
        "pkg-1.0.tar.gz\u2003",
        "a" * 252 + ".zip",
        "ö" * 128,
        "pkg\ud800.zip",
    ],
)
def test_unsafe_filenames(filename: str) -> None:
    reason = safe_filename_problem(filename)
    assert isinstance(reason, str) and reason


def test_filename_length_limit_counts_utf8_bytes() -> None:
    assert safe_filename_problem("ö" * (MAX_FILENAME_BYTES // 2)) is None
    assert safe_filename_problem("ö" * (MAX_FILENAME_BYTES // 2 + 1)) == (
        f"filename is longer than {MAX_FILENAME_BYTES} bytes"
    )


@given(st.text())
def test_safe_filenames_are_single_visible_path_segments(filename: str) -> None:
    if safe_filename_problem(filename) is not None:
        return
    assert filename and not filename.startswith(".")
    assert "/" not in filename and "\\" not in filename and "\x00" not in filename
    assert len(filename.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert filename == filename.strip()

"""Tests for devpitx.model.versions: version order and release file names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpitx.model.versions import (
    ARCHIVE_SUFFIXES,
    filename_contains_version,
    filename_matches_project,
    is_valid_archive_name,
    latest_version,
    pyversion_and_filetype,
    sorted_versions,
    split_filename,
    version_sort_key,
)

# --- ordering (model.md §1.4) ------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["2022.7.1", "2022.7", "2005i", "2004d"], ["2004d", "2005i", "2022.7", "2022.7.1"]),
        (["1.0alpha1", "1.0beta5prerelease2", "3.1.4-ec6"],
         ["1.0beta5prerelease2", "3.1.4-ec6", "1.0alpha1"]),
        (["1.0", "2.0", "2005i", "2004d"], ["2004d", "2005i", "1.0", "2.0"]),
        (["1.10", "1.9", "1.0", "1.0rc1", "1.0.dev0", "1.0.post1"],
         ["1.0.dev0", "1.0rc1", "1.0", "1.0.post1", "1.9", "1.10"]),
        (["1!0.1", "2.0"], ["2.0", "1!0.1"]),
    ],
)
def test_sorted_versions(versions: list[str], expected: list[str]) -> None:
    assert sorted_versions(versions) == expected
    assert sorted_versions(versions, reverse=True) == expected[::-1]


def test_legacy_versions_sort_before_every_pep440_version() -> None:
    assert version_sort_key("zzz-999") < version_sort_key("0.0.dev0")
    assert version_sort_key("2005i") < version_sort_key("0")


def test_legacy_numbers_compare_numerically() -> None:
    assert version_sort_key("1.10-x") > version_sort_key("1.9-x")
    assert version_sort_key("2.0-ec9") < version_sort_key("2.0-ec10")


def test_legacy_prerelease_tags_rank_lower() -> None:
    # "dev" and "pre" rank below the final release, other words above it.
    assert version_sort_key("1.0dev-x") < version_sort_key("1.0-x")
    assert version_sort_key("1.0pre-x") < version_sort_key("1.0-x")
    assert version_sort_key("1.0-x") < version_sort_key("1.0-y")


def test_equal_pep440_versions_are_ordered_by_their_text() -> None:
    assert version_sort_key("1.0") < version_sort_key("1.0.0")
    assert version_sort_key("1.0") != version_sort_key("1.0.0")
    assert sorted_versions(["1.0.0", "1.0"]) == ["1.0", "1.0.0"]


@pytest.mark.parametrize(
    ("expected", "versions"),
    [
        (None, []),
        ("1.0", ["1.0"]),
        ("1.0", ["1.0", "0.9"]),
        ("1.0.1.dev0", ["1.0", "1.0.1.dev0"]),
        ("2.0-alpha1", ["1.0", "2.0a0", "2.0.a0", "2.0-alpha1"]),
        ("2.0-beta1", ["1.0", "2.0b0", "2.0.b0", "2.0-beta1"]),
        ("2.0-rc1", ["1.0", "2.0rc0", "2.0.rc0", "2.0-rc1"]),
        ("2.0-pre1", ["1.0", "2.0pre0", "2.0.pre0", "2.0-pre1"]),
    ],
)
def test_latest_version_includes_prereleases(expected: str | None, versions: list[str]) -> None:
    assert latest_version(versions) == expected


@pytest.mark.parametrize(
    ("expected", "versions"),
    [
        (None, ["1.0rc1"]),
        ("1.0", ["1.0", "1.0.1.dev0"]),
        ("1.0", ["1.0", "2.0a0", "2.0-alpha1"]),
        ("3.1.4-ec6", ["1.0alpha1", "1.0beta5prerelease2", "3.1.4-ec6"]),
    ],
)
def test_latest_stable_version(expected: str | None, versions: list[str]) -> None:
    assert latest_version(versions, stable=True) == expected


def test_sorted_stable_versions_drop_prereleases_only() -> None:
    assert sorted_versions(["1.0alpha1", "1.0beta5prerelease2", "3.1.4-ec6"], stable=True) == [
        "1.0beta5prerelease2", "3.1.4-ec6",
    ]


versions_text = st.text() | st.from_regex(r"[0-9]{1,30}(\.[0-9a-z]{1,5}){0,5}([-_+.][a-z0-9]{1,4})?", fullmatch=True)


@given(st.lists(versions_text, max_size=20))
def test_sort_is_total_and_deterministic(versions: list[str]) -> None:
    once = sorted(versions, key=version_sort_key)
    assert sorted(reversed(versions), key=version_sort_key) == once
    keys = [version_sort_key(v) for v in once]
    assert all(a <= b for a, b in zip(keys, keys[1:]))


@given(versions_text, versions_text)
def test_distinct_strings_never_compare_equal(a: str, b: str) -> None:
    if a != b:
        assert version_sort_key(a) != version_sort_key(b)


# --- split_filename (model.md §4.6) --------------------------------------------


@pytest.mark.parametrize(
    ("basename", "expected"),
    [
        ("pkg-1.0.tar.gz", ("pkg", "1.0", ".tar.gz")),
        ("pkg_hello-1.0_gaadc053-py3-none-any.whl", ("pkg_hello", "1.0_gaadc053", "-py3-none-any.whl")),
        ("hello.pkg-1.0.tar.gz", ("hello.pkg", "1.0", ".tar.gz")),
        ("pytest-2.3.4.zip", ("pytest", "2.3.4", ".zip")),
        ("pytest-2.3.4-py27.egg", ("pytest", "2.3.4", "-py27.egg")),
        ("dddttt-0.1.dev38-py2.7.egg", ("dddttt", "0.1.dev38", "-py2.7.egg")),
        ("devpi-0.9.5.dev1-cp26-none-linux_x86_64.whl",
         ("devpi", "0.9.5.dev1", "-cp26-none-linux_x86_64.whl")),
        ("wheel-0.21.0-py2.py3-none-any.whl", ("wheel", "0.21.0", "-py2.py3-none-any.whl")),
        ("green-0.4.0-py2.5-win32.egg", ("green", "0.4.0", "-py2.5-win32.egg")),
        ("Candela-0.2.1.macosx-10.4-x86_64.exe", ("Candela", "0.2.1", ".macosx-10.4-x86_64.exe")),
        ("Cambiatuscromos-0.1.1alpha.linux-x86_64.exe",
         ("Cambiatuscromos", "0.1.1alpha", ".linux-x86_64.exe")),
        ("Aesthete-0.4.2.win32.exe", ("Aesthete", "0.4.2", ".win32.exe")),
        ("DTL-1.0.5.win-amd64.exe", ("DTL", "1.0.5", ".win-amd64.exe")),
        ("Cheetah-2.2.2-1.x86_64.rpm", ("Cheetah", "2.2.2", "-1.x86_64.rpm")),
        ("Cheetah-2.2.2-1.src.rpm", ("Cheetah", "2.2.2", "-1.src.rpm")),
        ("Cheetah-2.2.2.dev1-1.noarch.rpm", ("Cheetah", "2.2.2.dev1", "-1.noarch.rpm")),
        ("deferargs.tar.gz", ("deferargs", "", ".tar.gz")),
        ("hello-1.0.doc.zip", ("hello", "1.0", ".doc.zip")),
        ("hello-1.0.DOC.ZIP", ("hello", "1.0", ".DOC.ZIP")),
        ("Twisted-12.0.0.win32-py2.7.msi", ("Twisted", "12.0.0", ".win32-py2.7.msi")),
        ("django_ipware-0.0.8-py3-none-any.whl", ("django_ipware", "0.0.8", "-py3-none-any.whl")),
        ("my-binary-package-name-1-4-3-yip-0.9.tar.gz",
         ("my-binary-package-name-1-4-3-yip", "0.9", ".tar.gz")),
        ("my-binary-package-name-1-4-3-yip-0.9+deadbeef.tar.gz",
         ("my-binary-package-name-1-4-3-yip", "0.9+deadbeef", ".tar.gz")),
        ("cffi-1.6.0-pp251-pypy_41-macosx_10_11_x86_64.whl",
         ("cffi", "1.6.0", "-pp251-pypy_41-macosx_10_11_x86_64.whl")),
        ("pkg-1.0-1-py3-none-any.whl", ("pkg", "1.0", "-py3-none-any.whl")),
        ("pkg-1.0.tar.bz2", ("pkg", "1.0", ".tar.bz2")),
        ("pkg-2.2.2-1.tar.gz", ("pkg", "2.2.2-1", ".tar.gz")),
        ("pkg-1.0.whl", ("pkg", "1.0", ".whl")),
        ("pkg-1.0.qwe", ("pkg", "1.0", ".qwe")),
        ("noext", ("noext", "", "")),
        ("", ("", "", "")),
    ],
)
def test_split_filename(basename: str, expected: tuple[str, str, str]) -> None:
    assert split_filename(basename) == expected


@given(st.text())
def test_split_filename_never_raises_and_keeps_the_text(basename: str) -> None:
    name, version, ext = split_filename(basename)
    assert basename.startswith(name)
    assert basename.endswith(ext)
    assert version in basename


# --- upload file name checks (http-api.md §3.9 rows 9-11) ----------------------


def test_archive_suffixes_are_the_spec_list() -> None:
    assert set(ARCHIVE_SUFFIXES) == {
        ".exe", ".tar.gz", ".bz2", ".rpm", ".deb", ".zip", ".tgz", ".egg", ".dmg", ".msi", ".whl",
    }


@pytest.mark.parametrize(
    "filename",
    ["pkg5-1.0.tar.gz", "pkg5-1.0.TAR.GZ", "pkg5-1.0.Zip", "pkg5-1.0-py3-none-any.whl",
     "pkg5-1.0.tar.bz2", "pkg5-1.0.doc.zip", "pkg5-1.0.tgz", "pkg5-1.0.deb", "pkg5-1.0.dmg"],
)
def test_valid_archive_names(filename: str) -> None:
    assert is_valid_archive_name(filename)


@pytest.mark.parametrize("filename", ["pkg5-1.0.qwe", "pkg5-1.0.tar", "pkg5-1.0.tar.xz", "pkg5", "whl"])
def test_invalid_archive_names(filename: str) -> None:
    assert not is_valid_archive_name(filename)


@pytest.mark.parametrize(
    ("filename", "version", "expected"),
    [
        ("pkg5-1.0.tgz", "1.0", True),
        ("pkg5-2.7.tgz", "1.0", False),
        ("pkg-1.0_g1-py3-none-any.whl", "1.0+g1", True),
        ("pkg-1.0+g1.tar.gz", "1.0+g1", True),
        ("pkg-1.0_gaadc053-py3-none-any.whl", "1.0-gaadc053", True),
        ("pkg-1.0-py3-none-any.whl", "1.0+g1", False),
        ("pkg-1.0.tgz", "", True),
    ],
)
def test_filename_contains_version(filename: str, version: str, expected: bool) -> None:
    assert filename_contains_version(filename, version) is expected


@pytest.mark.parametrize(
    ("filename", "project", "expected"),
    [
        ("pkg5-1.0.tar.gz", "pkg5", True),
        ("Pkg5-1.0.tar.gz", "pkg5", True),
        ("pkg5-1.0.tar.gz", "PKG5", True),
        ("pkg_hello-1.0-py3-none-any.whl", "pkg-hello", True),
        ("pkg.hello-1.0.tar.gz", "Pkg_Hello", True),
        ("x-docs-1.0.zip", "x", True),
        ("pkg5.zip", "pkg5", True),
        ("pkg5-1.0.tar.gz", "pkg", False),
        ("other-1.0.tar.gz", "pkg5", False),
        ("pkg-1.0.tar.gz", "pkg5", False),
        ("pkg-1.0.tar.gz", "", False),
    ],
)
def test_filename_matches_project(filename: str, project: str, expected: bool) -> None:
    assert filename_matches_project(filename, project) is expected


# --- pyversion / filetype (model.md §4.6) -------------------------------------


@pytest.mark.parametrize(
    ("basename", "expected"),
    [
        ("x-2.3.zip", ("source", "sdist")),
        ("x-2.3.tar.gz", ("source", "sdist")),
        ("x-2.3.tgz", ("source", "sdist")),
        ("x-2.3.tar.bz2", ("source", "sdist")),
        ("x-2.3-0.4.0.win32-py3.1.exe", ("3.1", "bdist_wininst")),
        ("x-2.3-py27.egg", ("2.7", "bdist_egg")),
        ("wheel-0.21.0-py2.py3-none-any.whl", ("2.7", "bdist_wheel")),
        ("devpi-0.9.5.dev1-cp26-none-linux_x86_64.whl", ("2.6", "bdist_wheel")),
        ("greenlet-0.4.0-py3.3-win-amd64.egg", ("3.3", "bdist_egg")),
        ("greenlet-0.4.0.linux-x86_64.tar.gz", ("any", "bdist_dumb")),
        ("cffi-1.6.0-pp251-pypy_41-macosx_10_11_x86_64.whl", ("2.5.1", "bdist_wheel")),
        ("cryptography-39.0.0-pp38-pypy38_pp73-macosx_10_12_x86_64.whl", ("3.8", "bdist_wheel")),
        ("h5py-3.6.0-cp310-cp310-win_amd64.whl", ("3.10", "bdist_wheel")),
        ("pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", ("3.12", "bdist_wheel")),
        ("pkg-1.0-py3-none-any.whl", ("3", "bdist_wheel")),
        ("pkg-1.0-py3-none-any.WHL", ("3", "bdist_wheel")),
        ("Twisted-12.0.0.win32-py2.7.msi", ("2.7", "bdist_msi")),
        ("pkg-1.0.deb", ("any", "bdist_dumb")),
        ("pkg-1.0.doc.zip", ("any", "bdist_dumb")),
    ],
)
def test_pyversion_and_filetype(basename: str, expected: tuple[str, str]) -> None:
    assert pyversion_and_filetype(basename) == expected

"""Version ordering and release file name rules.

This module owns model.md §1.4 (how version strings sort, which one is the
latest), §4.6 (splitting a distribution file name into name, version and
extension; ``pyversion``/``filetype`` for pushes) and the file name checks of
an upload (http-api.md §3.9 rows 9-11). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from devpitx.model.names import normalize_project_name

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DOCZIP_SUFFIX",
    "LegacyKey",
    "VersionSortKey",
    "filename_contains_version",
    "filename_matches_project",
    "is_valid_archive_name",
    "latest_version",
    "pyversion_and_filetype",
    "sorted_versions",
    "split_filename",
    "version_sort_key",
]

# http-api.md §3.9 row 10, compared case-insensitively.
ARCHIVE_SUFFIXES: tuple[str, ...] = (
    ".exe", ".tar.gz", ".bz2", ".rpm", ".deb", ".zip", ".tgz", ".egg", ".dmg", ".msi", ".whl",
)
DOCZIP_SUFFIX = ".doc.zip"

# --- ordering -------------------------------------------------------------

# One component of a legacy key: (0, text) for alphabetic parts, (1, number)
# for numeric ones, so that every alphabetic part sorts before any number, as
# in setuptools' legacy scheme.
LegacyKey = tuple[tuple[int, int | str], ...]
# (0, legacy key, raw) for non-PEP 440 strings, (1, Version, raw) otherwise;
# the raw string breaks ties ("1.0" vs "1.0.0") so the order is total.
VersionSortKey = tuple[int, Version | LegacyKey, str]

_LEGACY_PART = re.compile(r"([0-9]+|[a-z]+|\.|-)")
# Pre-release spellings that must rank below a final release; "dev" becomes
# "@", which sorts before every letter.
_LEGACY_ALIASES = {"pre": "c", "preview": "c", "rc": "c", "dev": "@", "-": "final-"}
_FINAL = (0, "final")


def _legacy_parts(version: str) -> Iterable[tuple[int, int | str]]:
    for piece in _LEGACY_PART.split(version.lower()):
        piece = _LEGACY_ALIASES.get(piece, piece)
        if not piece or piece == ".":
            continue
        if piece.isascii() and piece.isdigit():
            yield (1, int(piece))
        else:
            yield (0, piece)
    yield _FINAL


def _legacy_key(version: str) -> LegacyKey:
    key: list[tuple[int, int | str]] = []
    for part in _legacy_parts(version):
        if part[0] == 0:
            # Before a pre-release tag drop a pending "final-" marker, and
            # before any tag drop trailing zeros, so "1.0" == "1" and
            # "1.0-a1" sorts like "1.0a1".
            if part < _FINAL:
                while key and key[-1] == (0, "final-"):
                    key.pop()
            while key and key[-1] == (1, 0):
                key.pop()
        key.append(part)
    return tuple(key)


def _parse_pep440(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


def version_sort_key(version: str) -> VersionSortKey:
    """Sort key for version strings (model.md §1.4); never raises.

    PEP 440 versions sort by PEP 440; every other string sorts before all of
    them, among themselves by a setuptools-legacy-style key. Equal keys are
    ordered by the raw string, so the order is total and deterministic.
    """
    parsed = _parse_pep440(version)
    if parsed is None:
        return (0, _legacy_key(version), version)
    return (1, parsed, version)


def _is_stable(version: str) -> bool:
    parsed = _parse_pep440(version)
    # Legacy strings have no notion of a pre-release: they count as stable.
    return parsed is None or not parsed.is_prerelease


def sorted_versions(
    versions: Iterable[str], *, reverse: bool = False, stable: bool = False
) -> list[str]:
    """``versions`` in version order; ``stable`` leaves out PEP 440 pre/dev releases."""
    chosen = [v for v in versions if not stable or _is_stable(v)]
    return sorted(chosen, key=version_sort_key, reverse=reverse)


def latest_version(versions: Iterable[str], *, stable: bool = False) -> str | None:
    """The highest version, pre-releases included unless ``stable``; ``None`` if empty."""
    chosen = [v for v in versions if not stable or _is_stable(v)]
    if not chosen:
        return None
    return max(chosen, key=version_sort_key)


# --- file names -----------------------------------------------------------

# A platform-ish tail that belongs to the extension (model.md §4.6 step 3).
# re.search takes the leftmost match, i.e. the longest such tail.
_PLATFORM_SUFFIX = re.compile(
    r"""(
        \.macosx-\d.*                                   # Candela-0.2.1.macosx-10.4-x86_64.exe
      | \.linux-.+                                      # pkg-1.0.linux-x86_64.tar.gz
      | \.win[-\w]*(?:-py\d+(?:\.\d+)*)?\.(?:exe|msi|zip)  # .win32.exe, .win32-py2.7.msi
      | -[^-]+\.rpm                                     # Cheetah-2.2.2-1.x86_64.rpm
      | -(?:py|cp|ip|pp|jy)\d[\d.]*(?:-.*)?\.(?:egg|exe|msi|whl)  # -py2.7.egg, -py2.5-win32.egg
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

_NUMBER = r"(?:0|[1-9]\d*)"
# name (no ".") "-" a PEP 440 version in its normalized spelling.
_PEP440_NAME_VERSION = re.compile(
    rf"""(?P<name>[^.]+?)-(?P<version>
        (?:[1-9]\d*!)?{_NUMBER}(?:\.{_NUMBER})*
        (?:(?:a|b|rc){_NUMBER})?
        (?:\.post{_NUMBER})?
        (?:\.dev{_NUMBER})?
        (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# Same, but with "alpha"/"beta" tags and a "-local" tail allowed.
_LEGACY_NAME_VERSION = re.compile(
    rf"""(?P<name>[^.]+?)-(?P<version>
        (?:[1-9]\d*!)?{_NUMBER}(?:\.{_NUMBER})*
        (?:(?:a|b|rc|alpha|beta){_NUMBER})?
        (?:\.post{_NUMBER})?
        (?:\.dev{_NUMBER})?
        (?:-[a-z0-9]+(?:[-_.][a-z0-9]+)*)?
    )""",
    re.IGNORECASE | re.VERBOSE,
)


def _split_archive_ext(basename: str) -> tuple[str, str]:
    if basename.lower().endswith(DOCZIP_SUFFIX):
        cut = len(basename) - len(DOCZIP_SUFFIX)
        return basename[:cut], basename[cut:]
    dot = basename.rfind(".")
    if dot <= 0:
        return basename, ""
    stem, ext = basename[:dot], basename[dot:]
    if stem.lower().endswith(".tar"):
        return stem[:-4], stem[-4:] + ext
    return stem, ext


def _split_wheel(basename: str) -> tuple[str, str, str] | None:
    parts = basename[: -len(".whl")].split("-")
    try:
        # The standard parser recognises well-formed wheel names; only its
        # verdict on the build tag is used, the name and version text stay
        # verbatim because the version must match what was uploaded.
        has_build = bool(parse_wheel_filename(basename)[2])
    except InvalidWheelFilename:
        # Not PEP 427 compliant (e.g. a version like "1.0_gaadc053"): fall
        # back to the layout name-ver(-build)?-pyver-abi-plat, where a build
        # tag starts with a digit.
        if any(not part for part in parts):
            return None
        if len(parts) == 6 and parts[2][:1].isdigit():
            has_build = True
        elif len(parts) == 5:
            has_build = False
        else:
            return None
    tags = parts[3:] if has_build else parts[2:]
    return parts[0], parts[1], "-" + "-".join(tags) + ".whl"


def split_filename(basename: str) -> tuple[str, str, str]:
    """Split a distribution file name into (name, version, ext); never raises.

    model.md §4.6: ``pkg-1.0.tar.gz`` -> (``pkg``, ``1.0``, ``.tar.gz``);
    wheels keep name and version text verbatim and ``ext`` is
    ``-pyver-abi-plat.whl`` (a build tag is in neither); a name without any
    ``-`` has version ``""``.
    """
    nameversion, ext = _split_archive_ext(basename)
    if ext.lower() == ".whl":
        wheel = _split_wheel(basename)
        if wheel is not None:
            return wheel
    platform = _PLATFORM_SUFFIX.search(basename)
    if platform is not None and platform.start() > 0:
        ext = platform.group(1)
        nameversion = basename[: platform.start()]
    if "-" not in nameversion:
        return nameversion, "", ext
    for pattern in (_PEP440_NAME_VERSION, _LEGACY_NAME_VERSION):
        match = pattern.fullmatch(nameversion)
        if match is not None:
            return match.group("name"), match.group("version"), ext
    name, _, version = nameversion.rpartition("-")
    return name, version, ext


def is_valid_archive_name(filename: str) -> bool:
    """Whether ``filename`` ends in an accepted archive suffix (http-api.md §3.9 row 10)."""
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


# Wheel file names escape versions (PEP 427): runs of anything but word
# characters and "." become "_" ("1.0+g1" -> "1.0_g1").
_WHEEL_ESCAPE = re.compile(r"[^\w.]+")


def filename_contains_version(filename: str, version: str) -> bool:
    """Whether the uploaded ``filename`` contains ``version`` (http-api.md §3.9 row 9).

    The wheel-escaped spelling of the version is accepted too. An empty
    version is trivially contained; callers refuse a missing version earlier.
    """
    return version in filename or _WHEEL_ESCAPE.sub("_", version) in filename


def filename_matches_project(filename: str, project: str) -> bool:
    """Whether ``filename`` belongs to ``project`` (http-api.md §3.9 row 11).

    The normalized file name (extension removed) must start with the
    normalized project name followed by ``-`` or nothing. The reference only
    checks the prefix, which also lets ``pkgfoo-1.0.tar.gz`` pass as ``pkg``;
    the separator requirement refuses that while ``x-docs-1.0.zip`` still
    matches ``x``.
    """
    stem, _ext = _split_archive_ext(filename)
    normalized = normalize_project_name(stem)
    wanted = normalize_project_name(project)
    if not wanted:
        return False
    return normalized == wanted or normalized.startswith(wanted + "-")


_SDIST_EXTS = frozenset({".zip", ".tar.gz", ".tgz", ".tar.bz2"})
_PYTAG_FILETYPE = re.compile(r"(?:py|cp|ip|pp|jy)([0-9.py]+).*\.(exe|egg|msi|whl)", re.IGNORECASE)
_FILETYPES = {
    "exe": "bdist_wininst", "egg": "bdist_egg", "msi": "bdist_msi", "whl": "bdist_wheel",
}


def _pyversion(tag_digits: str) -> str:
    if tag_digits == "2.py3":
        # "py2.py3" universal wheels: devpi reports 2.7, nothing depends on it.
        return "2.7"
    if "." in tag_digits or not tag_digits.isdigit():
        return tag_digits
    if tag_digits.startswith("3") and len(tag_digits) > 1:
        # cp312 -> 3.12: after Python 3.9 minor versions have two digits.
        return f"3.{tag_digits[1:]}"
    # py27 -> 2.7, pp251 -> 2.5.1, py3 -> 3
    return ".".join(tag_digits)


def pyversion_and_filetype(basename: str) -> tuple[str, str]:
    """The ``pyversion`` and ``filetype`` form fields for ``basename`` (model.md §4.6).

    sdists give (``source``, ``sdist``); files with a Python tag before an
    ``exe``/``egg``/``msi``/``whl`` suffix give (version, ``bdist_*``);
    anything else gives (``any``, ``bdist_dumb``).
    """
    _name, _version, ext = split_filename(basename)
    if ext.lower() in _SDIST_EXTS:
        return "source", "sdist"
    match = _PYTAG_FILETYPE.search(ext)
    if match is None:
        return "any", "bdist_dumb"
    digits, kind = match.groups()
    return _pyversion(digits.lower()), _FILETYPES[kind.lower()]

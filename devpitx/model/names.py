"""Validation and normalisation of user, index, project and version names.

This module owns the rules of model.md §1 (names and versions) and the
name/version reasons of §4.4, plus our own path-safety rules: user names,
index names, versions and release file names end up as directory or file
names on disk, so anything that could escape or confuse one path segment is
refused here, before it reaches storage.

Everything is pure: strings in, ``None``/a reason string out, or
:class:`InvalidName` carrying the exact HTTP 400 message.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "InvalidName",
    "MAX_FILENAME_BYTES",
    "normalize_project_name",
    "project_name_problem",
    "safe_filename_problem",
    "validate_index_name",
    "validate_user_name",
    "version_problem",
]

# model.md §1.1: ASCII control characters, space and every ASCII symbol except
# "-", ".", "@" and "_". Non-ASCII characters are allowed.
_BLOCKED_NAME_CHARS = re.compile(r"[\x00-\x1f !\"#$%&'()*+,/:;<=>?\[\\\]^`{|}~]")

# model.md §1.2
_PROJECT_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]")
# model.md §1.3: every run of non-alphanumeric ASCII characters becomes one "-".
_NON_ALNUM_RUN = re.compile(r"[^A-Za-z0-9]+")
# §1.2 / §4.4 "URL safety" characters, checked on name and version.
_URL_UNSAFE = re.compile(r"[<>%#\"]")

# Most file systems limit one path segment to 255 bytes.
MAX_FILENAME_BYTES = 255

_MISSING_NAME = 'Missing required field "name"'
_MISSING_VERSION = 'Missing required field "version"'
_BAD_NAME_CHARS = (
    "Invalid package name. Names must contain only ASCII letters, digits, "
    "underscores, hyphens, and periods"
)
_BAD_NAME_START = "Invalid package name. Names must start with an ASCII letter or digit"
_BAD_NAME_END = "Invalid package name. Names must end with an ASCII letter or digit"
_URL_SAFETY = "Invalid package name or version (URL safety)"
_VERSION_PATH_SAFETY = "Invalid version (path safety)"


class InvalidName(ValueError):
    """A user or index name was refused; ``str(exc)`` is the exact 400 message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _is_utf8_encodable(text: str) -> bool:
    # Lone surrogates (JSON "\ud800") survive json.loads but cannot become a
    # file name or be written as UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_control_char(text: str) -> bool:
    # Category "Cc" is C0, DEL and C1: everything a terminal or a path parser
    # might interpret.
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _validate_name(kind: str, name: str) -> None:
    if (
        name in ("", ".", "..")
        or _BLOCKED_NAME_CHARS.search(name) is not None
        or not _is_utf8_encodable(name)
    ):
        raise InvalidName(
            f"{kind} '{name}' contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked."
        )


def validate_user_name(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` may be a user name (model.md §1.1).

    Besides the reference rule we refuse ``""``, ``"."`` and ``".."`` (they
    cannot be directory names) and strings that are not valid Unicode text.
    """
    _validate_name("username", name)


def validate_index_name(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` may be an index name (model.md §1.1)."""
    _validate_name("indexname", name)


def normalize_project_name(name: str) -> str:
    """Return the normalized project name (model.md §1.3).

    Runs of characters other than ASCII letters and digits become one ``-``,
    then the result is lower-cased: ``Foo.Bar_baz`` -> ``foo-bar-baz``.
    """
    return _NON_ALNUM_RUN.sub("-", name).lower()


def project_name_problem(name: str) -> str | None:
    """Return why ``name`` is not a valid project name, or ``None`` (model.md §1.2, §4.4).

    The reasons are the reference texts; the caller prefixes them (upload:
    ``invalid metadata: <reason>``).
    """
    if not name:
        return _MISSING_NAME
    if _PROJECT_NAME_CHARS.fullmatch(name) is None:
        return _BAD_NAME_CHARS
    if _ASCII_ALNUM.fullmatch(name[0]) is None:
        return _BAD_NAME_START
    if _ASCII_ALNUM.fullmatch(name[-1]) is None:
        return _BAD_NAME_END
    return None


def version_problem(version: str) -> str | None:
    """Return why ``version`` cannot be stored as a version, or ``None``.

    Reference rules (§4.4): non-empty, none of ``< > % # "``. Our rule, because
    a version becomes a path segment: no ``/``, ``\\``, control characters
    (including NUL), not ``.``/``..`` and valid Unicode text.
    """
    if not version:
        return _MISSING_VERSION
    if _URL_UNSAFE.search(version) is not None:
        return _URL_SAFETY
    if (
        version in (".", "..")
        or "/" in version
        or "\\" in version
        or _has_control_char(version)
        or not _is_utf8_encodable(version)
    ):
        return _VERSION_PATH_SAFETY
    return None


def safe_filename_problem(filename: str) -> str | None:
    """Return why ``filename`` cannot safely be one path segment, or ``None``.

    A distribution file name is stored under its own name, so it must be a
    single, visible, portable path segment.
    """
    if not filename:
        return "filename is empty"
    if not _is_utf8_encodable(filename):
        return "filename is not valid UTF-8 text"
    if len(filename.encode("utf-8")) > MAX_FILENAME_BYTES:
        return f"filename is longer than {MAX_FILENAME_BYTES} bytes"
    if "/" in filename or "\\" in filename:
        return "filename must not contain '/' or '\\'"
    if _has_control_char(filename):
        return "filename must not contain control characters"
    if filename in (".", ".."):
        return f"filename must not be {filename!r}"
    if filename.startswith("."):
        return "filename must not start with '.'"
    if filename.strip() != filename:
        return "filename must not start or end with whitespace"
    return None

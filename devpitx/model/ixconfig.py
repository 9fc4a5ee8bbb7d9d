"""Index configuration ("ixconfig"): defaults, value parsing, create and modify.

This module owns model.md §3 (configuration keys of ``stage`` and ``mirror``
indexes, value parsing, creation, modification), the root/pypi configuration
of §8 and the body rules of ``PUT``/``PATCH /{user}/{index}`` (http-api.md
§3.7.3, §3.7.4, including the operation-list PATCH). Plain JSON values in,
a new configuration dict out; refusals raise :class:`ConfigError` carrying
the exact 400 message. Index *names* are validated by ``names.py``, base
index existence is asked through a ``base_exists`` callable.

It is also the one place that names the public upstream index: everything
else refers to :data:`DEFAULT_MIRROR_URL`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from devpitx.model.names import normalize_project_name

__all__ = [
    "ANONYMOUS",
    "AUTHENTICATED",
    "ConfigError",
    "DEFAULT_CACHE_EXPIRY_SECONDS",
    "DEFAULT_MIRROR_URL",
    "DEFAULT_MIRROR_WEB_URL_FMT",
    "INDEX_TYPES",
    "MESSAGE_SEPARATOR",
    "NOOP_MESSAGE",
    "cache_expiry_seconds",
    "modify_index_config",
    "new_index_config",
    "parse_acl_list",
    "parse_boolean",
    "parse_list",
    "root_pypi_config",
    "toxresult_upload_acl",
    "whitelist_inheritance",
]

# The public Python package index that root/pypi mirrors by default. This is
# the only place in devpitx that spells out that host.
DEFAULT_MIRROR_URL = "https://pypi.org/simple/"


def _project_page_format(simple_url: str) -> str:
    parts = urlsplit(simple_url)
    return f"{parts.scheme}://{parts.netloc}/project/{{name}}/"


# Web page of a project on the default upstream, for web UIs (model.md §8).
DEFAULT_MIRROR_WEB_URL_FMT = _project_page_format(DEFAULT_MIRROR_URL)

# Server option --mirror-cache-expiry when not given (model.md §3.3).
DEFAULT_CACHE_EXPIRY_SECONDS = 1800

NOOP_MESSAGE = "The requested modifications resulted in no changes"
# Several validation problems are reported in one 400 message, joined by this.
MESSAGE_SEPARATOR = ", "

INDEX_TYPES = ("stage", "mirror")
ANONYMOUS = ":ANONYMOUS:"
AUTHENTICATED = ":AUTHENTICATED:"

_TYPE_CHANGED = "the 'type' of an index can't be changed"
_DEFAULTS_KEPT = "Default values can't be removed."
_MIRROR_URL_INVALID = "'mirror_url' option must be a URL."
# "Improve on" of model.md §3.3: a mirror without upstream cannot work.
_MIRROR_URL_MISSING = "'mirror_url' option must be set for a mirror index."
_CACHE_EXPIRY_INVALID = "'mirror_cache_expiry' option must be an integer"
_INHERITANCE_CHOICES = ("intersection", "union")
# Old indexes without the key behave like this (model.md §3.2).
_LEGACY_INHERITANCE = "union"


class ConfigError(ValueError):
    """An index configuration was refused; ``str(exc)`` is the exact 400 message.

    ``messages`` keeps the individual problems; the message joins them with
    :data:`MESSAGE_SEPARATOR`.
    """

    def __init__(self, messages: str | Sequence[str]) -> None:
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.message = MESSAGE_SEPARATOR.join(self.messages)
        super().__init__(self.message)


# --- value parsing (model.md §3.4) ----------------------------------------


def parse_boolean(value: Any) -> bool:
    """JSON booleans or the strings true/yes/false/no in any case."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"Unknown boolean value {value!r}.")
    lowered = value.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    raise ConfigError(f"Unknown boolean value '{value}'.")


def parse_list(value: Any) -> list[str]:
    """A list of strings as is, or a comma-separated string (items stripped, empty dropped)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ConfigError(f"Unknown list value {value!r}.")


def _acl_entry(entry: str) -> str:
    upper = entry.upper()
    return upper if upper in (ANONYMOUS, AUTHENTICATED) else entry


def parse_acl_list(value: Any) -> list[str]:
    """List parsing, with the special principals upper-cased (``:anonymous:`` -> ``:ANONYMOUS:``)."""
    return [_acl_entry(entry) for entry in parse_list(value)]


def _whitelist_entry(entry: str) -> str:
    return entry if entry == "*" else normalize_project_name(entry)


def _parse_whitelist(value: Any) -> list[str]:
    entries = (_whitelist_entry(entry) for entry in parse_list(value))
    return [entry for entry in entries if entry]


def _parse_inheritance(value: Any) -> str:
    if isinstance(value, str) and value.lower() in _INHERITANCE_CHOICES:
        return value.lower()
    shown = f"'{value}'" if isinstance(value, str) else repr(value)
    raise ConfigError(
        f"Unknown value {shown} for mirror_whitelist_inheritance, "
        "must be 'intersection' or 'union'."
    )


def _parse_mirror_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(_MIRROR_URL_INVALID)
    # Beyond the reference's prefix check: the URL must name a host and must
    # not smuggle whitespace or control characters into upstream requests.
    if re.search(r"[\x00-\x20\x7f]", value):
        raise ConfigError(_MIRROR_URL_INVALID)
    try:
        host = urlsplit(value).netloc
    except ValueError:
        raise ConfigError(_MIRROR_URL_INVALID) from None
    if not host:
        raise ConfigError(_MIRROR_URL_INVALID)
    return value


def _parse_cache_expiry(value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(_CACHE_EXPIRY_INVALID)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
        return int(value)
    raise ConfigError(_CACHE_EXPIRY_INVALID)


def _as_given(value: Any) -> Any:
    return copy.deepcopy(value)


# --- bases ----------------------------------------------------------------


@dataclass(frozen=True)
class _Bases:
    """What base parsing needs to know: which indexes exist, which are already bases."""

    exists: Callable[[str], bool]
    # Bases already configured are not checked again: a deleted base index
    # stays listed (model.md §3.7) and must not block unrelated changes.
    known: Collection[str] = ()

    def entry(self, text: str) -> str:
        name = text.strip().strip("/")
        parts = name.split("/")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"invalid base index spec: {text!r}")
        if name not in self.known and not self.exists(name):
            raise ConfigError(f"base index {text!r} does not exist")
        return name

    def parse(self, value: Any) -> list[str]:
        messages: list[str] = []
        names: list[str] = []
        for text in parse_list(value):
            try:
                names.append(self.entry(text))
            except ConfigError as exc:
                messages.extend(exc.messages)
        if messages:
            raise ConfigError(messages)
        return names


# --- per-type key tables ----------------------------------------------------

_Parser = Callable[[Any, _Bases], Any]

_COMMON_FIELDS: dict[str, _Parser] = {
    "volatile": lambda v, _b: parse_boolean(v),
    "title": lambda v, _b: _as_given(v),
    "description": lambda v, _b: _as_given(v),
    "custom_data": lambda v, _b: _as_given(v),
}
_FIELDS: dict[str, dict[str, _Parser]] = {
    "stage": {
        **_COMMON_FIELDS,
        "bases": lambda v, b: b.parse(v),
        "acl_upload": lambda v, _b: parse_acl_list(v),
        "acl_toxresult_upload": lambda v, _b: parse_acl_list(v),
        "mirror_whitelist": lambda v, _b: _parse_whitelist(v),
        "mirror_whitelist_inheritance": lambda v, _b: _parse_inheritance(v),
    },
    "mirror": {
        **_COMMON_FIELDS,
        "mirror_url": lambda v, _b: _parse_mirror_url(v),
        "mirror_cache_expiry": lambda v, _b: _parse_cache_expiry(v),
        "mirror_no_project_list": lambda v, _b: parse_boolean(v),
        "mirror_use_external_urls": lambda v, _b: parse_boolean(v),
        "mirror_ignore_serial_header": lambda v, _b: parse_boolean(v),
        "mirror_web_url_fmt": lambda v, _b: _as_given(v),
    },
}
# Normalisation of one element for "+=" / "-=": how it would be stored.
_LIST_ELEMENTS: dict[str, dict[str, Callable[[str], str]]] = {
    "stage": {
        "bases": lambda text: text.strip().strip("/"),
        "acl_upload": _acl_entry,
        "acl_toxresult_upload": _acl_entry,
        "mirror_whitelist": _whitelist_entry,
    },
    "mirror": {},
}
# Accepted in a body and silently dropped (model.md §3.3; legacy pypi_whitelist).
_DROPPED_KEYS: dict[str, frozenset[str]] = {
    "stage": frozenset({"pypi_whitelist"}),
    "mirror": frozenset({"bases", "acl_upload", "mirror_whitelist", "pypi_whitelist"}),
}
# Never taken from a body: type is checked separately, projects is computed.
_IGNORED_KEYS = frozenset({"type", "projects"})


def _defaults(index_type: str, owner: str) -> dict[str, Any]:
    if index_type == "mirror":
        return {"type": "mirror", "volatile": True}
    return {
        "type": "stage",
        "volatile": True,
        "bases": [],
        "acl_upload": [owner],
        "acl_toxresult_upload": [ANONYMOUS],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
    }


def _check_type(index_type: Any) -> str:
    if not isinstance(index_type, str) or index_type not in INDEX_TYPES:
        raise ConfigError(f"unknown index type {index_type!r}")
    return index_type


def _unexpected(unknown: Mapping[str, Any]) -> str:
    pairs = ", ".join(f"{key}={value}" for key, value in unknown.items())
    return f"indexconfig got unexpected keyword arguments: {pairs}"


def _overlay(
    config: dict[str, Any], body: Mapping[str, Any], index_type: str, bases: _Bases
) -> tuple[list[str], dict[str, Any]]:
    """Parse the body's keys into ``config``; return (problems, unknown keys)."""
    fields = _FIELDS[index_type]
    problems: list[str] = []
    unknown: dict[str, Any] = {}
    for key, value in body.items():
        if key in _IGNORED_KEYS or key in _DROPPED_KEYS[index_type]:
            continue
        parser = fields.get(key)
        if parser is None:
            unknown[key] = value
            continue
        try:
            config[key] = parser(value, bases)
        except ConfigError as exc:
            problems.extend(exc.messages)
    return problems, unknown


def _finish(
    config: dict[str, Any], index_type: str, problems: list[str], unknown: Mapping[str, Any]
) -> dict[str, Any]:
    # An invalid mirror_url was already reported; don't add "missing" to it.
    if index_type == "mirror" and "mirror_url" not in config and _MIRROR_URL_INVALID not in problems:
        problems.append(_MIRROR_URL_MISSING)
    if unknown:
        problems.append(_unexpected(unknown))
    if problems:
        raise ConfigError(problems)
    return config


# --- creation (model.md §3.5, http-api.md §3.7.3) ---------------------------


def new_index_config(
    owner: str, body: Mapping[str, Any], *, base_exists: Callable[[str], bool]
) -> dict[str, Any]:
    """The configuration of a new index of user ``owner`` from a PUT body.

    Defaults for the type (``stage`` unless given), overlaid with the body's
    parsed values. ``projects`` is ignored, stage-only keys are dropped for
    mirrors, unknown keys and invalid values raise :class:`ConfigError`.
    """
    if not isinstance(body, Mapping):
        raise ConfigError("index configuration must be a JSON object")
    index_type = _check_type(body.get("type", "stage"))
    config = _defaults(index_type, owner)
    problems, unknown = _overlay(config, body, index_type, _Bases(base_exists))
    return _finish(config, index_type, problems, unknown)


# --- modification (model.md §3.6, http-api.md §3.7.4) -----------------------


def _start_modification(
    current: Mapping[str, Any], index_type: str, owner: str
) -> dict[str, Any]:
    config = copy.deepcopy(dict(current))
    config.pop("projects", None)
    # The legacy whitelist key goes away on every modification (§3.6).
    config.pop("pypi_whitelist", None)
    # Old data may lack default keys; like the reference we store them now,
    # but an old index keeps the whitelist inheritance it had in effect.
    for key, value in _defaults(index_type, owner).items():
        if key not in config:
            config[key] = _LEGACY_INHERITANCE if key == "mirror_whitelist_inheritance" else value
    return config


def _current_bases(current: Mapping[str, Any]) -> list[str]:
    stored = current.get("bases")
    if isinstance(stored, (list, tuple)):
        return [base for base in stored if isinstance(base, str)]
    return []


def modify_index_config(
    current: Mapping[str, Any],
    body: Mapping[str, Any] | Sequence[str],
    *,
    owner: str,
    base_exists: Callable[[str], bool],
) -> dict[str, Any]:
    """The new configuration after a PATCH; ``current`` is not changed.

    ``body`` is a partial configuration (a GET envelope is unwrapped) or a
    list of operation strings (``k=v``, ``k+=v``, ``k-=v``, ``k-=``). The
    caller compares the result with ``current`` for ``?error_on_noop``
    (:data:`NOOP_MESSAGE`).
    """
    index_type = _check_type(current.get("type"))
    bases = _Bases(base_exists, known=_current_bases(current))
    if isinstance(body, Mapping):
        return _modify_with_mapping(current, body, index_type, owner, bases)
    if isinstance(body, (str, bytes)) or not isinstance(body, Sequence):
        raise ConfigError("index modification must be a JSON object or a list of operations")
    return _modify_with_operations(current, body, index_type, owner, bases)


def _modify_with_mapping(
    current: Mapping[str, Any],
    body: Mapping[str, Any],
    index_type: str,
    owner: str,
    bases: _Bases,
) -> dict[str, Any]:
    if body.get("type") == "indexconfig" and "result" in body:
        result = body["result"]
        if not isinstance(result, Mapping):
            raise ConfigError("index configuration must be a JSON object")
        body = result
    if "type" in body and body["type"] != index_type:
        raise ConfigError(_TYPE_CHANGED)
    config = _start_modification(current, index_type, owner)
    problems, unknown = _overlay(config, body, index_type, bases)
    return _finish(config, index_type, problems, unknown)


@dataclass(frozen=True)
class _Operation:
    kind: str  # "set", "add", "del" or "drop"
    key: str
    value: str


def _parse_operation(item: Any) -> _Operation:
    if not isinstance(item, str):
        raise ConfigError(f"index modification operations must be strings, got {item!r}")
    # Split at the first "=": a key ending in "+" or "-" selects the operation.
    key, _sep, value = item.partition("=")
    if key.endswith("+"):
        return _Operation("add", key[:-1], value)
    if key.endswith("-"):
        return _Operation("drop" if value == "" else "del", key[:-1], value)
    return _Operation("set", key, value)


def _missing_value(key: str, value: str) -> ConfigError:
    return ConfigError(f"The {key!r} setting doesn't have value {value!r}")


def _modify_with_operations(
    current: Mapping[str, Any],
    items: Sequence[Any],
    index_type: str,
    owner: str,
    bases: _Bases,
) -> dict[str, Any]:
    operations = [_parse_operation(item) for item in items]
    config = _start_modification(current, index_type, owner)
    fields = _FIELDS[index_type]
    elements = _LIST_ELEMENTS[index_type]
    default_keys = _defaults(index_type, owner).keys()
    for op in operations:
        key = op.key
        if key == "projects":
            continue
        if key in _DROPPED_KEYS[index_type]:
            # Meaningless for this type: setting is ignored as in a dict body,
            # a leftover stored value may be dropped, and it holds no values.
            if op.kind == "drop":
                config.pop(key, None)
            elif op.kind == "del":
                raise _missing_value(key, op.value)
            continue
        if op.kind == "drop":
            if key in default_keys:
                raise ConfigError(_DEFAULTS_KEPT)
            config.pop(key, None)
            continue
        if key == "type":
            if op.kind != "set":
                raise ConfigError(f"The {key!r} setting is not a list")
            if op.value != index_type:
                raise ConfigError(_TYPE_CHANGED)
            continue
        parser = fields.get(key)
        if parser is None:
            if op.kind != "set":
                raise ConfigError(_unexpected({key: op.value}))
            # Reported below together with other unknown keys.
            config[key] = op.value
            continue
        if op.kind == "set":
            config[key] = parser(op.value, bases)
            continue
        element = elements.get(key)
        if element is None:
            raise ConfigError(f"The {key!r} setting is not a list")
        stored = config.get(key)
        if stored is not None and not isinstance(stored, list):
            stored = parser(stored, bases)
        if op.kind == "add":
            if not op.value.strip():
                continue
            value = bases.entry(op.value) if key == "bases" else element(op.value)
            entries = list(stored or [])
            if value not in entries:
                entries.append(value)
            config[key] = entries
        else:
            wanted = {element(op.value), op.value}
            if stored is None or not wanted.intersection(stored):
                raise _missing_value(key, op.value)
            config[key] = [entry for entry in stored if entry not in wanted]
    # Keys unknown to this server that are already stored (e.g. from a removed
    # plugin) survive when every operation is +=, -= or a drop; a "k=v"
    # operation revalidates the whole configuration and refuses them.
    keep_unknown = all(op.kind != "set" for op in operations)
    unknown = {
        key: value
        for key, value in config.items()
        if key not in fields and key not in _IGNORED_KEYS
        and key not in _DROPPED_KEYS[index_type]
    }
    return _finish(config, index_type, [], {} if keep_unknown else unknown)


# --- reading stored configurations -------------------------------------------


def root_pypi_config() -> dict[str, Any]:
    """The configuration of ``root/pypi`` created at initialisation (model.md §8)."""
    return {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": DEFAULT_MIRROR_URL,
        "mirror_web_url_fmt": DEFAULT_MIRROR_WEB_URL_FMT,
    }


def toxresult_upload_acl(config: Mapping[str, Any]) -> list[str]:
    """``acl_toxresult_upload``; old indexes without it allow anonymous uploads."""
    acl = config.get("acl_toxresult_upload", [ANONYMOUS])
    return list(acl) if isinstance(acl, (list, tuple)) else [ANONYMOUS]


def whitelist_inheritance(config: Mapping[str, Any]) -> str:
    """``mirror_whitelist_inheritance``; old indexes without it use ``union``."""
    value = config.get("mirror_whitelist_inheritance", _LEGACY_INHERITANCE)
    return value if value in _INHERITANCE_CHOICES else _LEGACY_INHERITANCE


def cache_expiry_seconds(
    config: Mapping[str, Any], default_cache_expiry: int = DEFAULT_CACHE_EXPIRY_SECONDS
) -> int:
    """A mirror's ``mirror_cache_expiry``, else the server-wide default.

    The default is not stored at creation (model.md §3.3 example), so it is
    applied when reading.
    """
    value = config.get("mirror_cache_expiry")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default_cache_expiry

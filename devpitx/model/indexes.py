"""Index records (model.md §3): create, modify, delete, and the stage resolution order (§6.1).

An index configuration lives under ``index/<user>/<index>``; the rules for
its keys and values are in ``ixconfig.py``. This module adds what needs the
store: whether the owner and the bases exist, the 409/403/404 cases, and
removing an index's projects and files with it.

Functions take a read view (Store) or a WriteTxn and plain values. Refusals
raise :class:`StageError` carrying the status code and exact message the web
layer answers with.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from devpitx.model.errors import Refused
from devpitx.model.ixconfig import (
    NOOP_MESSAGE,
    ConfigError,
    modify_index_config,
    new_index_config,
)
from devpitx.model.names import InvalidName, validate_index_name
from devpitx.model.releases import delete_index_contents
from devpitx.model.users import (
    UserError,
    check_name_length,
    create_user,
    delete_user_record,
    get_user,
)
from devpitx.storage.keys import index_key
from devpitx.storage.txn import WriteTxn

log = Logger()


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


class StageError(Refused):
    """An index operation was refused."""


@dataclass(frozen=True)
class Stage:
    """One index as seen by a read: its owner, name and stored configuration."""

    user: str
    index: str
    config: Mapping[str, Any]

    @property
    def name(self) -> str:
        return f"{self.user}/{self.index}"

    @property
    def is_mirror(self) -> bool:
        return self.config.get("type") == "mirror"


def not_found_message(user: str, index: str) -> str:
    return f"The stage {user}/{index} could not be found."


# -- reads ---------------------------------------------------------------------------------
def get_index_config(view: Reader, user: str, index: str) -> dict[str, Any] | None:
    config = view.get(index_key(user, index))
    return config if isinstance(config, dict) else None


def get_stage(view: Reader, user: str, index: str) -> Stage | None:
    config = get_index_config(view, user, index)
    return None if config is None else Stage(user, index, config)


def split_index_name(name: str) -> tuple[str, str] | None:
    """``"user/index"`` -> ``("user", "index")``; None for anything else."""
    user, sep, index = name.partition("/")
    if not sep or not user or not index or "/" in index:
        return None
    return user, index


def index_exists(view: Reader, name: str) -> bool:
    parts = split_index_name(name)
    return parts is not None and get_index_config(view, *parts) is not None


def is_volatile(config: Mapping[str, Any]) -> bool:
    # Like the reference, a configuration without the key is protected.
    return bool(config.get("volatile", False))


def all_stages(view: Reader) -> list[Stage]:
    stages = []
    for user in sorted(view.children("index")):
        for index in sorted(view.children(f"index/{user}")):
            stage = get_stage(view, user, index)
            if stage is not None:
                stages.append(stage)
    return stages


def _bases(config: Mapping[str, Any]) -> list[str]:
    stored = config.get("bases")
    if not isinstance(stored, (list, tuple)):
        return []
    return [base for base in stored if isinstance(base, str)]


def sro(view: Reader, user: str, index: str) -> list[Stage]:
    """The stage resolution order of ``user/index`` (model.md §6.1).

    Private indexes breadth-first, then every mirror once, in order of
    discovery. Unlike the reference, an index is marked as seen when it is
    first *queued*, so a base reachable along several paths is visited once
    (no duplicate ``+shadowing`` entries). Missing bases are skipped with a
    warning; an index that does not exist has an empty order.
    """
    first = get_stage(view, user, index)
    if first is None:
        return []
    order: list[Stage] = []
    mirrors: list[Stage] = []
    seen = {first.name}
    queue = deque([first])
    while queue:
        stage = queue.popleft()
        order.append(stage)
        if stage.is_mirror:
            continue        # mirrors never have bases (model.md §3.3)
        for base in _bases(stage.config):
            if base in seen:
                continue
            seen.add(base)
            parts = split_index_name(base)
            found = get_stage(view, *parts) if parts is not None else None
            if found is None:
                log.warn("Index {index} refers to non-existing base {base}", index=stage.name, base=base)
                continue
            (mirrors if found.is_mirror else queue).append(found)
    return order + mirrors


# -- writes --------------------------------------------------------------------------------
def create_index(tx: WriteTxn, user: str, index: str, body: Any, *, create_owner: bool,
                 now: float) -> dict[str, Any]:
    """Store the configuration of a new index from a PUT body (http-api.md §3.7.3 steps 2, 4-6).

    ``create_owner``: the owner does not exist yet and may be created here
    without a password (the caller decided that it is allowed, step 1).
    """
    if get_index_config(tx, user, index) is not None:
        raise StageError(409, f"index '{user}/{index}' exists")
    try:
        validate_index_name(index)
        check_name_length("indexname", index)
    except InvalidName as exc:
        raise StageError(400, exc.message) from None
    try:
        config = new_index_config(user, body, base_exists=lambda name: index_exists(tx, name))
    except ConfigError as exc:
        raise StageError(400, exc.message) from None
    if get_user(tx, user) is None:
        if not create_owner:
            raise StageError(404, f"no user '{user}'")
        try:
            create_user(tx, user, None, {}, now)
        except UserError as exc:
            raise StageError(exc.code, exc.message) from None
    tx.set(index_key(user, index), config)
    return config


def modify_index(tx: WriteTxn, user: str, index: str, body: Mapping[str, Any] | Sequence[str], *,
                 error_on_noop: bool) -> dict[str, Any]:
    """Apply a PATCH body (dict or operation list) and store the result (http-api.md §3.7.4)."""
    current = get_index_config(tx, user, index)
    if current is None:
        raise StageError(404, not_found_message(user, index))
    try:
        config = modify_index_config(current, body, owner=user,
                                     base_exists=lambda name: index_exists(tx, name))
    except ConfigError as exc:
        raise StageError(400, exc.message) from None
    if config == current:
        if error_on_noop:
            raise StageError(400, NOOP_MESSAGE)
        return config
    tx.set(index_key(user, index), config)
    return config


def delete_index(tx: WriteTxn, user: str, index: str, now: float) -> None:
    """Remove a volatile index with all its projects and files (model.md §3.7)."""
    config = get_index_config(tx, user, index)
    if config is None:
        raise StageError(404, not_found_message(user, index))
    if not is_volatile(config):
        raise StageError(403, f"index {user}/{index} non-volatile, cannot delete")
    _remove_index(tx, user, index, now)


def _remove_index(tx: WriteTxn, user: str, index: str, now: float) -> None:
    delete_index_contents(tx, user, index, now)
    tx.delete(index_key(user, index))


def delete_user(tx: WriteTxn, user: str, now: float) -> None:
    """Remove ``user`` with every index, project and file (model.md §2.3).

    Lives here rather than in ``users.py`` because the cascade is about
    indexes; refused as a whole if any index is non-volatile.
    """
    if get_user(tx, user) is None:
        raise StageError(404, f"no user '{user}'")
    names = sorted(tx.children(f"index/{user}"))
    for name in names:
        config = get_index_config(tx, user, name)
        if config is not None and not is_volatile(config):
            raise StageError(403, f"user '{user}' has non-volatile index: {name}")
    for name in names:
        _remove_index(tx, user, name, now)
    delete_user_record(tx, user)


def stage_project_names(view: Reader, stage: Stage) -> list[str]:
    """The ``projects`` of ``GET /U/I``: this index only, normalized, sorted (http-api.md §3.7.1).

    For a mirror these are the projects cached locally; the full upstream
    list is the mirror's business and not known to the model.
    """
    prefix = "mirrorlinks" if stage.is_mirror else "project"
    return sorted(view.children(f"{prefix}/{stage.user}/{stage.index}"))

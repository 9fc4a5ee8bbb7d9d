"""Which role a node runs with (spec/cli.md §2.3), decided from ``.nodeinfo`` and the options.

Pure functions: the caller (``cli/tap.makeService``, ``devpitx init``) reads the
stored node info, asks here, and writes the answer back before the store is used.
A refusal is a :class:`RoleError` whose message is the fatal error text.

Rules, with ``url`` = ``--primary-url`` or else the stored primary URL:

* ``--role auto``: on the first start ``replica`` if there is a url, else
  ``standalone``; later the stored role stays, except that a stored primary
  falls back to ``standalone`` (the primary role must be asked for at every
  start). A stored replica without url, or a url for a stored non-replica, is fatal.
* an explicit role replaces the stored one; ``replica`` needs a url and a node
  that never ran as anything else; every other role forgets the primary URL.
* ``master`` is the legacy spelling of ``primary`` and is stored as ``primary``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from devpitx.storage.nodeinfo import NodeInfo

REPLICA = "replica"
PRIMARY = "primary"
STANDALONE = "standalone"
AUTO = "auto"


class RoleError(Exception):
    """The options and the stored node info contradict each other; the message is the fatal text."""


@dataclass(frozen=True)
class RoleChoice:
    role: str                   # standalone, primary or replica
    primary_url: str | None     # set exactly for replicas


def canonical_role(role: str | None) -> str | None:
    """Stored and requested roles with the legacy ``master`` spelled ``primary``."""
    return PRIMARY if role == "master" else role


def choose_role(stored_role: str | None, stored_primary_url: str | None, requested_role: str,
                primary_url_option: str | None) -> RoleChoice:
    """The role to run with; ``stored_role`` None means the directory is being initialised."""
    stored = canonical_role(stored_role)
    requested = canonical_role(requested_role) or AUTO
    url = primary_url_option or stored_primary_url
    if requested == AUTO:
        if stored is None:
            return RoleChoice(REPLICA, url) if url else RoleChoice(STANDALONE, None)
        if stored == REPLICA:
            if not url:
                raise RoleError("configuration error, primary URL isn't set in nodeinfo, "
                                "but role is set to replica")
            return RoleChoice(REPLICA, url)
        if primary_url_option:
            raise RoleError(f"cannot run as replica, was previously run as {stored}")
        if stored_primary_url:
            raise RoleError("configuration error, primary URL set in nodeinfo, but role isn't set to replica")
        # A primary serves its changelog to anyone holding the secret: only on request.
        return RoleChoice(STANDALONE, None)
    if requested == REPLICA:
        if stored is not None and stored != REPLICA:
            raise RoleError(f"cannot run as replica, was previously run as {stored}")
        if not url:
            raise RoleError("need to specify --primary-url to run as replica")
        return RoleChoice(REPLICA, url)
    if requested not in (STANDALONE, PRIMARY):
        raise RoleError(f"unknown role {requested_role!r}")
    return RoleChoice(requested, None)


def apply_role(node: NodeInfo, requested_role: str, primary_url_option: str | None) -> NodeInfo:
    """``node`` as it must be stored for this start (a new object; ``node`` is not changed)."""
    choice = choose_role(node.role, node.primary_url, requested_role, primary_url_option)
    return dataclasses.replace(node, role=choice.role, primary_url=choice.primary_url,
                               extra=dict(node.extra))

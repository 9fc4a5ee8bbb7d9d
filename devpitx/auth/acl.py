"""Principals and permissions (auth.md §6, §7): who may do what, as pure functions.

Owns the global ACL (with and without ``--restrict-modify``), the index ACL
derived from an index configuration, and their evaluation for an identity.
Deciding between 401 and 403 is the web layer's job (§8); it asks
``has_permission`` and looks at whether the identity is anonymous.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

EVERYONE = "Everyone"
AUTHENTICATED = "Authenticated"
ROOT = "root"
REPLICA_USERNAME = "+replica"

_ACE_ANONYMOUS = ":ANONYMOUS:"
_ACE_AUTHENTICATED = ":AUTHENTICATED:"

GLOBAL_PERMISSIONS = frozenset({
    "user_login", "pkg_read", "user_create", "user_modify", "user_modify_password",
    "index_create", "user_delete",
})
INDEX_PERMISSIONS = frozenset({
    "pkg_read", "upload", "toxresult_upload", "index_modify", "index_delete",
    "del_entry", "del_project", "del_verdata",
})
PERMISSIONS = GLOBAL_PERMISSIONS | INDEX_PERMISSIONS

_NOBODY: frozenset[str] = frozenset()
_SYSTEM_PRINCIPALS = frozenset({EVERYONE, AUTHENTICATED})


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: ``username`` None is anonymous, ``"+replica"`` a replica."""

    username: str | None
    groups: tuple[str, ...] = ()

    @property
    def authenticated(self) -> bool:
        return self.username is not None


ANONYMOUS = Identity(None)
REPLICA = Identity(REPLICA_USERNAME)


def principals(identity: Identity) -> frozenset[str]:
    """``Everyone``; if authenticated also ``Authenticated``, the username, ``:group``s."""
    if identity.username is None:
        return frozenset({EVERYONE})
    if identity.username == REPLICA_USERNAME:
        # The replica only ever needs pkg_read (granted to "+replica" by name).
        # Keeping it out of "Authenticated" means an index open to
        # :AUTHENTICATED: uploads never trusts a replica's bearer token.
        return frozenset({EVERYONE, REPLICA_USERNAME})
    return frozenset({EVERYONE, AUTHENTICATED, identity.username,
                      *(f":{group}" for group in identity.groups)})


def ace_principal(ace: str) -> str | None:
    """The principal an index ACL entry names (``:ANONYMOUS:`` includes everybody).

    None for an entry that must match nobody: a user literally named
    "Everyone" or "Authenticated" would otherwise open the index to all.
    """
    name = ace.strip()
    special = name.upper()
    if special == _ACE_ANONYMOUS:
        return EVERYONE
    if special == _ACE_AUTHENTICATED:
        return AUTHENTICATED
    if not name or name in _SYSTEM_PRINCIPALS:
        return None
    return name         # ":group" or a user name, both used verbatim


def has_permission(permission: str, identity: Identity, *, url_user: str | None,
                   index_config: Mapping[str, Any] | None,
                   restrict_modify: Sequence[str] | None) -> bool:
    """Whether ``identity`` holds ``permission`` for the URL ``/url_user[/index]``.

    ``index_config`` is the configuration of the addressed index if the URL
    addresses an existing one (then its ACL is added to the global one), else
    None. ``restrict_modify`` is the parsed ``--restrict-modify`` list or None.
    Unknown permissions are never granted.
    """
    allowed = global_acl(permission, url_user=url_user, restrict_modify=restrict_modify)
    if index_config is not None:
        allowed |= index_acl(permission, url_user=url_user, index_config=index_config,
                             restrict_modify=restrict_modify)
    return not allowed.isdisjoint(principals(identity))


def global_acl(permission: str, *, url_user: str | None,
               restrict_modify: Sequence[str] | None) -> frozenset[str]:
    """Principals the global ACL (§7.1) grants ``permission`` for URL user ``url_user``."""
    url_users = frozenset({url_user}) if url_user is not None else _NOBODY
    if permission == "user_login":
        return frozenset({EVERYONE})
    if permission == "pkg_read":
        return frozenset({REPLICA_USERNAME})
    if restrict_modify is None:
        if permission == "user_create":
            return frozenset({EVERYONE})
        if permission in ("user_modify", "user_modify_password", "index_create"):
            return frozenset({ROOT}) | url_users
        if permission == "user_delete":
            # Nobody deletes root; deleting needs a user to delete.
            if url_user is None or url_user == ROOT:
                return _NOBODY
            return frozenset({ROOT, url_user})
        return _NOBODY
    admins = _restrict_set(restrict_modify)
    if permission in ("user_create", "user_modify", "index_create"):
        return admins
    if permission == "user_modify_password":
        return admins | url_users          # users may still change their own password
    if permission == "user_delete":
        # Each admin principal may delete anybody but itself (root included).
        if url_user is None:
            return _NOBODY
        return frozenset(p for p in admins if p != url_user)
    return _NOBODY


def index_acl(permission: str, *, url_user: str | None, index_config: Mapping[str, Any],
              restrict_modify: Sequence[str] | None) -> frozenset[str]:
    """Principals the ACL of index ``url_user/…`` (§7.2) grants ``permission``."""
    if restrict_modify is None:
        owners = frozenset({ROOT}) | (frozenset({url_user}) if url_user is not None else _NOBODY)
        readers = frozenset({ROOT})
    else:
        owners = readers = _restrict_set(restrict_modify)
    # Mirrors take no uploads whatever their configuration says.
    is_mirror = index_config.get("type") == "mirror"
    uploaders = _NOBODY if is_mirror else _aces(index_config.get("acl_upload"))
    if permission == "pkg_read":
        return frozenset({EVERYONE}) | readers
    if permission == "upload":
        return uploaders
    if permission == "toxresult_upload":
        aces = index_config.get("acl_toxresult_upload")
        return _aces([_ACE_ANONYMOUS] if aces is None else aces)
    if permission in ("index_modify", "index_delete"):
        return owners
    if permission in ("del_entry", "del_project", "del_verdata"):
        return uploaders | owners
    return _NOBODY


def _aces(entries: object) -> frozenset[str]:
    # A malformed ACL (not a list of strings) grants nothing rather than crash a request.
    if not isinstance(entries, (list, tuple)):
        return _NOBODY
    found = (ace_principal(e) for e in entries if isinstance(e, str))
    return frozenset(p for p in found if p is not None)


def _restrict_set(restrict_modify: Iterable[str]) -> frozenset[str]:
    # Names and ":group"s only; like ACL entries, they never name a system principal.
    names = (p.strip() for p in restrict_modify)
    return frozenset(p for p in names if p and p not in _SYSTEM_PRINCIPALS)

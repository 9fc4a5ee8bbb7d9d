"""Tests for devpitx.auth.acl: the permission catalogue of auth.md §7 as tables."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytest

from devpitx.auth.acl import (
    ANONYMOUS,
    AUTHENTICATED,
    EVERYONE,
    PERMISSIONS,
    REPLICA,
    Identity,
    ace_principal,
    has_permission,
    principals,
)

# Who is asking. The URL user (index owner) is always "alice" unless a row says otherwise.
WHO = {
    "anon": ANONYMOUS,
    "alice": Identity("alice"),                     # the user named in the URL / index owner
    "bob": Identity("bob"),                         # some other user
    "root": Identity("root"),
    "carol": Identity("carol", ("developer",)),     # member of group "developer"
    "admin": Identity("admin"),                     # named in --restrict-modify
    "dave": Identity("dave", ("admins",)),          # member of a --restrict-modify group
    "replica": REPLICA,
}
ALL = frozenset(WHO)
USERS = ALL - {"anon", "replica"}
RESTRICT = ["admin", ":admins"]


def granted(permission: str, *, url_user: str | None = "alice",
            index_config: Mapping[str, Any] | None = None,
            restrict_modify: Sequence[str] | None = None) -> frozenset[str]:
    return frozenset(name for name, identity in WHO.items()
                     if has_permission(permission, identity, url_user=url_user,
                                       index_config=index_config,
                                       restrict_modify=restrict_modify))


# --- principals -----------------------------------------------------------------------

def test_principals() -> None:
    assert principals(ANONYMOUS) == {EVERYONE}
    assert principals(Identity("alice")) == {EVERYONE, AUTHENTICATED, "alice"}
    assert principals(Identity("carol", ("dev", "ops"))) == \
        {EVERYONE, AUTHENTICATED, "carol", ":dev", ":ops"}
    assert principals(REPLICA) == {EVERYONE, "+replica"}


def test_ace_principal() -> None:
    assert ace_principal(":ANONYMOUS:") == EVERYONE
    assert ace_principal(":anonymous:") == EVERYONE
    assert ace_principal(":AUTHENTICATED:") == AUTHENTICATED
    assert ace_principal(":developer") == ":developer"
    assert ace_principal("alice") == "alice"
    assert ace_principal(" bob ") == "bob"
    # Entries spelling a system principal match nobody instead of everybody.
    assert ace_principal("Everyone") is None
    assert ace_principal("Authenticated") is None
    assert ace_principal("  ") is None


def test_system_principal_names_in_acls_grant_nothing() -> None:
    config = {"type": "stage", "acl_upload": ["Everyone", "Authenticated"]}
    assert granted("upload", index_config=config) == set()
    assert granted("user_create", restrict_modify=["Everyone", "Authenticated"]) == set()


# --- global ACL, without --restrict-modify (§7.1) ---------------------------------------

@pytest.mark.parametrize(("permission", "expected"), [
    ("user_login", ALL),
    ("pkg_read", {"replica"}),
    ("user_create", ALL),
    ("user_modify", {"root", "alice"}),
    ("user_modify_password", {"root", "alice"}),
    ("index_create", {"root", "alice"}),
    ("user_delete", {"root", "alice"}),
])
def test_global_acl(permission: str, expected: set[str]) -> None:
    assert granted(permission) == expected


def test_nobody_deletes_root_without_restrict_modify() -> None:
    assert granted("user_delete", url_user="root") == set()
    assert granted("user_modify", url_user="root") == {"root"}


def test_without_url_user() -> None:
    assert granted("user_modify", url_user=None) == {"root"}
    assert granted("user_delete", url_user=None) == set()
    assert granted("user_create", url_user=None) == ALL


# --- global ACL, with --restrict-modify ---------------------------------------------------

@pytest.mark.parametrize(("permission", "expected"), [
    ("user_login", ALL),
    ("pkg_read", {"replica"}),
    ("user_create", {"admin", "dave"}),              # root is not implicitly included
    ("user_modify", {"admin", "dave"}),
    ("index_create", {"admin", "dave"}),
    ("user_modify_password", {"admin", "dave", "alice"}),
    ("user_delete", {"admin", "dave"}),
])
def test_global_acl_restricted(permission: str, expected: set[str]) -> None:
    assert granted(permission, restrict_modify=RESTRICT) == expected


def test_restricted_admins_can_delete_root_but_not_themselves() -> None:
    assert granted("user_delete", url_user="root", restrict_modify=RESTRICT) == {"admin", "dave"}
    assert granted("user_delete", url_user="admin", restrict_modify=RESTRICT) == {"dave"}


def test_restrict_modify_can_include_root() -> None:
    assert granted("user_create", restrict_modify=["root"]) == {"root"}
    assert granted("user_create", restrict_modify=[" root ", ""]) == {"root"}


def test_empty_restrict_modify_list_locks_everyone_out() -> None:
    assert granted("user_create", restrict_modify=[]) == set()
    assert granted("user_modify_password", restrict_modify=[]) == {"alice"}


# --- index ACL (§7.2) ---------------------------------------------------------------------

OWN = {"type": "stage", "acl_upload": ["alice"]}
GROUP = {"type": "stage", "acl_upload": [":developer"]}
OPEN = {"type": "stage", "acl_upload": [":ANONYMOUS:"]}
MEMBERS = {"type": "stage", "acl_upload": [":AUTHENTICATED:"]}
MIRROR = {"type": "mirror", "acl_upload": [":ANONYMOUS:"]}


@pytest.mark.parametrize(("permission", "config", "expected"), [
    ("pkg_read", OWN, ALL),
    ("pkg_read", MIRROR, ALL),
    # root cannot upload to another user's index unless listed
    ("upload", OWN, {"alice"}),
    ("upload", {"type": "stage", "acl_upload": ["alice", "root"]}, {"alice", "root"}),
    ("upload", {"type": "stage", "acl_upload": []}, set()),
    ("upload", {"type": "stage"}, set()),
    # a group ACL admits members only, not even the owner
    ("upload", GROUP, {"carol"}),
    # :ANONYMOUS: is everybody, authenticated users included
    ("upload", OPEN, ALL),
    ("upload", MEMBERS, USERS),
    ("upload", MIRROR, set()),
    ("upload", {"type": "mirror"}, set()),
    # toxresults: missing key means :ANONYMOUS:
    ("toxresult_upload", OWN, ALL),
    ("toxresult_upload", {"type": "stage", "acl_toxresult_upload": None}, ALL),
    ("toxresult_upload", {"type": "stage", "acl_toxresult_upload": []}, set()),
    ("toxresult_upload", {"type": "stage", "acl_toxresult_upload": ["bob"]}, {"bob"}),
    ("toxresult_upload", {"type": "stage", "acl_toxresult_upload": [":anonymous:"]}, ALL),
    ("index_modify", OWN, {"root", "alice"}),
    ("index_delete", OWN, {"root", "alice"}),
    ("index_modify", MIRROR, {"root", "alice"}),
    # anyone who may upload may delete, plus owner and root
    ("del_entry", OWN, {"root", "alice"}),
    ("del_project", GROUP, {"root", "alice", "carol"}),
    ("del_verdata", OPEN, ALL),
    ("del_entry", MIRROR, {"root", "alice"}),
    # global permissions still apply in an index context
    ("index_create", OWN, {"root", "alice"}),
    ("user_login", OWN, ALL),
])
def test_index_acl(permission: str, config: dict[str, Any], expected: set[str]) -> None:
    assert granted(permission, index_config=config) == expected


@pytest.mark.parametrize(("permission", "config", "expected"), [
    ("pkg_read", OWN, ALL),
    ("upload", OWN, {"alice"}),
    ("upload", GROUP, {"carol"}),
    ("toxresult_upload", OWN, ALL),
    # the owner can no longer modify or delete their own index unless in R
    ("index_modify", OWN, {"admin", "dave"}),
    ("index_delete", OWN, {"admin", "dave"}),
    ("del_entry", OWN, {"alice", "admin", "dave"}),
    ("del_project", GROUP, {"carol", "admin", "dave"}),
    ("del_verdata", {"type": "stage", "acl_upload": []}, {"admin", "dave"}),
])
def test_index_acl_restricted(permission: str, config: dict[str, Any],
                              expected: set[str]) -> None:
    assert granted(permission, index_config=config, restrict_modify=RESTRICT) == expected


def test_upload_needs_an_index() -> None:
    for permission in ("upload", "toxresult_upload", "index_modify", "del_entry"):
        assert granted(permission) == set()


@pytest.mark.parametrize("acl", ["alice", None, 42, {"alice": True}, [None, 7]])
def test_malformed_acl_grants_nothing(acl: object) -> None:
    config = {"type": "stage", "acl_upload": acl}
    assert granted("upload", index_config=config) == set()
    assert granted("del_entry", index_config=config) == {"root", "alice"}


def test_acl_entries_match_exact_user_names() -> None:
    config = {"type": "stage", "acl_upload": ["Alice", "bo"]}
    assert granted("upload", index_config=config) == set()


def test_group_named_like_a_user_does_not_match_the_user() -> None:
    config = {"type": "stage", "acl_upload": [":alice"]}
    assert granted("upload", index_config=config) == set()
    assert has_permission("upload", Identity("x", ("alice",)), url_user="alice",
                          index_config=config, restrict_modify=None)


def test_unknown_permission_is_never_granted() -> None:
    assert "frobnicate" not in PERMISSIONS
    assert granted("frobnicate", index_config=OPEN) == set()
    assert granted("frobnicate", index_config=OPEN, restrict_modify=["root"]) == set()


def test_catalogue_is_complete() -> None:
    assert PERMISSIONS == {
        "user_login", "pkg_read", "user_create", "user_modify", "user_modify_password",
        "index_create", "user_delete", "upload", "toxresult_upload", "index_modify",
        "index_delete", "del_entry", "del_project", "del_verdata",
    }

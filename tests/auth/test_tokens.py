"""Tests for devpitx.auth.tokens: the devpi-server compatible token format."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from devpitx.auth.tokens import (
    LOGIN_TOKEN_SECONDS,
    REPLICA_TOKEN_SECONDS,
    LoginTokens,
    ReplicaAuthError,
    ReplicaTokens,
    TokenIdentity,
    TokenVerdict,
    could_be_login_token,
)

KEY = bytes(range(16))
OTHER_KEY = bytes(range(1, 17))
T0 = 1_700_000_000.25


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def spec_token(key: bytes, payload: object, issued_at: int) -> str:
    """auth.md §4.2, written out from the formula, independent of the implementation."""
    text = json.dumps(payload, separators=(", ", ": "), ensure_ascii=True)
    length = (issued_at.bit_length() + 7) // 8
    value = text + "." + b64url(issued_at.to_bytes(length, "big"))
    signkey = hashlib.sha1(b"itsdangerous" + b"signer" + key).digest()
    signature = b64url(hmac.new(signkey, value.encode("ascii"), hashlib.sha1).digest())
    return value + "." + signature


# --- wire format -------------------------------------------------------------

def test_issued_token_is_exactly_the_spec_formula() -> None:
    token = LoginTokens(KEY).issue("alice", ["dev", "ops"], True, T0)
    assert token == spec_token(KEY, ["alice", ["dev", "ops"], True], int(T0))
    assert token.startswith('["alice", ["dev", "ops"], true].')
    assert len(token.rsplit(".", 1)[1]) == 27


def test_hand_built_token_verifies() -> None:
    token = spec_token(KEY, ["alice", [], False], int(T0))
    assert LoginTokens(KEY).check(token, "alice", T0 + 5) == \
        TokenIdentity("alice", (), from_user_object=False)


def test_non_ascii_username_is_ascii_escaped() -> None:
    token = LoginTokens(KEY).issue("jürgen", [], True, T0)
    assert token.isascii()
    assert token == spec_token(KEY, ["jürgen", [], True], int(T0))
    assert LoginTokens(KEY).check(token, "jürgen", T0) == TokenIdentity("jürgen", (), True)


@given(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=4), st.booleans(),
       st.integers(min_value=1, max_value=2**33))
def test_format_matches_spec_for_any_input(username: str, groups: list[str],
                                           from_user_object: bool, issued_at: int) -> None:
    token = LoginTokens(KEY).issue(username, groups, from_user_object, float(issued_at))
    assert token == spec_token(KEY, [username, groups, from_user_object], issued_at)
    assert LoginTokens(KEY).check(token, username, float(issued_at)) == \
        TokenIdentity(username, tuple(groups), from_user_object)


# --- validation (§4.2 steps) -------------------------------------------------

def test_valid_until_expiry_inclusive() -> None:
    tokens = LoginTokens(KEY)
    token = tokens.issue("alice", [], True, T0)
    assert isinstance(tokens.check(token, "alice", int(T0) + LOGIN_TOKEN_SECONDS), TokenIdentity)
    assert tokens.check(token, "alice", int(T0) + LOGIN_TOKEN_SECONDS + 1) is TokenVerdict.EXPIRED


def test_token_from_the_future_is_expired() -> None:
    tokens = LoginTokens(KEY)
    token = tokens.issue("alice", [], True, T0)
    assert tokens.check(token, "alice", T0 - 1) is TokenVerdict.EXPIRED


def test_other_users_token_is_invalid() -> None:
    tokens = LoginTokens(KEY)
    token = tokens.issue("alice", [], True, T0)
    assert tokens.check(token, "bob", T0) is TokenVerdict.INVALID


def test_token_of_another_key_is_not_a_token() -> None:
    token = LoginTokens(OTHER_KEY).issue("alice", [], True, T0)
    assert LoginTokens(KEY).check(token, "alice", T0) is TokenVerdict.NOT_A_TOKEN


def test_tampered_payload_is_not_a_token() -> None:
    token = LoginTokens(KEY).issue("alice", [], False, T0)
    forged = token.replace('["alice", [], false]', '["alice", ["admins"], false]')
    assert forged != token
    assert LoginTokens(KEY).check(forged, "alice", T0) is TokenVerdict.NOT_A_TOKEN


def test_tampered_timestamp_is_not_a_token() -> None:
    token = LoginTokens(KEY).issue("alice", [], False, T0)
    payload, stamp, signature = token.rsplit(".", 2)
    later = spec_token(KEY, ["alice", [], False], int(T0) + 100).rsplit(".", 2)[1]
    assert later != stamp
    assert LoginTokens(KEY).check(f"{payload}.{later}.{signature}", "alice", T0) is \
        TokenVerdict.NOT_A_TOKEN


@pytest.mark.parametrize("secret", [
    "", "password", "pass.word", "a.b.c", "...", "é.é.é", "\ud800", "[].AAAA.!!!!",
])
def test_passwords_are_not_tokens(secret: str) -> None:
    assert LoginTokens(KEY).check(secret, "alice", T0) is TokenVerdict.NOT_A_TOKEN


@given(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=4), st.booleans(),
       st.integers(min_value=1, max_value=2**33))
def test_every_login_token_could_be_one(username: str, groups: list[str], from_user_object: bool,
                                        issued_at: int) -> None:
    """A secret that could not be a token is tried as a password without the key: never a token."""
    assert could_be_login_token(LoginTokens(KEY).issue(username, groups, from_user_object, float(issued_at)))


@given(st.text(max_size=40))
def test_secrets_ruled_out_as_tokens_are_not_tokens(secret: str) -> None:
    assume(not could_be_login_token(secret))
    assert LoginTokens(KEY).check(secret, "alice", T0) is TokenVerdict.NOT_A_TOKEN


def test_what_could_be_a_login_token() -> None:
    token = LoginTokens(KEY).issue("alice", [], True, T0)
    payload, stamp, signature = token.rsplit(".", 2)
    assert could_be_login_token(token)
    assert could_be_login_token("pass.wo.rd")         # waits for the key, then is tried as a password
    for secret in ("", "password", "pass.word", payload + stamp + "." + signature,
                   payload + "." + stamp + signature):
        assert not could_be_login_token(secret), secret
        assert LoginTokens(KEY).check(secret, "alice", T0) is TokenVerdict.NOT_A_TOKEN


@pytest.mark.parametrize("payload", [
    ["alice", []],                          # two elements
    ["alice", [], True, "extra"],           # four elements
    {"user": "alice"},
    "alice",
    ["alice", "dev", True],                 # groups not a list
    ["alice", [1], True],                   # groups not strings
    ["alice", [], "yes"],                   # flag not a bool
])
def test_well_signed_but_wrong_shape_is_invalid(payload: object) -> None:
    token = spec_token(KEY, payload, int(T0))
    assert LoginTokens(KEY).check(token, "alice", T0) is TokenVerdict.INVALID


def test_well_signed_garbage_payload_is_invalid() -> None:
    signkey = hashlib.sha1(b"itsdangerous" + b"signer" + KEY).digest()
    value = "not json." + b64url(int(T0).to_bytes(4, "big"))
    token = value + "." + b64url(hmac.new(signkey, value.encode(), hashlib.sha1).digest())
    assert LoginTokens(KEY).check(token, "alice", T0) is TokenVerdict.INVALID


def test_groups_and_flag_round_trip() -> None:
    tokens = LoginTokens(KEY)
    token = tokens.issue("carol", ("dev",), False, T0)
    assert tokens.check(token, "carol", T0 + 1) == TokenIdentity("carol", ("dev",), False)


# --- replica tokens (§9) -----------------------------------------------------

UUID = "9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"


def test_replica_token_format() -> None:
    token = ReplicaTokens(KEY).issue(UUID, T0)
    assert token == spec_token(KEY, UUID, int(T0))
    assert token.startswith(f'"{UUID}".')


def test_replica_hand_built_token_accepted() -> None:
    ReplicaTokens(KEY).check(spec_token(KEY, UUID, int(T0)), UUID, T0 + 37)


def test_replica_token_max_age() -> None:
    replicas = ReplicaTokens(KEY)
    token = replicas.issue(UUID, T0)
    replicas.check(token, UUID, int(T0) + 37.9)     # whole seconds, like the reference
    assert REPLICA_TOKEN_SECONDS == 37.6
    with pytest.raises(ReplicaAuthError) as info:
        replicas.check(token, UUID, int(T0) + 38)
    assert info.value.message == "Authorization expired."
    with pytest.raises(ReplicaAuthError, match="^Authorization expired.$"):
        replicas.check(token, UUID, T0 - 1)


@pytest.mark.parametrize("token", [
    "", "garbage", spec_token(OTHER_KEY, UUID, int(T0)),
    spec_token(KEY, UUID, int(T0))[:-1],
])
def test_replica_token_malformed(token: str) -> None:
    with pytest.raises(ReplicaAuthError) as info:
        ReplicaTokens(KEY).check(token, UUID, T0)
    assert info.value.message == "Authorization malformed."


def test_login_token_is_not_a_replica_token() -> None:
    # Different keys in practice; even under one key the payload is no uuid string.
    token = LoginTokens(KEY).issue(UUID, [], True, T0)
    with pytest.raises(ReplicaAuthError, match="^Authorization malformed.$"):
        ReplicaTokens(KEY).check(token, UUID, T0)


def test_replica_token_wrong_uuid() -> None:
    token = ReplicaTokens(KEY).issue(UUID, T0)
    with pytest.raises(ReplicaAuthError) as info:
        ReplicaTokens(KEY).check(token, "another-uuid", T0)
    assert info.value.message == "Wrong authorization value."


def test_interoperates_with_the_reference_serializer() -> None:
    # devpi-server's configuration: itsdangerous.TimedSerializer(key), default json.
    from itsdangerous import TimedSerializer
    reference = TimedSerializer(KEY)
    now = time.time()
    theirs = reference.dumps(["alice", ["dev"], True])
    assert isinstance(theirs, str)
    assert LoginTokens(KEY).check(theirs, "alice", now) == TokenIdentity("alice", ("dev",), True)
    ours = LoginTokens(KEY).issue("alice", ["dev"], True, now)
    assert reference.loads(ours, max_age=10) == ["alice", ["dev"], True]

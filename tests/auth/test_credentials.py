"""Tests for devpitx.auth.credentials: header values -> (username, secret)."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpitx.auth.credentials import Credentials, bearer_token, extract_credentials


def b64(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw)


def basic(text: str | bytes) -> bytes:
    return b"Basic " + b64(text)


def test_x_devpi_auth() -> None:
    assert extract_credentials(b64("alice:secret"), None) == Credentials("alice", "secret")


def test_basic_authorization() -> None:
    assert extract_credentials(None, basic("alice:secret")) == Credentials("alice", "secret")


def test_basic_scheme_is_case_insensitive_and_whitespace_tolerant() -> None:
    header = b"  bAsIc   " + b64("alice:pw") + b"  "
    assert extract_credentials(None, header) == Credentials("alice", "pw")


def test_x_devpi_auth_surrounding_whitespace_ignored() -> None:
    found = extract_credentials(b" \t" + b64("alice:pw") + b"\r\n", None)
    assert found == Credentials("alice", "pw")


def test_x_devpi_auth_preferred_over_basic() -> None:
    # devpi-client: its identity in X-Devpi-Auth, a reverse proxy's in Basic.
    found = extract_credentials(b64("alice:token"), basic("proxyuser:proxypw"))
    assert found == Credentials("alice", "token")


def test_garbage_x_devpi_auth_falls_back_to_basic() -> None:
    found = extract_credentials(b"!!not base64!!", basic("bob:pw"))
    assert found == Credentials("bob", "pw")


def test_secret_may_contain_colons() -> None:
    assert extract_credentials(b64("alice:a:b::c"), None) == Credentials("alice", "a:b::c")


def test_empty_secret_is_credentials() -> None:
    # root's default password is the empty string.
    assert extract_credentials(b64("root:"), None) == Credentials("root", "")


def test_utf8_decoding() -> None:
    found = extract_credentials(b64("jürgen:pässword"), None)
    assert found == Credentials("jürgen", "pässword")


def test_latin1_fallback() -> None:
    raw = "jürgen:pä".encode("latin-1")      # not valid UTF-8
    assert extract_credentials(b64(raw), None) == Credentials("jürgen", "pä")


def test_missing_padding_accepted() -> None:
    encoded = b64("alice:pw").rstrip(b"=")
    assert encoded != b64("alice:pw")
    assert extract_credentials(encoded, None) == Credentials("alice", "pw")


@pytest.mark.parametrize("value", [
    b"",
    b"   ",
    b"%%%%",
    b64("no-colon-here"),
    b64(":secret-without-user"),
    b"YWxpY2U6cHc=garbage",
    "é".encode("utf-8"),
])
def test_bad_x_devpi_auth_means_no_credentials(value: bytes) -> None:
    assert extract_credentials(value, None) is None


@pytest.mark.parametrize("header", [
    b"",
    b"Basic",
    b"Basic ",
    b"Basic %%%%",
    b"Bearer " + b64("alice:pw"),
    b"Digest " + b64("alice:pw"),
    b64("alice:pw"),                 # no scheme at all
    b"Basic " + b64("no-colon"),
])
def test_bad_authorization_means_no_credentials(header: bytes) -> None:
    assert extract_credentials(None, header) is None


def test_no_headers() -> None:
    assert extract_credentials(None, None) is None


def test_repr_hides_secret() -> None:
    assert "hunter2" not in repr(Credentials("alice", "hunter2"))


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_never_raises(x_devpi_auth: bytes, authorization: bytes) -> None:
    found = extract_credentials(x_devpi_auth, b"Basic " + authorization)
    assert found is None or isinstance(found, Credentials)


@given(st.text(min_size=1).filter(lambda s: ":" not in s), st.text())
def test_round_trip(username: str, secret: str) -> None:
    try:
        encoded = f"{username}:{secret}".encode("utf-8")
    except UnicodeEncodeError:
        return      # lone surrogates cannot be sent in a header at all
    assert extract_credentials(None, b"Basic " + base64.b64encode(encoded)) == \
        Credentials(username, secret)


def test_bearer_token() -> None:
    assert bearer_token(b"Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token(b"bearer   abc.def  ") == "abc.def"


@pytest.mark.parametrize("header", [
    None, b"", b"Bearer", b"Bearer  ", b"Basic " + b64("a:b"), "Bearer é".encode("utf-8"),
])
def test_no_bearer_token(header: bytes | None) -> None:
    assert bearer_token(header) is None

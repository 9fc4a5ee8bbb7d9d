"""In-process servers for route tests: a real store in a temp dir, inline runners, a fake clock."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import argon2
from treq.testing import StubTreq
from twisted.internet.task import Clock

from devpitx.auth.authkey import LoginTokensWaiter
from devpitx.auth.passwords import Passwords
from devpitx.auth.tokens import LoginTokens, ReplicaTokens
from devpitx.cli.admin import init_serverdir
from devpitx.config import Config
from devpitx.runtime import run_inline
from devpitx.server import Server
from devpitx.storage import nodeinfo
from devpitx.storage.store import Store

CHEAP_HASHER = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
TEST_AUTH_KEY = b"0123456789abcdef"
TEST_REPLICA_KEY = b"fedcba9876543210"
TEST_LOGIN_TOKENS = LoginTokens(TEST_AUTH_KEY)     # what test servers sign login tokens with
BASE = "http://devpitx.test"


def cheap_hash(password: str) -> str:
    return CHEAP_HASHER.hash(password)


def make_test_server(directory: str | Path, *, clock: Clock | None = None, root_password: str = "",
                     no_root_pypi: bool = False, role: str = "standalone", primary_url: str | None = None,
                     replica_tokens: ReplicaTokens | None = None,
                     login_tokens: LoginTokens | LoginTokensWaiter = TEST_LOGIN_TOKENS, **config: Any) -> Server:
    """``role`` is stored in ``.nodeinfo`` as given (a replica starts empty, as ``devpitx init``
    makes it); replica tokens are signed with ``TEST_REPLICA_KEY`` unless others are given;
    ``login_tokens`` may be a ``LoginTokensWaiter`` whose auth key is still being derived."""
    serverdir = Path(directory)
    clock = clock or Clock()
    if not clock.seconds():
        clock.advance(1_700_000_000)  # a realistic "now" for timestamps
    init_serverdir(serverdir, root_password=root_password, no_root_pypi=no_root_pypi,
                   hasher=cheap_hash, make_secret=False, role=role, primary_url=primary_url)
    store = Store.open(serverdir, clock)
    cfg = Config(serverdir=serverdir, listen=("tcp:0",), **config)
    return Server(cfg, store, nodeinfo.load(serverdir), clock=clock, run_disk=run_inline,
                  passwords=Passwords(run_inline, clock=clock, hasher=cheap_hash),
                  login_tokens=login_tokens,
                  replica_tokens=replica_tokens or ReplicaTokens(TEST_REPLICA_KEY))


def stub_client(server: Server) -> StubTreq:
    return StubTreq(server.resource())


def basic_auth(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def devpi_auth(user: str, secret: str) -> dict[str, str]:
    return {"X-Devpi-Auth": base64.b64encode(f"{user}:{secret}".encode()).decode()}


def json_body(data: Any) -> bytes:
    return json.dumps(data).encode()

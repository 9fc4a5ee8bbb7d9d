"""Tests for devpitx.auth.authkey: waiting for the login tokens, deriving the auth key in the background."""
from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from devpitx.auth import authkey
from devpitx.auth.authkey import (
    AuthKeyDerivation,
    AuthKeyUnavailable,
    LoginTokensWaiter,
    derive_key_in_child,
)
from devpitx.auth.secret import Argon2Params, KeyName, SecretError, cached_key, derive_key
from devpitx.auth.tokens import LoginTokens, TokenIdentity

TINY = Argon2Params(memory_cost=8, parallelism=1, time_cost=1)
BAD = Argon2Params(memory_cost=8, parallelism=4, time_cost=1)     # memory < 8 * parallelism
SECRET = base64.b64encode(bytes(range(100, 132)))
T0 = 1_700_000_000.0


class LoginTokensWaiterTests(SynchronousTestCase):
    def test_ready_from_the_start(self) -> None:
        tokens = LoginTokens(b"k" * 16)
        waiter = LoginTokensWaiter(tokens)
        self.assertTrue(waiter.ready)
        self.assertIs(self.successResultOf(waiter.wait_for_tokens()), tokens)

    def test_waits_until_provided(self) -> None:
        waiter = LoginTokensWaiter()
        first, second = waiter.wait_for_tokens(), waiter.wait_for_tokens()
        self.assertFalse(waiter.ready)
        self.assertNoResult(first)
        self.assertNoResult(second)
        tokens = LoginTokens(b"k" * 16)
        waiter.provide(tokens)
        self.assertTrue(waiter.ready)
        self.assertIs(self.successResultOf(first), tokens)
        self.assertIs(self.successResultOf(second), tokens)
        self.assertIs(self.successResultOf(waiter.wait_for_tokens()), tokens)

    def test_failure_reaches_waiting_and_later_callers(self) -> None:
        waiter = LoginTokensWaiter()
        waiting = waiter.wait_for_tokens()
        waiter.fail("out of memory")
        for d in (waiting, waiter.wait_for_tokens()):
            failure = self.failureResultOf(d, AuthKeyUnavailable)
            self.assertEqual(str(failure.value), "out of memory")
        self.assertFalse(waiter.ready)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        waiter = LoginTokensWaiter()
        gone, staying = waiter.wait_for_tokens(), waiter.wait_for_tokens()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        waiter.provide(LoginTokens(b"k" * 16))     # an AlreadyCalledError here would escape
        self.successResultOf(staying)

    def test_a_waiter_may_wait_again_while_being_served(self) -> None:
        waiter = LoginTokensWaiter()
        again: list[Deferred[LoginTokens]] = []
        waiter.wait_for_tokens().addCallback(lambda _tokens: again.append(waiter.wait_for_tokens()))
        waiter.provide(LoginTokens(b"k" * 16))
        self.successResultOf(again[0])


def real_reactor() -> Any:
    from twisted.internet import reactor
    return reactor


def record_log_events(case: TestCase) -> list[LogEvent]:
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class AuthKeyDerivationTests(TestCase):
    """Real child processes through the real reactor; tiny argon2 parameters keep them quick."""

    def setUp(self) -> None:
        self.cache_dir = Path(tempfile.mkdtemp(prefix="devpitx-test-"))
        self.addCleanup(shutil.rmtree, self.cache_dir, ignore_errors=True)

    def start(self, params: Argon2Params) -> tuple[AuthKeyDerivation, LoginTokensWaiter]:
        waiter = LoginTokensWaiter()
        service = AuthKeyDerivation(real_reactor(), SECRET, params, self.cache_dir, waiter)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service, waiter

    async def test_key_is_derived_cached_and_provided(self) -> None:
        events = record_log_events(self)
        _service, waiter = self.start(TINY)
        self.assertFalse(waiter.ready)      # the child works while the reactor runs
        tokens = await waiter.wait_for_tokens()
        expected = derive_key(SECRET, TINY, KeyName.AUTH)
        token = LoginTokens(expected).issue("alice", [], True, T0)
        self.assertEqual(tokens.check(token, "alice", T0), TokenIdentity("alice", (), True))
        self.assertEqual(cached_key(SECRET, TINY, KeyName.AUTH, self.cache_dir), expected)
        self.assertIn("auth key ready", " ".join(e.get("log_format", "") for e in events))

    async def test_failure_is_logged_and_fails_the_waiters(self) -> None:
        events = record_log_events(self)
        _service, waiter = self.start(BAD)
        with self.assertRaises(AuthKeyUnavailable) as caught:
            await waiter.wait_for_tokens()
        self.assertIn("argon2", str(caught.exception))
        errors = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("cannot derive the auth key", errors[0]["log_format"])
        self.assertIn("argon2", errors[0]["error"])
        self.assertEqual(list(self.cache_dir.iterdir()), [])

    async def test_stopping_kills_the_child(self) -> None:
        pid_file = self.cache_dir / "child.pid"
        sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
        self.patch(authkey, "child_command", lambda _params, _name: [sys.executable, "-c", sleeper])
        service, waiter = self.start(TINY)
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            self.assertLess(time.monotonic(), deadline)
            await deferLater(real_reactor(), 0.02)
        pid = int(pid_file.read_text())
        stopped = service.stopService()
        assert stopped is not None
        await stopped
        while not process_is_gone(pid):     # killed, then reaped by the reactor
            self.assertLess(time.monotonic(), deadline)
            await deferLater(real_reactor(), 0.02)
        self.assertFalse(waiter.ready)


class DeriveKeyInChildTests(TestCase):
    async def test_same_key_as_in_process(self) -> None:
        for name in KeyName:
            key = await derive_key_in_child(real_reactor(), SECRET, TINY, name)
            self.assertEqual(key, derive_key(SECRET, TINY, name))

    async def test_secret_goes_on_stdin(self) -> None:
        # A child that answers with the key "derived" from what it read on stdin.
        echo = ("import json, sys; secret = sys.stdin.buffer.read(); "
                "print(json.dumps({'key': secret[:16].hex(), 'argv': sys.argv}))")
        self.patch(authkey, "child_command", lambda _params, _name: [sys.executable, "-c", echo])
        self.assertEqual(await derive_key_in_child(real_reactor(), SECRET, TINY, KeyName.AUTH), SECRET[:16])

    async def test_the_child_runs_at_the_lowest_priority(self) -> None:
        # A child that reports its own niceness as the "key".
        report = ("import json, os, sys; sys.stdin.buffer.read(); "
                  "print(json.dumps({'key': (b'%02d' % os.getpriority(os.PRIO_PROCESS, 0)).hex() * 8}))")
        self.patch(authkey, "child_command", lambda _params, _name: [sys.executable, "-c", report])
        key = await derive_key_in_child(real_reactor(), SECRET, TINY, KeyName.AUTH)
        self.assertEqual(key, b"19" * 8)

    async def test_child_error_is_a_secret_error(self) -> None:
        with self.assertRaises(SecretError) as caught:
            await derive_key_in_child(real_reactor(), SECRET, BAD, KeyName.AUTH)
        self.assertIn("argon2", str(caught.exception))

    async def test_killed_child_is_a_secret_error(self) -> None:
        suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        self.patch(authkey, "child_command", lambda _params, _name: [sys.executable, "-c", suicide])
        with self.assertRaises(SecretError) as caught:
            await derive_key_in_child(real_reactor(), SECRET, TINY, KeyName.AUTH)
        self.assertEqual(str(caught.exception), "key derivation was killed by signal 9")

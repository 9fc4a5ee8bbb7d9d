"""Tests for devpitx.auth.passwords: hash formats and the Passwords front end."""
from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any, Callable

import argon2
import pytest
from argon2.profiles import CHEAPEST
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from devpitx.auth.passwords import PasswordCheck, Passwords, hash_password, verify_password
from devpitx.auth.processpool import ProcessPoolRunner
from devpitx.runtime import run_inline

CHEAP = argon2.PasswordHasher.from_parameters(CHEAPEST)


def cheap_hash(password: str) -> str:
    return CHEAP.hash(password)


def cheap_hash_bytes(raw: bytes) -> str:
    return CHEAP.hash(raw)


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# --- pure functions ------------------------------------------------------------

def test_hash_password_reference_format_and_verifies() -> None:
    # The one test that pays for the reference parameters (100 MiB, ~0.3 s each way).
    stored = hash_password("s3cret")
    prefix, kind, version, params, salt, digest = stored.split("$")
    assert (prefix, kind, version, params) == ("", "argon2id", "v=19", "m=102400,t=2,p=8")
    assert len(unb64(salt)) == 16 and len(unb64(digest)) == 16
    assert "=" not in salt + digest
    assert verify_password(stored, "s3cret") == PasswordCheck(ok=True, needs_rehash=False)
    assert verify_password(stored, "s3cret ") == PasswordCheck(ok=False, needs_rehash=False)


def test_salts_differ() -> None:
    assert cheap_hash("pw") != cheap_hash("pw")


def test_other_parameters_verify_and_need_rehash() -> None:
    assert verify_password(cheap_hash("pw"), "pw") == PasswordCheck(ok=True, needs_rehash=True)


def test_argon2i_verifies() -> None:
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1,
                                   type=argon2.Type.I)
    stored = hasher.hash("pw")
    assert stored.startswith("$argon2i$")
    assert verify_password(stored, "pw") == PasswordCheck(ok=True, needs_rehash=True)
    assert not verify_password(stored, "wrong").ok


def test_wrong_password() -> None:
    assert verify_password(cheap_hash("pw"), "pW") == PasswordCheck(ok=False, needs_rehash=False)


def test_empty_password_is_a_password() -> None:
    stored = cheap_hash("")
    assert verify_password(stored, "").ok
    assert not verify_password(stored, " ").ok


def test_unicode_and_lone_surrogates() -> None:
    stored = CHEAP.hash("pässwörd".encode("utf-8"))
    assert verify_password(stored, "pässwörd").ok
    # A JSON body can carry a lone surrogate: it must neither crash nor match others.
    odd = "\ud800x"
    stored_odd = cheap_hash_bytes(odd.encode("utf-8", "surrogatepass"))
    assert verify_password(stored_odd, odd).ok
    assert not verify_password(stored_odd, "\ud801x").ok


@pytest.mark.parametrize("stored", [
    "",
    "garbage",
    "$argon2id$v=19$m=8,t=1,p=1$bad$bad",
    "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$",
    "$argon2x$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "$argon2id$v=19$m=é,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "a" * 64,                               # legacy-looking, but no salt given
])
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert verify_password(stored, "pw") == PasswordCheck(ok=False, needs_rehash=False)


def legacy(salt: str, password: str) -> str:
    return hashlib.sha256(salt.encode("ascii") + password.encode("utf-8")).hexdigest()


def test_legacy_sha256_verifies_and_needs_rehash() -> None:
    stored = legacy("c2FsdA==", "pässword")
    assert verify_password(stored, "pässword", legacy_salt="c2FsdA==") == \
        PasswordCheck(ok=True, needs_rehash=True)
    assert verify_password(stored.upper(), "pässword", legacy_salt="c2FsdA==").ok


@pytest.mark.parametrize(("stored", "password", "salt"), [
    (legacy("c2FsdA==", "pw"), "wrong", "c2FsdA=="),
    (legacy("c2FsdA==", "pw"), "pw", "other"),
    (legacy("c2FsdA==", "pw"), "pw", "sälz"),          # salt must be ASCII
    (legacy("c2FsdA==", "pw")[:-1], "pw", "c2FsdA=="),  # 63 hex digits
    (legacy("c2FsdA==", "pw")[:-1] + "g", "pw", "c2FsdA=="),
])
def test_legacy_mismatches(stored: str, password: str, salt: str) -> None:
    assert verify_password(stored, password, legacy_salt=salt) == \
        PasswordCheck(ok=False, needs_rehash=False)


def test_argon2_hash_with_leftover_salt_still_verifies() -> None:
    assert verify_password(cheap_hash("pw"), "pw", legacy_salt="c2FsdA==").ok


# --- Passwords -------------------------------------------------------------------

class CountingRunner:
    """run_inline that counts what it ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((fn, args))
        return run_inline(fn, *args, **kwargs)


class HeldRunner:
    """Returns Deferreds the test fires by hand: work that is 'still running'."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, fn, args))
        return d

    def finish(self, index: int = 0) -> None:
        d, fn, args = self.pending.pop(index)
        d.callback(fn(*args))


class PasswordsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = CountingRunner()
        self.passwords = Passwords(self.runner, clock=self.clock, remember_seconds=60.0,
                                   hasher=cheap_hash)
        self.stored = cheap_hash("pw")

    def verify(self, stored: str, password: str, legacy_salt: str | None = None,
               passwords: Passwords | None = None) -> Deferred[PasswordCheck]:
        return Deferred.fromCoroutine((passwords or self.passwords).verify(
            stored, password, legacy_salt))

    def test_hash_uses_injected_hasher_through_runner(self) -> None:
        stored = self.successResultOf(Deferred.fromCoroutine(self.passwords.hash("new")))
        self.assertTrue(stored.startswith("$argon2id$v=19$m=8,t=1,p=1$"))
        self.assertEqual(self.runner.calls, [(cheap_hash, ("new",))])
        self.assertTrue(verify_password(stored, "new").ok)

    def test_success_is_remembered(self) -> None:
        for _ in range(200):
            check = self.successResultOf(self.verify(self.stored, "pw"))
            self.assertEqual(check, PasswordCheck(ok=True, needs_rehash=True))
        self.assertEqual(len(self.runner.calls), 1)

    def test_memory_expires(self) -> None:
        self.successResultOf(self.verify(self.stored, "pw"))
        self.clock.advance(59.9)
        self.successResultOf(self.verify(self.stored, "pw"))
        self.assertEqual(len(self.runner.calls), 1)
        self.clock.advance(0.1)
        self.assertTrue(self.successResultOf(self.verify(self.stored, "pw")).ok)
        self.assertEqual(len(self.runner.calls), 2)

    def test_remembered_success_does_not_admit_another_password(self) -> None:
        self.successResultOf(self.verify(self.stored, "pw"))
        self.assertFalse(self.successResultOf(self.verify(self.stored, "PW")).ok)
        self.assertEqual(len(self.runner.calls), 2)

    def test_password_change_invalidates(self) -> None:
        self.successResultOf(self.verify(self.stored, "pw"))
        changed = cheap_hash("new")
        self.assertFalse(self.successResultOf(self.verify(changed, "pw")).ok)
        self.assertTrue(self.successResultOf(self.verify(changed, "new")).ok)
        self.assertEqual(len(self.runner.calls), 3)

    def test_legacy_salt_is_part_of_the_key(self) -> None:
        stored = legacy("c2FsdA==", "pw")
        self.assertTrue(self.successResultOf(self.verify(stored, "pw", "c2FsdA==")).ok)
        self.assertFalse(self.successResultOf(self.verify(stored, "pw", None)).ok)
        self.assertFalse(self.successResultOf(self.verify(stored, "pw", "c2FsdA=")).ok)
        self.assertEqual(len(self.runner.calls), 3)

    def test_failures_are_not_remembered(self) -> None:
        for _ in range(3):
            self.assertFalse(self.successResultOf(self.verify(self.stored, "wrong")).ok)
        self.assertEqual(len(self.runner.calls), 3)

    def test_memory_is_bounded_oldest_evicted(self) -> None:
        passwords = Passwords(self.runner, clock=self.clock, max_remembered=2)
        hashes = {pw: cheap_hash(pw) for pw in ("a", "b", "c")}
        for pw, stored in hashes.items():
            self.successResultOf(self.verify(stored, pw, passwords=passwords))
        self.assertEqual(len(self.runner.calls), 3)
        self.successResultOf(self.verify(hashes["c"], "c", passwords=passwords))
        self.successResultOf(self.verify(hashes["b"], "b", passwords=passwords))
        self.assertEqual(len(self.runner.calls), 3)
        self.successResultOf(self.verify(hashes["a"], "a", passwords=passwords))   # evicted
        self.assertEqual(len(self.runner.calls), 4)

    def test_remember_seconds_zero_disables_memory(self) -> None:
        passwords = Passwords(self.runner, clock=self.clock, remember_seconds=0)
        for _ in range(2):
            self.assertTrue(self.successResultOf(
                self.verify(self.stored, "pw", passwords=passwords)).ok)
        self.assertEqual(len(self.runner.calls), 2)

    def test_plaintext_is_not_kept(self) -> None:
        password = "very-distinctive-password-123"
        stored = cheap_hash(password)
        self.successResultOf(self.verify(stored, password))
        state = repr(vars(self.passwords))
        self.assertNotIn(password, state)
        self.assertNotIn(password.encode().hex(), state)


class PasswordsConcurrencyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = HeldRunner()
        self.clock = Clock()
        self.passwords = Passwords(self.runner, clock=self.clock, hasher=cheap_hash)
        self.stored = cheap_hash("pw")

    def verify(self, password: str) -> Deferred[PasswordCheck]:
        return Deferred.fromCoroutine(self.passwords.verify(self.stored, password))

    def test_concurrent_verifications_share_one_computation(self) -> None:
        first, second = self.verify("pw"), self.verify("pw")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.runner.pending), 1)
        self.runner.finish()
        self.assertTrue(self.successResultOf(first).ok)
        self.assertTrue(self.successResultOf(second).ok)
        self.assertTrue(self.successResultOf(self.verify("pw")).ok)   # remembered
        self.assertEqual(self.runner.pending, [])

    def test_shared_failure_reaches_every_waiter(self) -> None:
        first, second = self.verify("wrong"), self.verify("wrong")
        self.runner.finish()
        self.assertFalse(self.successResultOf(first).ok)
        self.assertFalse(self.successResultOf(second).ok)

    def test_different_passwords_do_not_share(self) -> None:
        good, bad = self.verify("pw"), self.verify("bad")
        self.assertEqual(len(self.runner.pending), 2)
        self.runner.finish(1)
        self.assertFalse(self.successResultOf(bad).ok)
        self.assertNoResult(good)
        self.runner.finish()
        self.assertTrue(self.successResultOf(good).ok)

    def test_cancelling_one_waiter_leaves_the_other(self) -> None:
        first, second = self.verify("pw"), self.verify("pw")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.runner.finish()
        self.assertTrue(self.successResultOf(second).ok)

    def test_result_remembered_even_if_every_waiter_left(self) -> None:
        only = self.verify("pw")
        only.cancel()
        self.failureResultOf(only, CancelledError)
        self.runner.finish()
        self.assertTrue(self.successResultOf(self.verify("pw")).ok)
        self.assertEqual(self.runner.pending, [])

    def test_runner_error_reaches_waiters_and_is_not_remembered(self) -> None:
        first, second = self.verify("pw"), self.verify("pw")
        d, _fn, _args = self.runner.pending.pop()
        d.errback(RuntimeError("worker died"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
        third = self.verify("pw")
        self.assertEqual(len(self.runner.pending), 1)
        self.runner.finish()
        self.assertTrue(self.successResultOf(third).ok)

    def test_runner_raising_synchronously(self) -> None:
        def broken(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
            raise RuntimeError("no pool")
        passwords = Passwords(broken, clock=self.clock)
        d = Deferred.fromCoroutine(passwords.verify(self.stored, "pw"))
        self.failureResultOf(d, RuntimeError)
        d = Deferred.fromCoroutine(passwords.verify(self.stored, "pw"))
        self.failureResultOf(d, RuntimeError)     # nothing stranded in flight


# --- ProcessPoolRunner, on a real reactor -------------------------------------------

def real_reactor() -> Any:
    from twisted.internet import reactor
    return reactor


class ProcessPoolRunnerTests(TestCase):
    """Real worker processes; the cheapest Argon2 parameters keep them quick."""

    def setUp(self) -> None:
        self.runner = ProcessPoolRunner(real_reactor(), max_workers=1)
        self.addCleanup(self.runner.shutdown)

    async def test_verify_password_in_a_worker_process(self) -> None:
        stored = cheap_hash("pw")
        self.assertEqual(await self.runner(verify_password, stored, "pw"),
                         PasswordCheck(ok=True, needs_rehash=True))
        self.assertFalse((await self.runner(verify_password, stored, "nope")).ok)
        self.assertNotEqual(await self.runner(os.getpid), os.getpid())

    async def test_passwords_over_the_pool(self) -> None:
        passwords = Passwords(self.runner, clock=real_reactor())
        stored = await passwords.hash("pw")     # reference parameters, in the worker
        self.assertTrue(stored.startswith("$argon2id$v=19$m=102400,t=2,p=8$"))
        self.assertEqual(await passwords.verify(stored, "pw"),
                         PasswordCheck(ok=True, needs_rehash=False))

    async def test_exception_in_worker_reaches_caller(self) -> None:
        with self.assertRaises(ValueError):
            await self.runner(int, "not a number")
        self.assertEqual(await self.runner(int, "42"), 42)     # the pool survives

    async def test_cancel_queued_call(self) -> None:
        busy = self.runner(time.sleep, 0.5)
        queued = self.runner(os.getpid)
        queued.cancel()
        with self.assertRaises(CancelledError):
            await queued
        await busy
        self.assertTrue(busy.called)

    def test_shutdown_without_use_and_twice(self) -> None:
        runner = ProcessPoolRunner(real_reactor())
        runner.shutdown()
        runner.shutdown()

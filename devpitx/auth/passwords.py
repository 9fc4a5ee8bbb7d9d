"""Password hashes (auth.md §2): Argon2id, legacy salted SHA-256, and a short memory.

``hash_password`` and ``verify_password`` are pure, synchronous, module-level
functions so that a ``ProcessPoolRunner`` can run them in a worker process:
one verification with the reference parameters allocates 100 MiB.

``Passwords`` is what the server calls. It remembers successful verifications
for a short while because twine sends the password with every one of the
(possibly hundreds of) uploads of a release, and each would otherwise cost a
full Argon2 run.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from devpitx.runtime import RunBlocking

# The reference's parameters (argon2-cffi's defaults before 21.2): 100 MiB, t=2, p=8.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=102400, parallelism=8,
                                hash_len=16, salt_len=16, type=argon2.Type.ID)

_LEGACY_HASH = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class PasswordCheck:
    ok: bool
    needs_rehash: bool      # verified, but the stored hash should be replaced (§2.1, §2.2)


_REJECTED = PasswordCheck(ok=False, needs_rehash=False)


def _password_bytes(password: str) -> bytes:
    # "surrogatepass": a JSON body may carry lone surrogates; they must hash
    # and verify consistently instead of crashing the request.
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str) -> str:
    """A new Argon2id PHC string for ``password`` with the reference parameters."""
    return _HASHER.hash(_password_bytes(password))


def verify_password(stored_hash: str, password: str,
                    legacy_salt: str | None = None) -> PasswordCheck:
    """Whether ``password`` matches ``stored_hash``. Never raises.

    Any valid Argon2 PHC string verifies; a 64-hex-digit hash with a
    ``legacy_salt`` is checked as ``sha256(salt + password)`` (§2.2).
    """
    if legacy_salt is not None and _LEGACY_HASH.fullmatch(stored_hash):
        return _verify_legacy(stored_hash, password, legacy_salt)
    try:
        _HASHER.verify(stored_hash, _password_bytes(password))
    except (VerificationError, InvalidHashError, ValueError):
        # ValueError covers non-ASCII hash strings (UnicodeEncodeError).
        return _REJECTED
    try:
        needs_rehash = _HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        needs_rehash = True     # it verified, but we cannot read its parameters
    return PasswordCheck(ok=True, needs_rehash=needs_rehash)


def _verify_legacy(stored_hash: str, password: str, legacy_salt: str) -> PasswordCheck:
    try:
        salt = legacy_salt.encode("ascii")
    except UnicodeEncodeError:
        return _REJECTED
    computed = hashlib.sha256(salt + _password_bytes(password)).hexdigest()
    if hmac.compare_digest(computed, stored_hash.lower()):
        return PasswordCheck(ok=True, needs_rehash=True)
    return _REJECTED


class Passwords:
    """Hashing and verification off the reactor thread, with a short memory of successes.

    The memory is keyed by an HMAC (random key per process) over the stored
    hash, the legacy salt and the password: the plaintext is never kept, and a
    changed password hash simply never matches an old entry. Only successful
    verifications are remembered; concurrent verifications of the same triple
    share one computation.
    """

    def __init__(self, run_blocking: RunBlocking, *, clock: IReactorTime,
                 remember_seconds: float = 60.0,
                 hasher: Callable[[str], str] = hash_password,
                 max_remembered: int = 1024) -> None:
        self._run = run_blocking
        self._clock = clock
        self._remember_seconds = remember_seconds
        self._hasher = hasher
        self._max_remembered = max_remembered
        self._key = os.urandom(32)
        self._remembered: OrderedDict[bytes, tuple[float, PasswordCheck]] = OrderedDict()
        self._in_flight: dict[bytes, list[Deferred[PasswordCheck]]] = {}

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher, password)

    async def verify(self, stored_hash: str, password: str,
                     legacy_salt: str | None = None) -> PasswordCheck:
        key = self._memory_key(stored_hash, password, legacy_salt)
        remembered = self._remembered.get(key)
        if remembered is not None:
            expires_at, check = remembered
            if self._clock.seconds() < expires_at:
                return check
            del self._remembered[key]

        def forget(waiter: Deferred[PasswordCheck]) -> None:
            # A cancelled request stops waiting; the computation goes on for the others.
            waiting = self._in_flight.get(key)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)

        waiter: Deferred[PasswordCheck] = Deferred(forget)
        waiting = self._in_flight.get(key)
        if waiting is not None:
            waiting.append(waiter)
        else:
            # Register before starting: an inline runner settles synchronously.
            self._in_flight[key] = [waiter]
            try:
                computation = self._run(verify_password, stored_hash, password, legacy_salt)
            except Exception:
                self._settle(Failure(), key)    # a broken runner must not strand the waiter
            else:
                computation.addBoth(self._settle, key)
        return await waiter

    def _settle(self, result: PasswordCheck | Failure, key: bytes) -> None:
        # Returns None: a failure is handed to every waiter (if all of them
        # were cancelled, nobody is left to care about it).
        waiting = self._in_flight.pop(key, [])
        if isinstance(result, PasswordCheck) and result.ok:
            self._remember(key, result)
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _remember(self, key: bytes, check: PasswordCheck) -> None:
        if self._remember_seconds <= 0 or self._max_remembered <= 0:
            return
        self._remembered.pop(key, None)
        self._remembered[key] = (self._clock.seconds() + self._remember_seconds, check)
        while len(self._remembered) > self._max_remembered:
            self._remembered.popitem(last=False)    # evict the oldest

    def _memory_key(self, stored_hash: str, password: str, legacy_salt: str | None) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        # Length-prefixed fields, and None distinct from "": no two triples collide.
        for field in (stored_hash, legacy_salt, password):
            if field is None:
                mac.update(b"\x00")
                continue
            data = _password_bytes(field)
            mac.update(b"\x01" + len(data).to_bytes(8, "big") + data)
        return mac.digest()

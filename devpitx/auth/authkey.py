"""The auth key of a running server (auth.md §3): derived after start-up, awaited by login tokens.

A server must not wait seconds for the auth key before it serves: only the
requests that sign or check a login token need it. When the key is not
cached, ``AuthKeyDerivation`` runs the derivation child of
``devpitx.auth.secret`` with ``spawnProcess`` once the server has started,
and hands the result to a ``LoginTokensWaiter``, where those requests wait.

No thread is held while the child works: its output arrives on the reactor
like any other connection's. The secret goes to the child on stdin.
"""
from __future__ import annotations

import os

import time
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpitx.auth.secret import (
    Argon2Params,
    KeyName,
    SecretError,
    child_command,
    child_environment,
    read_child_output,
    remember_key,
)
from devpitx.auth.tokens import LoginTokens


class AuthKeyUnavailable(Exception):
    """The auth key could not be derived: no login token can be issued or checked."""


class LoginTokensWaiter:
    """Login tokens once the auth key is known; until then, Deferreds that fire with them.

    ``LoginTokensWaiter(LoginTokens(key))`` is ready from the start (cached
    key, tests); ``LoginTokensWaiter()`` waits for ``provide`` or ``fail``.
    """

    def __init__(self, tokens: LoginTokens | None = None) -> None:
        self._tokens = tokens
        self._failure: str | None = None
        self._waiting: dict[Deferred[LoginTokens], None] = {}     # insertion order: first come, first served

    @property
    def ready(self) -> bool:
        return self._tokens is not None

    def wait_for_tokens(self) -> Deferred[LoginTokens]:
        """Fires with the login tokens; fails with ``AuthKeyUnavailable`` if the key cannot be had."""
        if self._tokens is not None:
            return succeed(self._tokens)
        if self._failure is not None:
            return fail(AuthKeyUnavailable(self._failure))
        # A request whose client went away is cancelled: forget it.
        d: Deferred[LoginTokens] = Deferred(lambda d: self._waiting.pop(d, None))
        self._waiting[d] = None
        return d

    def provide(self, tokens: LoginTokens) -> None:
        self._tokens = tokens
        waiting, self._waiting = self._waiting, {}
        for d in waiting:
            d.callback(tokens)

    def fail(self, reason: str) -> None:
        self._failure = reason
        waiting, self._waiting = self._waiting, {}
        for d in waiting:
            d.errback(AuthKeyUnavailable(reason))


class AuthKeyDerivation(Service):
    """Derives the auth key in a child process after start-up, caches it, provides the login tokens.

    Add it to the application after the web services: ``startService`` then
    runs once they listen. Stopping kills a child that is still working.
    """

    log = Logger()

    def __init__(self, reactor: IReactorProcess, secret: bytes, params: Argon2Params, cache_dir: Path,
                 waiter: LoginTokensWaiter) -> None:
        self._reactor = reactor
        self._secret = secret
        self._params = params
        self._cache_dir = cache_dir
        self._waiter = waiter
        self._child: Deferred[bytes] | None = None
        self._deriving: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._deriving = Deferred.fromCoroutine(self._derive())

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._child is not None:
            self._child.cancel()        # kills the child; _derive returns quietly
        return self._deriving

    async def _derive(self) -> None:
        self.log.info("deriving the auth key in the background (argon2, {memory_cost} KiB); "
                      "login tokens wait for it", memory_cost=self._params.memory_cost)
        started = time.monotonic()
        try:
            self._child = derive_key_in_child(self._reactor, self._secret, self._params, KeyName.AUTH)
            key = await self._child
        except CancelledError:
            return      # stopping
        except SecretError as exc:
            self.log.error("cannot derive the auth key: {error}; login tokens are unavailable "
                           "until the server is restarted", error=str(exc))
            self._waiter.fail(str(exc))
            return
        except Exception:
            self.log.failure("cannot derive the auth key; login tokens are unavailable "
                             "until the server is restarted")
            self._waiter.fail("unexpected error, see the server log")
            return
        finally:
            self._child = None
        remember_key(self._secret, self._params, KeyName.AUTH, self._cache_dir, key)
        self._secret = b""
        self.log.info("auth key ready after {seconds:.1f} s", seconds=time.monotonic() - started)
        self._waiter.provide(LoginTokens(key))


def derive_key_in_child(reactor: IReactorProcess, secret: bytes, params: Argon2Params,
                        name: KeyName) -> Deferred[bytes]:
    """The key ``name``, derived by the child process of ``devpitx.auth.secret``.

    Fails with ``SecretError`` as ``derive_key_cached`` would; cancelling kills the child.
    """
    child = _KeyChild(secret)
    command = child_command(params, name)
    process = reactor.spawnProcess(child, command[0], command, env=child_environment())
    try:
        # Lowest priority: argon2 takes every core, and the server's own work (a replica's
        # catch-up, requests) must not wait behind a key only login tokens need.
        os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    except (OSError, AttributeError, TypeError):
        pass    # no such call here, or the child is already gone: it only runs slower for others
    return child.result


class _KeyChild(ProcessProtocol):
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self.result: Deferred[bytes] = Deferred(self._kill)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._secret)
        self.transport.closeStdin()
        self._secret = b""

    def outReceived(self, data: bytes) -> None:
        self._stdout.append(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.result.called:      # cancelled: nobody wants the key any more
            return
        exit_status = 0     # ProcessDone
        if isinstance(reason.value, ProcessTerminated):
            ended: Any = reason.value
            if ended.exitCode is not None:
                exit_status = ended.exitCode
            else:
                exit_status = -ended.signal if ended.signal else 1
        try:
            key = read_child_output(exit_status, b"".join(self._stdout), b"".join(self._stderr))
        except SecretError:
            self.result.errback()
            return
        self.result.callback(key)

    def _kill(self, _result: Deferred[bytes]) -> None:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess("KILL")

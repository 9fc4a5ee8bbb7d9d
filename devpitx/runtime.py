"""How blocking work leaves the reactor thread.

Handlers never call blocking functions directly: they receive a ``RunBlocking``
(a thread pool in production, ``run_inline`` in tests) and await its Deferred.
"""
from __future__ import annotations

from typing import Callable, ParamSpec, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
R = TypeVar("R")


class RunBlocking(Protocol):
    def __call__(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[R]: ...


def run_inline(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
    """Same contract as a pool runner, but runs on the calling thread (tests)."""
    return maybeDeferred(fn, *args, **kwargs)


class ThreadPoolService(Service):
    """Starts and stops a ThreadPool with the application."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()

    def runner(self, reactor: IReactorFromThreads) -> RunBlocking:
        pool = self.pool

        def run(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
            return deferToThreadPool(reactor, pool, fn, *args, **kwargs)

        return run

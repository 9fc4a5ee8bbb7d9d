"""How blocking work leaves the reactor thread.

Handlers never call blocking functions directly: they receive a ``RunBlocking``
(a thread pool in production, ``run_inline`` in tests) and await its Deferred.
"""
from __future__ import annotations

import ctypes
import gc
from typing import Callable, ParamSpec, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
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


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None     # not glibc
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc ``malloc_trim``).

    After a burst of short-lived allocations in several threads (a replica's
    catch-up, a replay) the freed memory stays in the allocator's arenas and
    counts in the RSS until it happens to be reused; trimming returns it.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class HeapFreezer(Service):
    """Keeps long-lived state out of the garbage collector's full collections.

    A full collection scans every tracked object; with tens of thousands of
    projects in memory that is a pause of 100 ms or more, which shows up as
    request latency. State loaded or committed since the last look is moved to
    the permanent generation (``gc.freeze``) after a young-generation
    collection, so only short-lived objects are ever scanned. Runs every
    ``interval_seconds`` and only when ``changed()`` says there is new state.
    """

    def __init__(self, clock: IReactorTime, changed: Callable[[], bool], interval_seconds: float = 30.0) -> None:
        self._clock = clock
        self._changed = changed
        self._interval = interval_seconds
        self._loop: LoopingCall | None = None

    def freeze_now(self) -> None:
        gc.collect(1)
        gc.freeze()

    def _tick(self) -> None:
        if self._changed():
            self.freeze_now()

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

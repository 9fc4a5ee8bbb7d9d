"""A ``RunBlocking`` that runs functions in worker processes.

Argon2 with the reference parameters allocates 100 MiB per password
verification (and the secret derivation 512 MiB). In a thread, that memory
would count against the server's own peak RSS; in a worker process it never
touches the server. Functions and arguments must be picklable: module-level
functions such as ``devpitx.auth.passwords.verify_password``.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

P = ParamSpec("P")
R = TypeVar("R")


class ProcessPoolRunner:
    """Runs ``fn(*args, **kwargs)`` in a lazily started pool of "spawn" processes.

    "spawn" rather than "fork": a forked child would share the server's
    memory pages and file descriptors (listening sockets, the journal), and
    forking a process that runs threads is unsafe.
    """

    def __init__(self, reactor: IReactorFromThreads, max_workers: int = 1) -> None:
        self._reactor = reactor
        self._max_workers = max_workers
        self._executor: ProcessPoolExecutor | None = None

    def __call__(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        executor = self._pool()
        try:
            future = executor.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            # A worker died earlier (e.g. killed by the OOM killer): start afresh once.
            self._discard_pool(executor)
            executor = self._pool()
            future = executor.submit(fn, *args, **kwargs)

        def cancel(_d: Deferred[R]) -> None:
            future.cancel()     # only stops it if it is still queued; a running call finishes

        d: Deferred[R] = Deferred(cancel)
        # The done-callback runs on the executor's management thread (or right
        # here when the future is already done): hop to the reactor thread.
        future.add_done_callback(
            lambda f: self._reactor.callFromThread(self._deliver, f, d, executor))
        return d

    def shutdown(self) -> None:
        """Stop the workers, dropping queued calls; waits for a running call to end."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self._max_workers,
                mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def _discard_pool(self, broken: ProcessPoolExecutor) -> None:
        # Only if it is still the current pool: another call may have replaced it.
        if self._executor is broken:
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, future: Future[R], d: Deferred[R], executor: ProcessPoolExecutor) -> None:
        if d.called:            # cancelled by the caller; the result is not wanted
            return
        if future.cancelled():  # dropped from the queue by shutdown()
            d.cancel()
            return
        error = future.exception()
        if error is None:
            d.callback(future.result())
            return
        if isinstance(error, BrokenProcessPool):
            self._discard_pool(executor)
        d.errback(error)

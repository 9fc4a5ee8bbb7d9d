"""One in-flight fetch per key, shared by every request that waits for it ("single flight").

A mirror must not send twenty identical requests upstream because twenty
clients asked for the same page or file at once. :class:`SingleFlight` starts
the work for a key once and hands each waiter its *own* Deferred:

* a waiter that gives up (its timeout passed, or its client disconnected and
  Klein cancelled the handler) only drops its own Deferred; the shared work
  goes on, and its result is still stored when it arrives ("finishing in the
  background");
* the shared work is never cancelled by waiters; it bounds itself (the
  upstream client has its own, longer, timeout);
* once the work is done the key is free again, so the next request starts a
  new fetch (callers decide with their own freshness rules whether one is
  needed at all).

The work must not raise: it reports failures in its result. Should a bug
make it raise anyway, every waiter gets that failure and it is logged once.
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

log = Logger()


class Flight(Generic[R]):
    """The shared work for one key, and the Deferreds of those waiting for it."""

    def __init__(self, clock: IReactorTime, started_at: float) -> None:
        self._clock = clock
        self.started_at = started_at
        self._waiters: set[Deferred[R]] = set()
        self.result: R | Failure | None = None
        self.done = False

    def wait(self, timeout: float | None = None) -> Deferred[R]:
        """A Deferred for the result; on ``timeout`` it fails with ``defer.TimeoutError``.

        Cancelling it (or its timeout) affects no other waiter and not the work.
        """
        if self.done:
            d: Deferred[R] = Deferred()
            if isinstance(self.result, Failure):
                d.errback(self.result)
            else:
                d.callback(self.result)  # type: ignore[arg-type]
            return d
        d = Deferred(lambda cancelled: self._waiters.discard(cancelled))
        self._waiters.add(d)
        if timeout is not None:
            d.addTimeout(max(0.0, timeout), self._clock)
        return d

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _finish(self, result: R | Failure) -> None:
        self.done = True
        self.result = result
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class SingleFlight(Generic[K, R]):
    """Keyed shared work: :meth:`join` starts it for a key unless it is already running."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._flights: dict[K, Flight[R]] = {}

    def running(self, key: K) -> Flight[R] | None:
        return self._flights.get(key)

    def join(self, key: K, work: Callable[[], Coroutine[Any, Any, R]]) -> Flight[R]:
        """The flight for ``key``; ``work()`` is called only if none is running."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        flight = Flight(self._clock, self._clock.seconds())
        self._flights[key] = flight

        def finished(result: R | Failure) -> None:
            # Free the key first: a waiter's callback may want to start the next flight.
            if self._flights.get(key) is flight:
                del self._flights[key]
            if isinstance(result, Failure):
                log.failure("shared fetch {key!r} failed", result, key=key)
            flight._finish(result)

        # fromCoroutine may run the work to completion right here (nothing to wait for):
        # the flight is registered before, and `finished` handles both orders.
        Deferred.fromCoroutine(work()).addBoth(finished)
        return flight

    def __len__(self) -> int:
        return len(self._flights)

"""SerialWaiter: Deferreds that fire once a given serial is committed (long polls, replicas)."""
from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class SerialWaiter:
    def __init__(self, clock: IReactorTime, current: int) -> None:
        self._clock = clock
        self._current = current
        self._waiting: dict[Deferred[int | None], int] = {}

    @property
    def current(self) -> int:
        return self._current

    def wait_for_serial(self, serial: int, timeout: float) -> Deferred[int | None]:
        """Fire with the current serial once it is >= ``serial``, or None after ``timeout``."""
        if serial <= self._current:
            return succeed(self._current)
        d: Deferred[int | None] = Deferred(self._forget)
        self._waiting[d] = serial
        d.addTimeout(timeout, self._clock, onTimeoutCancel=lambda _result, _t: None)
        return d

    def _forget(self, d: Deferred[int | None]) -> None:
        # Canceller: a cancelled (or timed-out) wait must not be kept alive or fired later.
        self._waiting.pop(d, None)

    def committed(self, serial: int) -> None:
        self._current = serial
        ready = [d for d, wanted in self._waiting.items() if wanted <= serial]
        for d in ready:
            del self._waiting[d]
            d.callback(serial)

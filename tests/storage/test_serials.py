"""SerialWaiter: long polls wait for a serial, give up after a timeout, and are forgotten when cancelled."""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from devpitx.storage.serials import SerialWaiter
from devpitx.storage.store import Store


class SerialWaiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.waiter = SerialWaiter(self.clock, 4)

    def test_a_reached_serial_fires_at_once(self) -> None:
        self.assertEqual(self.successResultOf(self.waiter.wait_for_serial(4, 30)), 4)
        self.assertEqual(self.successResultOf(self.waiter.wait_for_serial(0, 30)), 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fires_with_the_committed_serial(self) -> None:
        d = self.waiter.wait_for_serial(5, 30)
        self.assertNoResult(d)
        self.waiter.committed(5)
        self.assertEqual(self.successResultOf(d), 5)
        self.assertEqual(self.waiter.current, 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timeout is cancelled

    def test_waits_until_the_wanted_serial(self) -> None:
        d6 = self.waiter.wait_for_serial(6, 30)
        d7 = self.waiter.wait_for_serial(7, 30)
        self.waiter.committed(5)
        self.assertNoResult(d6)
        self.waiter.committed(6)
        self.assertEqual(self.successResultOf(d6), 6)
        self.assertNoResult(d7)
        self.waiter.committed(9)  # a jump (e.g. a replica catching up) satisfies everything below
        self.assertEqual(self.successResultOf(d7), 9)

    def test_times_out_with_none(self) -> None:
        d = self.waiter.wait_for_serial(5, 30)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.waiter.committed(5)  # a later commit does not touch the finished wait
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_waits_are_forgotten(self) -> None:
        d = self.waiter.wait_for_serial(5, 30)
        kept = self.waiter.wait_for_serial(5, 30)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only the kept wait's timeout
        ref = weakref.ref(d)
        del d
        gc.collect()
        self.assertIsNone(ref())  # the waiter holds no reference to it
        self.waiter.committed(5)
        self.assertEqual(self.successResultOf(kept), 5)

    def test_timed_out_waits_are_forgotten(self) -> None:
        d = self.waiter.wait_for_serial(5, 1)
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(d))
        ref: weakref.ref[Deferred[int | None]] = weakref.ref(d)
        del d
        gc.collect()
        self.assertIsNone(ref())


class StoreWaiterTests(SynchronousTestCase):
    def test_store_commit_fires_waiters(self) -> None:
        clock = Clock()
        store = Store.open(Path(self.mktemp()), clock)
        self.addCleanup(store.close)
        self.assertEqual(store.waiter.current, -1)
        d = store.waiter.wait_for_serial(0, 10)
        # A woken long poll must see the committed state.
        seen: list[tuple[int | None, int, object]] = []

        def woken(serial: int | None) -> int | None:
            seen.append((serial, store.serial, store.get("user/a")))
            return serial

        d.addCallback(woken)
        self.assertNoResult(d)
        with store.write() as tx:
            tx.set("user/a", {"x": 1})
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(seen, [(0, 0, {"x": 1})])
        unchanged = store.waiter.wait_for_serial(1, 10)
        with store.write() as tx:
            tx.set("user/a", {"x": 1})  # no change: no serial, nobody wakes
        self.assertNoResult(unchanged)
        clock.advance(10)
        self.assertIsNone(self.successResultOf(unchanged))

    def test_reopened_store_waiter_starts_at_the_stored_serial(self) -> None:
        path = Path(self.mktemp())
        store = Store.open(path, Clock())
        for n in range(3):
            with store.write() as tx:
                tx.set(f"user/u{n}", {})
        store.close()
        store = Store.open(path, Clock())
        self.addCleanup(store.close)
        self.assertEqual(store.waiter.current, 2)
        self.assertEqual(self.successResultOf(store.waiter.wait_for_serial(2, 1)), 2)

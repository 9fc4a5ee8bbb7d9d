"""SingleFlight: one shared piece of work per key, independent waiters."""
from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from devpitx.mirror.fetches import SingleFlight


class SingleFlightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.flights: SingleFlight[str, str] = SingleFlight(self.clock)
        self.started = 0
        self.gate: Deferred[str] = Deferred()

    async def work(self) -> str:
        self.started += 1
        return await self.gate

    def test_work_runs_once_for_all_waiters(self) -> None:
        waiters = [self.flights.join("k", self.work).wait() for _ in range(5)]
        self.assertEqual(self.started, 1)
        for d in waiters:
            self.assertNoResult(d)
        self.gate.callback("done")
        self.assertEqual([self.successResultOf(d) for d in waiters], ["done"] * 5)
        self.assertEqual(len(self.flights), 0)

    def test_other_keys_have_their_own_work(self) -> None:
        self.flights.join("a", self.work)
        self.flights.join("b", self.work)
        self.assertEqual(self.started, 2)

    def test_cancelled_waiter_leaves_work_and_others_alone(self) -> None:
        flight = self.flights.join("k", self.work)
        leaving, staying = flight.wait(), flight.wait()
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertEqual(flight.waiting, 1)
        self.gate.callback("done")
        self.assertEqual(self.successResultOf(staying), "done")

    def test_waiter_times_out_while_work_goes_on(self) -> None:
        flight = self.flights.join("k", self.work)
        impatient = flight.wait(timeout=5)
        patient = flight.wait()
        self.clock.advance(5)
        self.failureResultOf(impatient, TimeoutError)
        self.assertIs(self.flights.running("k"), flight)
        self.gate.callback("late")
        self.assertEqual(self.successResultOf(patient), "late")

    def test_key_is_free_after_the_work(self) -> None:
        self.flights.join("k", self.work)
        self.gate.callback("first")
        self.gate = Deferred()
        second = self.flights.join("k", self.work).wait()
        self.assertEqual(self.started, 2)
        self.gate.callback("second")
        self.assertEqual(self.successResultOf(second), "second")

    def test_wait_after_completion_gets_the_result(self) -> None:
        flight = self.flights.join("k", self.work)
        self.gate.callback("done")
        self.assertEqual(self.successResultOf(flight.wait()), "done")

    def test_a_failing_work_reaches_every_waiter_and_is_logged(self) -> None:
        async def broken() -> str:
            raise ValueError("bug")
        flight = self.flights.join("k", broken)
        self.failureResultOf(flight.wait(), ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

"""The primary's ``polling_replicas`` bookkeeping (replication.md §7.1)."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from devpitx.replica.polling import PollingReplicas

UUID_A = "a" * 32
UUID_B = "b" * 32


class PollingReplicasTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.polling = PollingReplicas(self.clock)

    def start(self, replica_uuid: str = UUID_A, serial: int = 5, streaming: bool = True,
              outside_url: str | None = None) -> None:
        self.polling.request_started(replica_uuid, remote_ip="192.0.2.1", requested_serial=serial,
                                     is_streaming=streaming, outside_url=outside_url)

    def test_empty(self) -> None:
        self.assertEqual(self.polling.as_status(), {})

    def test_request_lifecycle(self) -> None:
        self.start(outside_url="https://replica.test")
        self.assertEqual(self.polling.as_status(), {UUID_A: {
            "remote-ip": "192.0.2.1", "serial": 4, "in-request": True, "is-streaming": True,
            "last-request": 1000.0, "outside-url": "https://replica.test"}})
        self.clock.advance(2.5)
        self.polling.streamed(UUID_A, 5)
        self.polling.streamed(UUID_A, 6)
        self.polling.request_ended(UUID_A)
        status = self.polling.as_status()[UUID_A]
        self.assertEqual((status["serial"], status["in-request"], status["last-request"]), (6, False, 1002.5))

    def test_next_request_replaces_what_is_shown(self) -> None:
        self.start(serial=5)
        self.polling.request_ended(UUID_A)
        self.clock.advance(1)
        self.start(serial=9, streaming=False)
        status = self.polling.as_status()[UUID_A]
        self.assertEqual((status["serial"], status["is-streaming"], status["in-request"], status["last-request"]),
                         (8, False, True, 1001.0))

    def test_overlapping_requests_of_one_replica(self) -> None:
        self.start(serial=5)
        self.start(serial=5)        # a retry while the first long poll is still open
        self.polling.request_ended(UUID_A)
        self.assertTrue(self.polling.as_status()[UUID_A]["in-request"])
        self.polling.request_ended(UUID_A)
        self.assertFalse(self.polling.as_status()[UUID_A]["in-request"])
        self.polling.request_ended(UUID_A)      # more ends than starts never goes negative
        self.start()
        self.assertTrue(self.polling.as_status()[UUID_A]["in-request"])

    def test_replicas_are_kept_apart(self) -> None:
        self.start(UUID_A, serial=3)
        self.start(UUID_B, serial=7)
        self.polling.request_ended(UUID_B)
        status = self.polling.as_status()
        self.assertEqual(sorted(status), [UUID_A, UUID_B])
        self.assertEqual((status[UUID_A]["serial"], status[UUID_A]["in-request"]), (2, True))
        self.assertEqual((status[UUID_B]["serial"], status[UUID_B]["in-request"]), (6, False))

    def test_unknown_replica_and_stale_stream_progress_are_ignored(self) -> None:
        self.polling.request_ended(UUID_A)
        self.polling.streamed(UUID_A, 3)
        self.assertEqual(self.polling.as_status(), {})
        self.start(serial=10)
        self.polling.streamed(UUID_A, 2)
        self.assertEqual(self.polling.as_status()[UUID_A]["serial"], 9)

    def test_status_is_a_copy(self) -> None:
        self.start()
        self.polling.as_status()[UUID_A]["serial"] = 100
        self.assertEqual(self.polling.as_status()[UUID_A]["serial"], 4)

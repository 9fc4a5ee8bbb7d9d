"""The replica's metadata loop against a primary speaking the wire format (replication.md §5.1).

StubTreq carries the requests to :class:`FakePrimary`, whose entries are real
journal entries of the primary's store; one Clock drives the long poll, the
retry delays and the replica's reactor turns.
"""
from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from devpitx.auth.tokens import ReplicaTokens
from devpitx.replica.primary_client import STREAM_ACCEPT
from devpitx.replica.puller import (
    EXIT_OTHER_PRIMARY,
    GROUP_LINES,
    HIGH_WATER_LINES,
    LOW_WATER_LINES,
    RETRY_SECONDS,
    UUID_RETRY_SECONDS,
    ChangeLines,
    ChangelogError,
    parse_entry,
)
from devpitx.replica.service import ReplicaService, ReplicaSettings
from devpitx.runtime import run_inline
from devpitx.storage import nodeinfo
from devpitx.storage.journal import Entry
from devpitx.storage.keys import user_key
from tests.helpers.testserver import TEST_REPLICA_KEY, make_test_server
from tests.replica.fake_primary import (
    PRIMARY_URL,
    PRIMARY_UUID,
    REPLICA_KEY,
    REPLICA_UUID,
    ReplicaCase,
    create_index,
    release_file,
)
from tests.web.fixtures_records import use_clock_cooperator

OTHER_UUID = "feed" * 8


class CatchUpTests(ReplicaCase):
    def test_catch_up_from_serial_zero_copies_the_journal(self) -> None:
        self.commit_users(250)
        self.start()
        self.pump_until(self.caught_up)
        for serial in range(self.primary_store.serial + 1):
            self.assertEqual(self.store.journal.read_bytes(serial), self.primary_store.journal.read_bytes(serial))
        self.assertEqual(dict(self.store.state.items()), dict(self.primary_store.state.items()))
        first, second = self.primary.changelog_requests()[:2]
        self.assertEqual((first.path, first.query), ("/+changelog/0-", "initial_fetch"))
        self.assertEqual((second.path, second.query), ("/+changelog/250-", ""))
        self.assertEqual(nodeinfo.load(self.replica_dir).primary_uuid, PRIMARY_UUID)
        self.assertEqual(self.fatal, [])

    def test_entries_are_applied_while_the_stream_is_still_open(self) -> None:
        self.commit_users(10)
        self.primary.stream_hold_after = 4
        self.start()
        self.pump()
        self.assertEqual(len(self.primary.held_streams), 1)
        self.assertEqual(self.store.serial, 3)
        self.primary.release_streams()
        self.pump_until(self.caught_up)

    def test_a_cut_stream_keeps_what_arrived_and_resumes_after_five_seconds(self) -> None:
        self.commit_users(10)
        self.primary.stream_cut_after = 6
        self.start()
        self.pump()
        self.assertEqual(self.store.serial, 5)          # the half line is not applied
        self.primary.stream_cut_after = None
        requests = len(self.primary.changelog_requests())
        self.clock.advance(RETRY_SECONDS - 0.5)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests)
        self.clock.advance(0.5)
        self.pump_until(self.caught_up)
        self.assertEqual(self.primary.changelog_requests()[requests].path, "/+changelog/6-")

    def test_a_serial_gap_is_refused_and_retried(self) -> None:
        self.commit_users(10)
        self.primary.skip_serials = {5}
        self.start()
        self.pump()
        self.assertEqual(self.store.serial, 4)
        self.assertFalse(self.store.journal.path_for(6).exists())
        self.primary.skip_serials = set()
        self.clock.advance(RETRY_SECONDS)
        self.pump_until(self.caught_up)

    def test_without_streaming_the_json_list_is_used_in_bounded_answers(self) -> None:
        self.service.puller._streaming = False
        self.commit_users(12, size=1024 * 1024)        # the primary stops after ~5 MiB per answer
        self.start()
        self.pump_until(self.caught_up)
        answers = [r for r in self.primary.changelog_requests()]
        self.assertGreaterEqual(len(answers), 3)
        self.assertEqual({r.headers["accept"] for r in answers}, {"application/json"})
        for serial in range(self.primary_store.serial + 1):
            self.assertEqual(self.store.journal.read_bytes(serial), self.primary_store.journal.read_bytes(serial))


class GroupCommitTests(ReplicaCase):
    def count_syncs(self) -> list[int]:
        """Serials reached by each journal sync (one per group of lines)."""
        syncs: list[int] = []
        real = self.store.journal.sync

        def counted() -> None:
            syncs.append(self.store.journal.last_serial)
            real()

        self.store.journal.sync = counted  # type: ignore[method-assign]
        return syncs

    def test_lines_that_arrive_together_share_one_sync_per_group(self) -> None:
        syncs = self.count_syncs()
        self.commit_users(600)
        self.start()
        self.pump_until(self.caught_up)
        # 600 entries, at most GROUP_LINES each: a handful of syncs instead of 1,200 fsyncs.
        self.assertGreaterEqual(len(syncs), 600 // GROUP_LINES)
        self.assertLess(len(syncs), 30)
        self.assertEqual(syncs, sorted(syncs))
        self.assertTrue(all(b - a <= GROUP_LINES for a, b in zip([-1, *syncs], syncs)))
        for serial in range(self.primary_store.serial + 1):
            self.assertEqual(self.store.journal.read_bytes(serial), self.primary_store.journal.read_bytes(serial))

    def test_a_line_that_arrives_alone_is_committed_on_its_own(self) -> None:
        self.commit_users(3)
        self.start()
        self.pump_until(lambda: self.caught_up() and self.primary.waiting == 1)
        syncs = self.count_syncs()
        self.commit_users(1)
        self.pump()
        self.assertTrue(self.caught_up())
        self.assertEqual(syncs, [])        # fsynced by itself: no wait for a group


class LongPollTests(ReplicaCase):
    def setUp(self) -> None:
        super().setUp()
        self.commit_users(3)
        self.start()
        self.pump_until(lambda: self.caught_up() and self.primary.waiting == 1)

    def test_a_commit_on_the_primary_is_applied_in_the_same_reactor_turns(self) -> None:
        self.commit_users(1)
        self.pump()            # no clock time passes: only the network round trip
        self.assertTrue(self.caught_up())
        self.assertEqual((self.store.get(user_key("user3")) or {}).get("serial"), 3)

    def test_202_polls_again_at_once(self) -> None:
        requests = len(self.primary.changelog_requests())
        self.clock.advance(30)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests + 1)
        self.assertEqual(self.primary.waiting, 1)
        self.assertEqual(self.service.status.fields()["update-from-primary-at"], self.clock.seconds())
        self.commit_users(2)
        self.pump()
        self.assertTrue(self.caught_up())

    def test_stopping_abandons_the_long_poll(self) -> None:
        self.stop()
        self.assertEqual(self.primary.waiting, 0)
        requests = len(self.primary.changelog_requests())
        self.clock.advance(60)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests)


class HeaderAndIdentityTests(ReplicaCase):
    def replica_settings(self) -> dict[str, object]:
        return {"outside_url": "https://replica.test"}

    def test_requests_carry_the_replica_headers_and_a_fresh_token(self) -> None:
        self.commit_users(2)
        self.start()
        self.pump_until(lambda: len(self.primary.changelog_requests()) >= 2)
        first, second = self.primary.changelog_requests()[:2]
        self.assertEqual(first.headers["x-devpi-replica-uuid"], REPLICA_UUID)
        self.assertEqual(first.headers["x-devpi-expected-primary-id"], "")
        self.assertEqual(first.headers["x-devpi-expected-master-id"], "")
        self.assertEqual(first.headers["x-devpi-replica-outside-url"], "https://replica.test")
        self.assertEqual(first.headers["accept"], STREAM_ACCEPT.decode())
        self.assertTrue(first.headers["user-agent"].startswith("devpi-replica/"))
        token = first.headers["authorization"].removeprefix("Bearer ")
        ReplicaTokens(REPLICA_KEY).check(token, REPLICA_UUID, self.clock.seconds())   # raises if wrong
        self.assertEqual(second.headers["x-devpi-expected-primary-id"], PRIMARY_UUID)
        self.assertEqual(second.headers["x-devpi-expected-master-id"], PRIMARY_UUID)

    def test_a_token_is_made_once_per_second_and_is_always_fresh(self) -> None:
        client = self.service.client

        def token() -> str:
            return client.headers()[b"Authorization"][0].decode().removeprefix("Bearer ")

        self.clock.advance(0.5 - self.clock.seconds() % 1)      # the middle of a second
        first = token()
        self.clock.advance(0.4)
        self.assertEqual(token(), first)            # same second: the same signature
        self.clock.advance(0.2)
        later = token()
        self.assertNotEqual(later, first)
        self.clock.advance(30)
        ReplicaTokens(REPLICA_KEY).check(token(), REPLICA_UUID, self.clock.seconds())

    def test_an_answer_from_another_primary_is_fatal(self) -> None:
        self.node.primary_uuid = OTHER_UUID
        self.primary.check_expected_id = False     # a primary that does not check: the replica must
        self.commit_users(2)
        self.start()
        self.pump()
        self.assertEqual([code for code, _message in self.fatal], [EXIT_OTHER_PRIMARY])
        self.assertIn(PRIMARY_UUID, self.fatal[0][1])
        self.assertEqual(self.store.serial, -1)
        requests = len(self.primary.changelog_requests())
        self.clock.advance(3600)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests)

    def test_a_primary_refusing_the_expected_uuid_is_retried(self) -> None:
        self.node.primary_uuid = OTHER_UUID
        self.commit_users(2)
        self.start()
        self.pump()
        self.assertEqual(self.fatal, [])
        requests = len(self.primary.changelog_requests())
        self.clock.advance(RETRY_SECONDS)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests + 1)
        self.assertEqual(self.store.serial, -1)

    def test_contradicting_uuid_headers_wait_fifty_seconds(self) -> None:
        self.primary.response_uuid = {"X-Devpi-Primary-Uuid": PRIMARY_UUID, "X-Devpi-Master-Uuid": OTHER_UUID}
        self.commit_users(2)
        self.start()
        self.pump()
        self.assertEqual(self.store.serial, -1)
        self.assertIsNone(self.node.primary_uuid)
        requests = len(self.primary.changelog_requests())
        self.clock.advance(UUID_RETRY_SECONDS - 1)
        self.pump()
        self.assertEqual(len(self.primary.changelog_requests()), requests)
        self.primary.response_uuid = None
        self.clock.advance(1)
        self.pump_until(self.caught_up)

    def test_legacy_master_uuid_header_alone_is_enough(self) -> None:
        self.primary.response_uuid = {"X-Devpi-Master-Uuid": PRIMARY_UUID}
        self.commit_users(2)
        self.start()
        self.pump_until(self.caught_up)
        self.assertEqual(self.node.primary_uuid, PRIMARY_UUID)


class FailureTests(ReplicaCase):
    def test_error_statuses_are_retried_and_reported(self) -> None:
        self.commit_users(2)
        self.primary.changelog_status = 500
        self.start()
        self.pump()
        fields = self.service.status.fields()
        self.assertEqual(fields["primary-contacted-at"], self.clock.seconds())
        self.assertIsNone(fields["update-from-primary-at"])
        self.assertIsNone(fields["replica-metadata-in-sync-at"])
        self.primary.changelog_status = None
        self.clock.advance(RETRY_SECONDS)
        self.pump_until(self.caught_up)

    def test_an_unreadable_record_is_not_applied(self) -> None:
        self.commit_users(3)
        real_read = self.primary_store.journal.read_bytes

        def broken(serial: int) -> bytes:
            return b'{"serial": 2, "at": ' if serial == 2 else real_read(serial)

        self.primary_store.journal.read_bytes = broken  # type: ignore[method-assign]
        self.start()
        self.pump()
        self.assertEqual(self.store.serial, 1)
        self.primary_store.journal.read_bytes = real_read  # type: ignore[method-assign]
        self.clock.advance(RETRY_SECONDS)
        self.pump_until(self.caught_up)


class StatusTests(ReplicaCase):
    def test_status_fields_after_catching_up(self) -> None:
        self.commit_users(4)
        started = self.clock.seconds()
        self.start()
        # Until the answer has ended, not just its last entry applied: a catch-up that ran past
        # its time slice reads the end of the stream on a later reactor turn.
        self.pump_until(lambda: self.caught_up() and self.service.status_fields()["replica-in-sync-at"] is not None)
        self.clock.advance(7)
        self.pump()
        fields = self.service.status_fields()
        self.assertEqual(fields["role"], "REPLICA")
        self.assertEqual(fields["serial"], 3)
        for name in ("primary", "master"):
            self.assertEqual(fields[f"{name}-url"], PRIMARY_URL)
            self.assertEqual(fields[f"{name}-uuid"], PRIMARY_UUID)
            self.assertEqual(fields[f"{name}-serial"], 3)
            self.assertEqual(fields[f"{name}-serial-timestamp"], started)
        self.assertEqual(fields["replica-started-at"], started)
        self.assertEqual(fields["replica-metadata-in-sync-at"], started)
        self.assertEqual(fields["replication-errors"], {})
        # No files: the initial pass finds nothing, so files are in sync at once.
        self.assertEqual(fields["replica-init-queue-finished-at"], started)
        self.assertEqual(fields["replica-files-in-sync-at"], started)
        self.assertEqual(fields["replica-in-sync-at"], started)
        json.dumps(fields)


def test_entries_parse_as_the_journal_stores_them() -> None:
    raw = Entry(serial=4, at=1.5, changes={"user/ü": {"a": [1, 2.5, None]}}, blobs=("ab" * 32,)).to_bytes()
    assert parse_entry(raw).to_bytes() == raw


class _Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_change_lines_split_across_chunks_and_pause_while_lines_pile_up() -> None:
    lines = ChangeLines()
    producer = _Producer()
    lines.makeConnection(producer)
    first = lines.next_line()
    assert not first.called
    lines.dataReceived(b'{"a": ')
    assert not first.called                                  # half a record is no line
    lines.dataReceived(b'1}\n{"b"')
    assert first.result == b'{"a": 1}'
    lines.dataReceived(b': 2}\n' + b"{}\n" * (HIGH_WATER_LINES - 1))
    assert producer.calls == ["pause"]
    got = [lines.next_line().result for _ in range(HIGH_WATER_LINES - LOW_WATER_LINES)]
    assert got[0] == b'{"b": 2}' and producer.calls == ["pause", "resume"]
    for _ in range(LOW_WATER_LINES):
        lines.next_line()
    lines.connectionLost(Failure(ResponseDone()))
    assert lines.next_line().result is None


def test_change_lines_fail_when_the_body_ends_inside_a_record() -> None:
    lines = ChangeLines()
    lines.makeConnection(_Producer())
    lines.dataReceived(b'{"a": 1}\n{"b"')
    lines.connectionLost(Failure(ResponseDone()))
    assert lines.next_line().result == b'{"a": 1}'
    broken = lines.next_line()
    assert isinstance(broken.result, Failure) and broken.result.check(ChangelogError)
    broken.addErrback(lambda _f: None)


class AgainstTheRealPrimaryTests(ReplicaCase):
    """The same replica against devpitx's own primary (web/changelog.py): both sides of the wire."""

    def setUp(self) -> None:
        super().setUp()

        use_clock_cooperator(self, self.clock)     # the primary sends files with a pull producer
        self.server = make_test_server(self.base / "real-primary", clock=self.clock, role="primary")
        self.addCleanup(self.server.store.close)
        self.primary_store = self.server.store
        self.http = StubTreq(self.server.resource())
        create_index(self.primary_store, "root", "dev")
        self.wheel = release_file(self.primary_store, "root", "dev", "pkg", "1.0", "pkg-1.0-py3-none-any.whl",
                                  b"wheel bytes", metadata=b"Metadata-Version: 2.1\nName: pkg\n")
        self.service = ReplicaService(
            self.store, self.node, ReplicaSettings(primary_url=PRIMARY_URL), http=self.http,
            replica_key=TEST_REPLICA_KEY, clock=self.clock, run_disk=run_inline,
            on_fatal=lambda code, message: self.fatal.append((code, message)))

    def test_catch_up_long_poll_and_files_from_a_devpitx_primary(self) -> None:
        self.start()
        self.pump_until(lambda: self.caught_up() and self.service.status.files_in_sync_at is not None)
        for serial in range(self.primary_store.serial + 1):
            self.assertEqual(self.store.journal.read_bytes(serial), self.primary_store.journal.read_bytes(serial))
        self.assertEqual(self.node.primary_uuid, self.server.node.uuid)
        self.assertTrue(self.store.blobs.has(self.wheel.sha256))
        self.assertTrue(self.store.blobs.has(self.wheel.metadata_sha256 or ""))
        self.commit_users(2)
        self.pump()
        self.assertTrue(self.caught_up())
        self.assertEqual(self.fatal, [])

"""File replication against a primary speaking the wire format (replication.md §5.2, §5.3)."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from devpitx.replica import filefetch, puller
from devpitx.replica.filerepl import MAX_RETRY_SECONDS, FileFetchFailed
from devpitx.replica.service import ReplicaService, ReplicaSettings
from devpitx.runtime import run_inline
from tests.replica.fake_primary import (
    PRIMARY_URL,
    REPLICA_KEY,
    REPLICA_UUID,
    Released,
    ReplicaCase,
    create_index,
    release_file,
    tombstone_file,
)

WHEEL_METADATA = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n"


class FileCase(ReplicaCase):
    def setUp(self) -> None:
        super().setUp()
        create_index(self.primary_store, "alice", "dev")

    def release(self, name: str, version: str = "1.0", *, index: str = "alice/dev", **kwargs: Any) -> Released:
        user, index_name = index.split("/")
        basename = f"{name}-{version}-py3-none-any.whl"
        return release_file(self.primary_store, user, index_name, name, version, basename,
                            f"content of {basename}".encode(), **kwargs)

    def has_blob(self, sha256: str | None) -> bool:
        assert sha256 is not None
        return self.store.blobs.has(sha256)

    def linked(self, relpath: str, sha256: str | None) -> bool:
        assert sha256 is not None
        path = self.store.blobs.relpath_path(relpath)
        return path.exists() and os.path.samefile(path, self.store.blobs.path_for(sha256))

    def files_in_sync(self) -> bool:
        return self.service.status.files_in_sync_at is not None

    def errors(self) -> dict[str, Any]:
        result: dict[str, Any] = self.service.status_fields()["replication-errors"]
        return result


class DownloadTests(FileCase):
    def test_files_are_downloaded_verified_and_linked(self) -> None:
        wheel = self.release("pkg", metadata=WHEEL_METADATA)
        other = self.release("other")
        self.start()
        self.pump_until(lambda: self.caught_up() and self.files_in_sync())
        for released in (wheel, other):
            self.assertTrue(self.linked(released.relpath, released.sha256))
            self.assertEqual(self.store.blobs.path_for(released.sha256).read_bytes(), released.content)
        self.assertTrue(self.linked(wheel.relpath + ".metadata", wheel.metadata_sha256))
        request = self.primary.file_requests(wheel.relpath)[0]
        self.assertEqual(request.headers["x-devpi-replica-filerepl"], "YES")
        self.assertEqual(request.headers["x-devpi-replica-uuid"], REPLICA_UUID)
        self.assertTrue(request.headers["authorization"].startswith("Bearer "))
        self.assertEqual(len(self.primary.file_requests(wheel.relpath + ".metadata")), 1)
        fields = self.service.status_fields()
        self.assertEqual(fields["replication-errors"], {})
        self.assertIsNotNone(fields["replica-in-sync-at"])
        self.assertEqual(list(self.store.blobs.tmp_dir.iterdir()), [])
        self.assertEqual(self.store.serial, self.primary_store.serial)   # blobs bring no serials

    def test_a_corrupt_download_is_an_error_retried_with_growing_delays(self) -> None:
        wheel = self.release("pkg")
        self.primary.corrupt.add(wheel.relpath)
        self.start()
        self.pump_until(lambda: wheel.relpath in self.errors())
        error = self.errors()[wheel.relpath]
        self.assertEqual(error["url"], f"{PRIMARY_URL}/{wheel.relpath}")
        self.assertEqual(error["relpath"], wheel.relpath)
        self.assertIn("sha256 mismatch", error["message"])
        self.assertFalse(self.has_blob(wheel.sha256))
        self.assertEqual(list(self.store.blobs.tmp_dir.iterdir()), [])
        self.assertFalse(self.files_in_sync())
        for delay, count in ((11.0, 2), (16.5, 3)):        # replication.md §5.2: 11 s, then x1.5
            self.clock.advance(delay - 0.5)
            self.pump()
            self.assertEqual(len(self.primary.file_requests(wheel.relpath)), count - 1)
            self.clock.advance(0.5)
            self.pump()
            self.assertEqual(len(self.primary.file_requests(wheel.relpath)), count)
        self.primary.corrupt.clear()
        self.clock.advance(24.75)
        self.pump_until(self.files_in_sync)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertEqual(self.errors(), {})

    def test_retries_back_off_to_at_most_an_hour(self) -> None:
        wheel = self.release("pkg")
        self.primary.file_status[wheel.relpath] = 500
        self.start()
        self.pump_until(lambda: wheel.relpath in self.errors())
        delays = [min(11.0 * 1.5 ** n, 3600.0) for n in range(18)]
        for attempt, delay in enumerate(delays, start=2):
            self.clock.advance(delay - 0.5)
            self.pump()
            self.assertEqual(len(self.primary.file_requests(wheel.relpath)), attempt - 1)
            self.clock.advance(0.5)
            self.pump()
            self.assertEqual(len(self.primary.file_requests(wheel.relpath)), attempt)
        self.assertEqual(delays[-3:], [MAX_RETRY_SECONDS] * 3)
        self.assertIn("received 500 from primary", self.errors()[wheel.relpath]["message"])

    def test_a_size_other_than_recorded_is_an_error(self) -> None:
        wheel = self.release("pkg", extra={"+size": 3})
        self.start()
        self.pump_until(lambda: wheel.relpath in self.errors())
        self.assertIn("expected 3 bytes", self.errors()[wheel.relpath]["message"])
        self.assertFalse(self.has_blob(wheel.sha256))

    def test_gone_and_redirected_files_are_nothing_to_replicate(self) -> None:
        gone = self.release("gone")
        moved = self.release("moved")
        self.primary.file_status.update({gone.relpath: 410, moved.relpath: 302})
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertEqual(self.errors(), {})
        self.clock.advance(3600)
        self.pump()
        self.assertEqual(len(self.primary.file_requests(gone.relpath)), 1)
        self.assertEqual(len(self.primary.file_requests(moved.relpath)), 1)

    def test_404_is_ignored_for_mirror_files_only(self) -> None:
        create_index(self.primary_store, "root", "pypi", index_type="mirror")
        mirrored = self.release("mirrored", index="root/pypi")
        private = self.release("private")
        self.primary.file_status.update({mirrored.relpath: 404, private.relpath: 404})
        self.start()
        self.pump_until(lambda: self.caught_up() and len(self.primary.file_requests(mirrored.relpath)) == 1
                        and private.relpath in self.errors())
        self.assertEqual(list(self.errors()), [private.relpath])
        self.assertIn("received 404 from primary", self.errors()[private.relpath]["message"])

    def test_a_file_deleted_on_the_primary_leaves_the_queue_and_the_errors(self) -> None:
        wheel = self.release("pkg")
        self.primary.file_status[wheel.relpath] = 500
        self.start()
        self.pump_until(lambda: wheel.relpath in self.errors())
        tombstone_file(self.primary_store, wheel.relpath)
        self.pump_until(lambda: self.caught_up() and self.errors() == {})
        self.clock.advance(3600)
        self.pump()
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)
        self.assertTrue(self.files_in_sync())

    def test_a_missing_link_of_a_present_blob_is_restored_without_downloading(self) -> None:
        wheel = self.release("pkg")
        self.start()
        self.pump_until(self.files_in_sync)
        self.stop()
        os.unlink(self.store.blobs.relpath_path(wheel.relpath))     # as a crash right after adopting leaves it
        restarted = ReplicaService(self.store, self.node, ReplicaSettings(primary_url=PRIMARY_URL),
                                   http=self.http, replica_key=REPLICA_KEY, clock=self.clock, run_disk=run_inline,
                                   on_fatal=lambda code, message: self.fatal.append((code, message)))
        restarted.startService()

        def stop_restarted() -> None:
            restarted.stopService()
            self.pump()

        self.addCleanup(stop_restarted)
        self.clock.advance(1)          # the initial_fetch long poll answers 202 after 1 s: in sync
        self.pump_until(lambda: restarted.status.files_in_sync_at is not None)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)


def wheel_bytes(name: str, version: str, metadata: bytes) -> bytes:
    """A minimal real wheel whose dist-info METADATA is ``metadata``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        archive.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return buffer.getvalue()


class FewerTripsTests(FileCase):
    def release_wheel(self, name: str, wheel_metadata: bytes, recorded_metadata: bytes) -> Released:
        basename = f"{name}-1.0-py3-none-any.whl"
        return release_file(self.primary_store, "alice", "dev", name, "1.0", basename,
                            wheel_bytes(name, "1.0", wheel_metadata), metadata=recorded_metadata)

    def test_the_core_metadata_of_a_wheel_is_taken_from_the_wheel_without_a_request(self) -> None:
        wheel = self.release_wheel("pkg", WHEEL_METADATA, WHEEL_METADATA)
        groups: list[list[str]] = []
        real = self.store.blobs.adopt_replicated

        def adopt(items: Any) -> None:
            groups.append(sorted(sha256 for _content, sha256 in items))
            real(items)

        self.store.blobs.adopt_replicated = adopt  # type: ignore[method-assign]
        self.start()
        self.pump_until(lambda: self.caught_up() and self.files_in_sync())
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertTrue(self.linked(wheel.relpath + ".metadata", wheel.metadata_sha256))
        self.assertEqual(self.store.blobs.path_for(wheel.metadata_sha256 or "").read_bytes(), WHEEL_METADATA)
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)
        self.assertEqual(self.primary.file_requests(wheel.relpath + ".metadata"), [])
        self.assertEqual(groups, [sorted([wheel.sha256, wheel.metadata_sha256 or ""])])   # one group, one trip

    def test_the_core_metadata_is_taken_from_a_wheel_that_is_here_already(self) -> None:
        wheel = self.release_wheel("pkg", WHEEL_METADATA, WHEEL_METADATA)
        self.store.blobs.put_bytes(wheel.content)       # e.g. from the search path, earlier
        self.start()
        self.pump_until(lambda: self.caught_up() and self.files_in_sync())
        self.assertEqual(self.store.blobs.path_for(wheel.metadata_sha256 or "").read_bytes(), WHEEL_METADATA)
        self.assertEqual(self.primary.file_requests(wheel.relpath), [])
        self.assertEqual(self.primary.file_requests(wheel.relpath + ".metadata"), [])

    def test_recorded_metadata_that_is_not_the_wheels_is_downloaded(self) -> None:
        recorded = WHEEL_METADATA + b"Summary: changed after the upload\n"
        wheel = self.release_wheel("pkg", WHEEL_METADATA, recorded)
        self.start()
        self.pump_until(lambda: self.caught_up() and self.files_in_sync())
        self.assertEqual(self.store.blobs.path_for(wheel.metadata_sha256 or "").read_bytes(), recorded)
        self.assertEqual(len(self.primary.file_requests(wheel.relpath + ".metadata")), 1)
        self.assertEqual(self.errors(), {})

    def test_files_that_finish_while_an_adoption_runs_are_adopted_together(self) -> None:
        released = [self.release(f"pkg{n}") for n in range(5)]
        groups: list[int] = []
        held: list[tuple[Deferred[None], Any, tuple[Any, ...]]] = []

        def held_disk(fn: Any, *args: Any) -> Deferred[None]:
            # The disk thread is busy until the test lets each call run.
            if fn == self.store.blobs.adopt_replicated:
                groups.append(len(args[0]))
            d: Deferred[None] = Deferred()
            held.append((d, fn, args))
            return d

        self.service.files._fetcher._adopter._run_disk = held_disk
        self.primary.hold_files = {r.relpath for r in released}
        self.start()
        self.pump_until(lambda: self.caught_up() and len(self.primary.held_files) == 5)
        self.primary.release_files()
        self.pump()
        self.assertEqual(groups, [1])          # the first one finished first; four wait for it
        while held:
            d, fn, args = held.pop(0)
            d.callback(fn(*args))
            self.pump()
        self.pump_until(self.files_in_sync)
        self.assertEqual(groups, [1, 4])
        for r in released:
            self.assertTrue(self.linked(r.relpath, r.sha256))

    def test_a_body_beyond_the_memory_limit_goes_through_a_file(self) -> None:
        self.patch(filefetch, "SPILL_BYTES", 10)
        spilled: list[str] = []
        real = self.store.blobs.adopt_replicated

        def adopt(items: Any) -> None:
            spilled.extend(type(content).__name__ for content, _sha256 in items)
            real(items)

        self.store.blobs.adopt_replicated = adopt  # type: ignore[method-assign]
        big = self.release("big")
        self.start()
        self.pump_until(lambda: self.caught_up() and self.files_in_sync())
        self.assertEqual(self.store.blobs.path_for(big.sha256).read_bytes(), big.content)
        self.assertEqual(len(spilled), 1)
        self.assertNotEqual(spilled[0], "bytes")
        self.assertEqual(list(self.store.blobs.tmp_dir.iterdir()), [])


class DownloadSlotTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        return {"file_replication_threads": 1}

    def test_a_download_slot_is_free_while_the_previous_file_is_being_adopted(self) -> None:
        first, second = self.release("first"), self.release("second")
        held: list[tuple[Deferred[None], Any, tuple[Any, ...]]] = []

        def held_disk(fn: Any, *args: Any) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            held.append((d, fn, args))
            return d

        self.service.files._fetcher._adopter._run_disk = held_disk
        self.start()
        self.pump_until(lambda: self.caught_up() and len(held) == 1)
        self.pump()
        # One slot: the second file was requested while the first one's adoption is held.
        requested = {r.path.lstrip("/") for r in self.primary.requests if not r.path.startswith("/+changelog")}
        self.assertEqual(requested, {first.relpath, second.relpath})
        while held:
            d, fn, args = held.pop(0)
            d.callback(fn(*args))
            self.pump()
        self.pump_until(self.files_in_sync)
        self.assertTrue(self.linked(first.relpath, first.sha256) and self.linked(second.relpath, second.sha256))


class OrderTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        return {"file_replication_threads": 1}

    def test_mirror_files_wait_for_the_initial_pass(self) -> None:
        create_index(self.primary_store, "root", "pypi", index_type="mirror")
        mirrored = self.release("mirrored", index="root/pypi")
        private = self.release("private")
        self.commit_users(3)
        self.primary.stream_hold_after = self.primary_store.serial      # all but the last entry
        self.start()
        self.pump_until(lambda: len(self.primary.file_requests()) > 0)
        self.assertEqual(self.service.status.metadata_in_sync_at, None)
        self.primary.release_streams()
        self.pump_until(self.files_in_sync)
        self.assertEqual([r.path for r in self.primary.file_requests()], [
            "/" + private.relpath, "/" + mirrored.relpath])

    def test_non_mirror_first_then_mirrors_then_deleted_indexes_newest_first(self) -> None:
        create_index(self.primary_store, "root", "pypi", index_type="mirror")
        create_index(self.primary_store, "carol", "docs", index_type="docs")
        deleted = self.release("deleted", index="bob/gone")      # an entry whose index is gone
        older = self.release("older")
        mirrored = self.release("mirrored", index="root/pypi")
        docs = self.release("docs", index="carol/docs")
        newer = self.release("newer")
        # The whole catch-up in one reactor turn: the queue is complete before the one worker starts.
        self.patch(puller, "APPLY_SLICE_SECONDS", 3600.0)
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertEqual([r.path[1:] for r in self.primary.file_requests()],
                         [docs.relpath, newer.relpath, older.relpath, mirrored.relpath, deleted.relpath])


class ConcurrencyTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        return {"file_replication_threads": 2}

    def test_at_most_the_configured_number_of_downloads_run_at_once(self) -> None:
        files = [self.release(f"pkg{n}") for n in range(5)]
        self.primary.hold_files.update(f.relpath for f in files)
        self.start()
        self.pump_until(self.caught_up)
        self.pump()
        self.assertEqual(len(self.primary.held_files), 2)
        for _ in range(3):
            self.primary.release_files()
            self.pump()
            self.assertLessEqual(len(self.primary.held_files), 2)
        self.primary.release_files()
        self.pump_until(self.files_in_sync)
        self.assertTrue(all(self.linked(f.relpath, f.sha256) for f in files))


class SkipTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        return {"file_replication_skip_indexes": ("alice/dev", "mirror")}

    def test_skipped_indexes_are_not_replicated(self) -> None:
        create_index(self.primary_store, "root", "pypi", index_type="mirror")
        create_index(self.primary_store, "bob", "prod")
        self.release("skipped")
        self.release("mirrored", index="root/pypi")
        kept = self.release("kept", index="bob/prod")
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertEqual([r.path[1:] for r in self.primary.file_requests()], [kept.relpath])


class SearchPathHardLinkTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        self.search = self.base / "search"
        return {"replica_file_search_path": self.search, "hard_links": True}

    def test_a_matching_file_in_the_search_path_is_hard_linked(self) -> None:
        wheel = self.release("pkg")
        found = self.search / "+files" / wheel.relpath
        found.parent.mkdir(parents=True)
        found.write_bytes(wheel.content)
        self.primary.file_status[wheel.relpath] = 500
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertTrue(os.path.samefile(found, self.store.blobs.path_for(wheel.sha256)))
        self.assertEqual(self.primary.file_requests(), [])

    def test_a_file_that_does_not_match_is_downloaded_instead(self) -> None:
        wheel = self.release("pkg")
        found = self.search / "+files" / wheel.relpath
        found.parent.mkdir(parents=True)
        found.write_bytes(b"something else")
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertFalse(os.path.samefile(found, self.store.blobs.path_for(wheel.sha256)))
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)
        self.assertEqual(found.read_bytes(), b"something else")


class SearchPathExportLayoutTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        self.search = self.base / "export"
        return {"replica_file_search_path": self.search}

    def test_the_export_layout_is_copied_from(self) -> None:
        wheel = self.release("pkg", "2.0")
        found = self.search / "alice" / "dev" / "pkg" / "2.0" / wheel.relpath.rsplit("/", 1)[1]
        found.parent.mkdir(parents=True)
        found.write_bytes(wheel.content)
        self.start()
        self.pump_until(self.files_in_sync)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))
        self.assertFalse(os.path.samefile(found, self.store.blobs.path_for(wheel.sha256)))
        self.assertEqual(self.primary.file_requests(), [])


class FetchNowTests(FileCase):
    def replica_settings(self) -> dict[str, Any]:
        return {"file_replication_threads": 0}       # only on demand

    def test_fetch_now_stores_the_file_and_its_metadata(self) -> None:
        wheel = self.release("pkg", metadata=WHEEL_METADATA)
        self.start()
        self.pump_until(self.caught_up)
        self.assertFalse(self.has_blob(wheel.sha256))
        for relpath, sha256 in ((wheel.relpath, wheel.sha256), (wheel.relpath + ".metadata", wheel.metadata_sha256)):
            d = self.service.fetch_now(relpath)
            self.pump_until(lambda d=d: d.called)  # type: ignore[misc]
            self.assertIsNone(self.successResultOf(d))
            self.assertTrue(self.linked(relpath, sha256))
        done = self.service.fetch_now(wheel.relpath)          # here already: no request
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)

    def test_fetch_now_joins_a_running_download(self) -> None:
        wheel = self.release("pkg")
        self.primary.hold_files.add(wheel.relpath)
        self.start()
        self.pump_until(self.caught_up)
        first, second = self.service.fetch_now(wheel.relpath), self.service.fetch_now(wheel.relpath)
        self.pump()
        self.assertNoResult(first)
        self.primary.release_files()
        self.pump_until(lambda: first.called and second.called)
        self.assertEqual(len(self.primary.file_requests(wheel.relpath)), 1)
        self.assertTrue(self.linked(wheel.relpath, wheel.sha256))

    def test_fetch_now_fails_with_502_when_the_primary_has_nothing(self) -> None:
        wheel = self.release("pkg")
        self.primary.file_status[wheel.relpath] = 500
        self.start()
        self.pump_until(self.caught_up)
        d = self.service.fetch_now(wheel.relpath)
        self.pump_until(lambda: d.called)
        failure = self.failureResultOf(d, FileFetchFailed)
        self.assertEqual(failure.value.code, 502)
        self.assertEqual(failure.value.message, f"{PRIMARY_URL}/{wheel.relpath}: received 500 from primary")
        self.assertFalse(self.has_blob(wheel.sha256))


def test_search_path_candidates_refuse_unsafe_names(tmp_path: Path) -> None:
    from devpitx.replica.filefetch import WantedBlob, search_path_candidates
    wanted = WantedBlob("u/i/+f/abc/def/p-1.zip", "u/i/+f/abc/def/p-1.zip", "0" * 64, {}, None, False,
                        project="..", version="1.0")
    assert search_path_candidates(tmp_path, wanted) == [tmp_path / "u/i/+f/abc/def/p-1.zip"]

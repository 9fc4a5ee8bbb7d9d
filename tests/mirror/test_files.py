"""Mirror files: first download streamed and cached, shared, verified (mirror.md §5; http-api.md §3.14)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import IResponse

from devpitx.mirror.files import FileUnavailable
from devpitx.model.indexes import get_stage
from devpitx.storage.keys import file_key
from tests.helpers.dists import build_wheel_info
from tests.helpers.testserver import BASE
from tests.mirror.fake_upstream import FakeFile
from tests.mirror.harness import MIRROR_URL, PIP_JSON, MirrorCase, header

CONTENT = bytes(range(256)) * 2048          # 512 KiB: several chunks on every hop


class FileCase(MirrorCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake = self.upstream.add("pkg", "pkg-1.0.tar.gz", CONTENT)
        self.path = self.file_path("pkg", self.fake.filename)
        self.upstream_path = f"/files/{self.fake.filename}"

    def file_path(self, project: str, filename: str) -> str:
        page = self.get_json(f"/root/pypi/+simple/{project}/")
        [item] = [f for f in page["files"] if f["filename"] == filename]
        return urljoin(f"/root/pypi/+simple/{project}/", str(item["url"]))

    @property
    def relpath(self) -> str:
        return self.path.lstrip("/")

    def entry(self) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self.server.store.get(file_key(self.relpath)))

    def tmp_files(self) -> list[str]:
        return os.listdir(self.server.store.blobs.tmp_dir)

    def start_streaming(self, path: str | None = None) -> tuple[Deferred[IResponse], list[bytes]]:
        chunks: list[bytes] = []
        d = cast(Any, self.http).request("GET", BASE + (path or self.path), unbuffered=True)
        self.pump()
        return d, chunks

    def collect(self, response: IResponse, chunks: list[bytes]) -> Deferred[None]:
        done: Deferred[None] = treq.collect(response, chunks.append)
        self.pump()
        return done

    def assert_nothing_stored(self) -> None:
        entry = self.entry()
        self.assertFalse(entry and entry.get("last_modified"), entry)
        self.assertFalse(self.server.store.blobs.has(self.fake.sha256))
        self.assertEqual(self.tmp_files(), [])


class FirstDownloadTests(FileCase):
    def test_streamed_to_the_client_then_served_from_the_store(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 100_000
        d, chunks = self.start_streaming()
        response = self.finish(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(CONTENT))        # the client keeps Content-Length here
        self.assertEqual(header(response, "content-type"), "application/octet-stream")
        self.assertEqual(header(response, "last-modified"), "Wed, 01 May 2024 12:00:00 GMT")
        self.assertEqual(header(response, "x-accel-buffering"), "no")
        done = self.collect(response, chunks)
        # The first bytes are with the client while upstream is still sending.
        self.assertNoResult(done)
        self.assertEqual(b"".join(chunks), CONTENT[:100_000 - 1])
        self.assertIsNone(self.entry())          # nothing recorded before the end
        serial = self.server.store.serial
        self.upstream.release()
        self.finish(done)
        self.assertEqual(b"".join(chunks), CONTENT)
        entry = self.entry()
        assert entry is not None
        self.assertEqual(entry["last_modified"], "Wed, 01 May 2024 12:00:00 GMT")
        self.assertEqual(entry["hashes"], {"sha256": self.fake.sha256})
        self.assertEqual(entry["url"], "http://upstream.example/files/pkg-1.0.tar.gz")
        self.assertEqual(self.server.store.serial, serial + 1)
        self.assertTrue(self.server.store.blobs.relpath_path(self.relpath).exists())     # +files/ link
        response, body = self.get(self.path)
        self.assertEqual((response.code, body), (200, CONTENT))
        self.assertEqual(header(response, "etag"), f'"{self.fake.sha256}"')
        self.assertEqual(self.upstream.count(self.upstream_path), 1)
        self.assertEqual(self.tmp_files(), [])

    def test_releasefilemeta_before_and_after_download(self) -> None:
        meta = self.get_json(self.path, {"Accept": "application/json"})["result"]
        self.assertEqual(meta, {"hash_spec": f"sha256={self.fake.sha256}", "hashes": {"sha256": self.fake.sha256},
                                "project": "pkg", "version": "1.0",
                                "url": "http://upstream.example/files/pkg-1.0.tar.gz"})
        self.get(self.path)
        meta = self.get_json(self.path, {"Accept": "application/json"})["result"]
        self.assertEqual(meta["last_modified"], "Wed, 01 May 2024 12:00:00 GMT")

    def test_twenty_concurrent_requests_one_upstream_download(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 200_000
        started = [self.start_streaming() for _ in range(20)]
        responses = [(self.finish(d), chunks) for d, chunks in started]
        dones = [self.collect(response, chunks) for response, chunks in responses]
        self.assertEqual(self.upstream.count(self.upstream_path), 1)
        self.upstream.release()
        for done in dones:
            self.finish(done)
        for response, chunks in responses:
            self.assertEqual((response.code, b"".join(chunks)), (200, CONTENT))
        self.assertEqual(self.upstream.count(self.upstream_path), 1)
        self.assertTrue(self.server.store.blobs.has(self.fake.sha256))

    def test_a_client_leaving_does_not_stop_the_caching(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 100_000
        (d1, _), (d2, chunks2) = self.start_streaming(), self.start_streaming()
        leaving, staying = self.finish(d1), self.finish(d2)
        quitter = _Quitter()
        leaving.deliverBody(quitter)
        done = self.collect(staying, chunks2)
        self.pump()
        quitter.quit()
        self.pump()
        self.upstream.release()
        self.finish(done)
        self.assertEqual(b"".join(chunks2), CONTENT)
        self.assertTrue(self.server.store.blobs.has(self.fake.sha256))

    def test_every_client_leaving_does_not_stop_the_caching_either(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 100_000
        d, _ = self.start_streaming()
        quitter = _Quitter()
        self.finish(d).deliverBody(quitter)
        self.pump()
        quitter.quit()
        self.pump()
        self.upstream.release()
        self.pump()
        entry = self.entry()
        assert entry is not None
        self.assertEqual(entry["hashes"]["sha256"], self.fake.sha256)

    def test_head_answers_with_upstream_headers_and_caches(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 1000
        response, body = self.request("HEAD", self.path)
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, "x-accel-buffering"), "no")
        self.assertFalse(self.server.store.blobs.has(self.fake.sha256))
        self.upstream.release()
        self.pump()
        self.assertTrue(self.server.store.blobs.has(self.fake.sha256))

    def test_content_lost_from_disk_is_fetched_again_without_a_serial(self) -> None:
        self.get(self.path)
        serial = self.server.store.serial
        self.server.store.blobs.path_for(self.fake.sha256).unlink()
        self.server.store.blobs.relpath_path(self.relpath).unlink()
        response, body = self.get(self.path)
        self.assertEqual((response.code, body), (200, CONTENT))
        self.assertEqual(self.server.store.serial, serial)
        self.assertTrue(self.server.store.blobs.relpath_path(self.relpath).exists())
        self.assertEqual(self.upstream.count(self.upstream_path), 2)

    def test_unhashed_e_link(self) -> None:
        self.upstream.add("plain", "plain-1.0.zip", b"zip bytes", with_hash=False)
        self.clock.advance(1800)                    # a new project: the list must be fetched again
        path = self.file_path("plain", "plain-1.0.zip")
        self.assertEqual(path, "/root/pypi/+e/http_upstream.example_files/plain-1.0.zip")
        response, body = self.get(path)
        self.assertEqual((response.code, body), (200, b"zip bytes"))
        entry = self.server.store.get(file_key(path.lstrip("/"))) or {}
        sha256 = hashlib.sha256(b"zip bytes").hexdigest()
        self.assertEqual((entry["hash_spec"], entry["hashes"]), (f"sha256={sha256}", {"sha256": sha256}))

    def test_other_hash_algorithms_are_verified_too(self) -> None:
        self.upstream.html_only = True
        content = b"md5 hashed"
        fake = FakeFile("md5pkg-1.0.zip", content)
        self.upstream.projects["md5pkg"] = [fake]
        md5 = hashlib.md5(content).hexdigest()
        # An HTML page with an md5 fragment, written by hand.
        original = self.upstream._page

        def page(request: Any, project: str, as_json: bool) -> bytes:
            if project != "md5pkg":
                return original(request, project, as_json)
            request.setHeader(b"content-type", b"text/html")
            return f'<a href="/files/md5pkg-1.0.zip#md5={md5}">x</a>'.encode()
        self.upstream._page = page  # type: ignore[method-assign]
        self.clock.advance(1800)
        path = self.file_path("md5pkg", "md5pkg-1.0.zip")
        self.assertIn(f"/+f/{md5[:3]}/{md5[3:16]}/", path)
        self.upstream.corrupt.add("/files/md5pkg-1.0.zip")
        response, _ = self.get(path)
        self.assertFalse(self.server.store.blobs.has(hashlib.sha256(content).hexdigest()))
        self.upstream.corrupt.clear()
        response, body = self.get(path)
        self.assertEqual(body, content)
        entry = self.server.store.get(file_key(path.lstrip("/"))) or {}
        self.assertEqual(entry["hashes"], {"md5": md5, "sha256": hashlib.sha256(content).hexdigest()})
        self.assertEqual(entry["hash_spec"], f"md5={md5}")


class EnsureStoredTests(FileCase):
    """Downloads without a client (what a push from a mirror needs)."""

    def ensure(self, relpath: str) -> Deferred[dict[str, Any]]:
        stage = get_stage(self.server.store, "root", "pypi")
        assert stage is not None
        return Deferred.fromCoroutine(self.server.mirrors.files.ensure_stored(stage, relpath))

    def test_downloads_once_and_joins_a_download_in_progress(self) -> None:
        self.upstream.stall_after[self.upstream_path] = 1000
        streaming, chunks = self.start_streaming()
        stored = self.ensure(self.relpath)
        self.assertNoResult(stored)
        self.upstream.release()
        entry = self.finish(stored)
        self.assertEqual(entry["hashes"]["sha256"], self.fake.sha256)
        self.assertEqual(self.finish(self.ensure(self.relpath)), entry)
        self.assertEqual(self.upstream.count(self.upstream_path), 1)
        self.finish(self.collect(self.finish(streaming), chunks))
        self.assertEqual(b"".join(chunks), CONTENT)

    def test_failures(self) -> None:
        self.upstream.status[self.upstream_path] = 404
        failure = self.failureResultOf(self.ensure(self.relpath), FileUnavailable)
        self.assertEqual((failure.value.code, failure.value.message),
                         (404, "error 404 getting http://upstream.example/files/pkg-1.0.tar.gz"))
        self.failureResultOf(self.ensure("root/pypi/+f/abc/def/nothing-1.0.zip"), FileUnavailable)
        del self.upstream.status[self.upstream_path]
        self.upstream.corrupt.add(self.upstream_path)
        d = self.ensure(self.relpath)
        self.pump()
        self.assertEqual(self.failureResultOf(d, FileUnavailable).value.code, 502)
        self.assert_nothing_stored()


class BrokenUpstreamTests(FileCase):
    def outcome(self, done: Deferred[None]) -> Failure | None:
        results: list[Failure | None] = []
        done.addBoth(results.append)
        for _ in range(2000):
            if results:
                return results[0]
            self.pump(1)
        raise AssertionError("the body never ended")

    def streaming(self) -> tuple[Deferred[None], list[bytes]]:
        """A download in progress: the client has its first bytes, upstream has stalled."""
        self.upstream.stall_after[self.upstream_path] = 100_000
        d, chunks = self.start_streaming()
        response = self.finish(d)
        self.assertEqual(response.code, 200)        # headers go out before the body is checked
        done = self.collect(response, chunks)
        self.assertEqual(len(b"".join(chunks)), 100_000 - 1)
        return done, chunks

    def assert_aborted(self, done: Deferred[None], chunks: list[bytes]) -> int:
        failure = self.outcome(done)
        self.assertTrue(failure is not None and failure.check(ResponseFailed), failure)
        self.assertEqual(len(self.flushLoggedErrors()), 0)      # log.error, not a traceback
        return len(b"".join(chunks))

    def test_dropped_connection_mid_file(self) -> None:
        done, chunks = self.streaming()
        self.upstream.release(drop=True)
        self.assertLess(self.assert_aborted(done, chunks), len(CONTENT))
        self.assert_nothing_stored()
        response, body = self.get(self.path)          # the next request tries again
        self.assertEqual((response.code, body), (200, CONTENT))
        self.assertEqual(self.upstream.count(self.upstream_path), 2)

    def test_dropped_before_the_client_got_anything_is_502(self) -> None:
        self.upstream.drop_after[self.upstream_path] = 300_000
        response, body = self.get(self.path)
        self.assertEqual(response.code, 502)
        self.assertIn("broke off after 300000 bytes", json.loads(body)["message"])
        self.assert_nothing_stored()

    def test_local_write_error_is_reported_and_leaves_nothing(self) -> None:
        def disk_full(fd: int, data: Any) -> int:
            raise OSError(28, "No space left on device")
        self.patch(os, "write", disk_full)      # the download writes with os.write
        response, body = self.get(self.path)
        self.assertEqual(response.code, 502)
        self.assertIn("No space left on device", json.loads(body)["message"])
        self.assert_nothing_stored()

    def test_hash_mismatch_aborts_the_response_and_stores_nothing(self) -> None:
        self.upstream.corrupt.add(self.upstream_path)
        done, chunks = self.streaming()
        self.upstream.release()
        self.assertEqual(self.assert_aborted(done, chunks), len(CONTENT) - 1)    # never the last byte
        self.assert_nothing_stored()

    def test_upstream_404_and_500(self) -> None:
        self.upstream.status[self.upstream_path] = 404
        response, body = self.get(self.path)
        self.assertEqual((response.code, json.loads(body)),
                         (404, {"message": "error 404 getting http://upstream.example/files/pkg-1.0.tar.gz"}))
        self.upstream.status[self.upstream_path] = 500
        response, body = self.get(self.path)
        self.assertEqual(response.code, 502)
        self.assertEqual(json.loads(body)["message"], "error 500 getting http://upstream.example/files/pkg-1.0.tar.gz")
        self.assert_nothing_stored()

    def test_slow_upstream_is_504_and_the_download_goes_on(self) -> None:
        self.upstream.hold.add(self.upstream_path)
        d = self.start("GET", self.path)
        self.clock.advance(self.request_timeout)
        response = self.finish(d)
        self.assertEqual(response.code, 504)
        self.upstream.release()
        self.pump()
        self.assertTrue(self.server.store.blobs.has(self.fake.sha256))

    def test_upstream_gone_cached_files_still_served(self) -> None:
        self.get(self.path)
        self.upstream.status[self.upstream_path] = 503
        self.upstream.status["/simple/pkg/"] = 503
        self.clock.advance(3600)
        response, body = self.get(self.path)
        self.assertEqual((response.code, body), (200, CONTENT))
        self.assertEqual(self.get_json("/root/pypi/+simple/pkg/", PIP_JSON)["files"][0]["filename"],
                         "pkg-1.0.tar.gz")


class ExternalUrlTests(FileCase):
    def test_redirect_instead_of_download_then_back(self) -> None:
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": MIRROR_URL,
                                         "mirror_use_external_urls": True})
        response, _ = self.get(self.path)
        self.assertEqual(response.code, 302)
        self.assertEqual(header(response, "location"), "http://upstream.example/files/pkg-1.0.tar.gz")
        self.assertEqual(self.upstream.count(self.upstream_path), 0)
        self.set_index("root", "pypi", {"type": "mirror", "mirror_url": MIRROR_URL})
        response, body = self.get(self.path)
        self.assertEqual((response.code, body), (200, CONTENT))


class MetadataTests(MirrorCase):
    def test_core_metadata_fetched_once_and_verified(self) -> None:
        metadata = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nRequires-Dist: dep\n"
        self.upstream.add("pkg", "pkg-1.0-py3-none-any.whl", b"wheel bytes", metadata=metadata)
        page = self.get_json("/root/pypi/+simple/pkg/")
        [item] = page["files"]
        self.assertEqual(item["core-metadata"], {"sha256": hashlib.sha256(metadata).hexdigest()})
        path = urljoin("/root/pypi/+simple/pkg/", item["url"]) + ".metadata"
        for _ in range(2):
            response, body = self.get(path)
            self.assertEqual((response.code, body), (200, metadata))
        self.assertEqual(self.upstream.count("/files/pkg-1.0-py3-none-any.whl.metadata"), 1)
        self.assertEqual(self.upstream.count("/files/pkg-1.0-py3-none-any.whl"), 0)

    def test_metadata_from_a_stored_wheel_when_upstream_is_down(self) -> None:
        built = build_wheel_info(Path(self.mktemp()), "pkg", "1.0", requires_dist=["dep"])
        self.upstream.add("pkg", built.path.name, built.path.read_bytes(), metadata=built.metadata)
        [item] = self.get_json("/root/pypi/+simple/pkg/")["files"]
        wheel_path = urljoin("/root/pypi/+simple/pkg/", item["url"])
        self.assertEqual(self.get(wheel_path)[0].code, 200)
        self.upstream.status["/files/" + built.path.name + ".metadata"] = 503
        response, body = self.get(wheel_path + ".metadata")
        self.assertEqual((response.code, body), (200, built.metadata))
        self.assertEqual(self.upstream.count("/files/" + built.path.name + ".metadata"), 0)

    def test_wrong_metadata_is_refused(self) -> None:
        fake = self.upstream.add("pkg", "pkg-1.0-py3-none-any.whl", b"wheel bytes", metadata=b"original")
        page = self.get_json("/root/pypi/+simple/pkg/")
        fake.metadata = b"tampered"
        response, _ = self.get(urljoin("/root/pypi/+simple/pkg/", page["files"][0]["url"]) + ".metadata")
        self.assertEqual(response.code, 502)


class OfflineFileTests(FileCase):
    def test_offline_serves_only_stored_files(self) -> None:
        self.get(self.path)
        other = self.upstream.add("pkg", "pkg-2.0.tar.gz")
        self.clock.advance(3600)
        other_path = self.file_path("pkg", other.filename)
        self.server.mirrors.upstream.offline = True
        requests = len(self.upstream.requests)
        response, body = self.get(self.path)
        self.assertEqual((response.code, body), (200, CONTENT))
        response, _ = self.get(other_path)
        self.assertEqual(response.code, 404)
        self.assertEqual(len(self.upstream.requests), requests)


class _Quitter(Protocol):
    """A client that reads a little and then hangs up."""

    def quit(self) -> None:
        assert self.transport is not None
        cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        pass

"""Upload route, in process: the legacy protocol's checks, effects on disk, and refusals that change nothing."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from devpitx.model.ixconfig import new_index_config
from devpitx.model.users import new_user_record
from devpitx.storage.keys import file_key, index_key, user_key, version_key
from tests.helpers.forms import multipart, upload_fields, wheel_bytes
from tests.helpers.testserver import (
    BASE, TEST_LOGIN_TOKENS, basic_auth, cheap_hash, make_test_server, stub_client,
)


def disk_snapshot(serverdir: Path) -> dict[str, int]:
    """Every file below the directory (except the lock) with its size."""
    result = {}
    for dirpath, _dirs, files in os.walk(serverdir):
        for name in files:
            path = Path(dirpath) / name
            if name != ".lock":
                result[str(path.relative_to(serverdir))] = path.stat().st_size
    return result


class UploadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.server = make_test_server(self.dir)
        self.http = stub_client(self.server)
        with self.server.store.write() as tx:
            tx.set(user_key("alice"), new_user_record(cheap_hash("secret"), {}, tx.at))
            tx.set(user_key("bob"), new_user_record(cheap_hash("bobpw"), {}, tx.at))
            tx.set(index_key("alice", "dev"), new_index_config("alice", {"volatile": False}, base_exists=lambda b: True))
            tx.set(index_key("alice", "vol"), new_index_config("alice", {}, base_exists=lambda b: True))

    def post(self, path: str, fields: Any, files: Any = (), auth: dict[str, str] | None = None,
             accept: str | None = None) -> Any:
        body, content_type = multipart(fields, files)
        headers = {"Content-Type": content_type, **(auth or {})}
        if accept:
            headers["Accept"] = accept
        response = self.successResultOf(self.http.post(f"{BASE}{path}", data=body, headers=headers))
        return response, self.successResultOf(response.content())

    def upload_wheel(self, index: str = "dev", version: str = "1.0", payload: bytes = b"",
                     auth: dict[str, str] | None = None, extra: Any = ()) -> tuple[Any, bytes, str, bytes]:
        filename, data, metadata = wheel_bytes("hello-pkg", version, payload=payload, requires_python=">=3.8")
        fields = upload_fields("hello-pkg", version, data, extra=[("requires_python", ">=3.8"), *extra])
        response, body = self.post(f"/alice/{index}/", fields, [("content", filename, data)],
                                   auth=auth if auth is not None else basic_auth("alice", "secret"))
        return response, body, filename, data

    def test_upload_stores_file_entry_blob_link_and_metadata(self) -> None:
        serial = self.server.store.serial
        response, _body, filename, data = self.upload_wheel()
        self.assertEqual(response.code, 200)
        self.assertEqual(self.server.store.serial, serial + 1)
        self.assertEqual(response.headers.getRawHeaders("X-Devpi-Serial"), [str(serial + 1)])
        sha = hashlib.sha256(data).hexdigest()
        relpath = f"alice/dev/+f/{sha[:3]}/{sha[3:16]}/{filename}"
        entry = self.server.store.get(file_key(relpath))
        self.assertEqual(entry["hashes"], {"sha256": sha})
        self.assertEqual(entry["+size"], len(data))
        self.assertEqual((self.dir / "+files" / relpath).read_bytes(), data)
        metadata = (self.dir / "+files" / (relpath + ".metadata")).read_bytes()
        self.assertIn(b"Name: hello-pkg", metadata)
        self.assertEqual(entry["+core_metadata"]["sha256"], hashlib.sha256(metadata).hexdigest())
        versiondata = self.server.store.get(version_key("alice", "dev", "hello-pkg", "1.0"))
        self.assertEqual(versiondata["requires_python"], ">=3.8")
        self.assertEqual(versiondata["name"], "hello-pkg")
        link = versiondata["+elinks"][0]
        self.assertEqual(link["entrypath"], relpath)
        self.assertEqual(link["_log"][0]["what"], "upload")
        self.assertEqual(link["_log"][0]["who"], "alice")
        self.assertEqual(os.listdir(self.dir / "tmp"), [])

    def test_identical_reupload_to_non_volatile_is_ok_and_changes_nothing(self) -> None:
        self.upload_wheel()
        before, serial = disk_snapshot(self.dir), self.server.store.serial
        response, body, _f, _d = self.upload_wheel()
        self.assertEqual(response.code, 200)
        self.assertIn(b"Upload of identical file to non volatile index.", body)
        self.assertEqual(self.server.store.serial, serial)
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_changed_file_on_non_volatile_is_409_and_changes_nothing(self) -> None:
        self.upload_wheel()
        before, serial = disk_snapshot(self.dir), self.server.store.serial
        response, body, filename, _d = self.upload_wheel(payload=b"# changed\n")
        self.assertEqual(response.code, 409)
        self.assertEqual(response.original.phrase, f"{filename} already exists in non-volatile index".encode())
        self.assertEqual(self.server.store.serial, serial)
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_volatile_overwrite_logs_and_makes_old_url_gone(self) -> None:
        _r, _b, filename, first = self.upload_wheel("vol")
        response, _b, _f, second = self.upload_wheel("vol", payload=b"# again\n")
        self.assertEqual(response.code, 200)
        versiondata = self.server.store.get(version_key("alice", "vol", "hello-pkg", "1.0"))
        [link] = versiondata["+elinks"]
        self.assertEqual([e["what"] for e in link["_log"]], ["overwrite", "upload"])
        self.assertEqual(link["_log"][0]["count"], 1)
        old = hashlib.sha256(first).hexdigest()
        self.assertEqual(self.server.store.get(file_key(f"alice/vol/+f/{old[:3]}/{old[3:16]}/{filename}")), {})
        self.assertFalse((self.dir / "+files" / f"alice/vol/+f/{old[:3]}/{old[3:16]}/{filename}").exists())
        self.upload_wheel("vol", payload=b"# third\n")
        [link] = self.server.store.get(version_key("alice", "vol", "hello-pkg", "1.0"))["+elinks"]
        self.assertEqual(link["_log"][0]["count"], 2)

    def test_anonymous_gets_401_with_challenge(self) -> None:
        before = disk_snapshot(self.dir)
        response, _b, _f, _d = self.upload_wheel(auth={})
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("WWW-Authenticate"), ['Basic realm="pypi"'])
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_wrong_password_counts_as_anonymous(self) -> None:
        response, _b, _f, _d = self.upload_wheel(auth=basic_auth("alice", "wrong"))
        self.assertEqual(response.code, 401)

    def test_other_user_gets_403(self) -> None:
        response, _b, _f, _d = self.upload_wheel(auth=basic_auth("bob", "bobpw"))
        self.assertEqual(response.code, 403)
        self.assertEqual(response.original.phrase, b"no permission to submit")

    def test_root_cannot_upload_to_another_users_index(self) -> None:
        response, _b, _f, _d = self.upload_wheel(auth=basic_auth("root", ""))
        self.assertEqual(response.code, 403)

    def test_login_token_works_as_basic_password(self) -> None:
        token = TEST_LOGIN_TOKENS.issue("alice", [], True, self.server.clock.seconds())
        response, _b, _f, _d = self.upload_wheel(auth=basic_auth("alice", token))
        self.assertEqual(response.code, 200)

    def test_expired_and_forged_tokens_are_refused(self) -> None:
        old = TEST_LOGIN_TOKENS.issue("alice", [], True, self.server.clock.seconds() - 40000)
        self.assertEqual(self.upload_wheel(auth=basic_auth("alice", old))[0].code, 401)
        forged = TEST_LOGIN_TOKENS.issue("alice", [], True, self.server.clock.seconds())[:-3] + "AAA"
        self.assertEqual(self.upload_wheel(auth=basic_auth("alice", forged))[0].code, 401)

    def test_digest_mismatch_is_400_and_stores_nothing(self) -> None:
        before, serial = disk_snapshot(self.dir), self.server.store.serial
        filename, data, _m = wheel_bytes("hello-pkg", "1.0")
        fields = [(":action", "file_upload"), ("name", "hello-pkg"), ("version", "1.0"),
                  ("sha256_digest", "0" * 64)]
        response, _b = self.post("/alice/dev/", fields, [("content", filename, data)], basic_auth("alice", "secret"))
        self.assertEqual(response.code, 400)
        self.assertIn(b"digest mismatch", response.original.phrase)
        self.assertEqual(self.server.store.serial, serial)
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_blake2_mismatch_is_400(self) -> None:
        filename, data, _m = wheel_bytes("hello-pkg", "1.0")
        fields = [(":action", "file_upload"), ("name", "hello-pkg"), ("version", "1.0"),
                  ("blake2_256_digest", "ab" * 32)]
        response, _b = self.post("/alice/dev/", fields, [("content", filename, data)], basic_auth("alice", "secret"))
        self.assertEqual(response.code, 400)

    def test_refusals_with_exact_messages(self) -> None:
        auth = basic_auth("alice", "secret")
        _f, data, _m = wheel_bytes("hello-pkg", "1.0")
        cases = [
            ([("name", "pkg5"), ("version", "1.0")], ("content", "pkg5-2.7.tgz", b"x"), 400,
             "filename 'pkg5-2.7.tgz' does not contain version '1.0'"),
            ([("name", "pkg5"), ("version", "1.0")], ("content", "pkg5-1.0.qwe", b"x"), 400,
             "'pkg5-1.0.qwe' is not a valid archive name"),
            ([("name", "other"), ("version", "1.0")], ("content", "pkg5-1.0.tar.gz", b"x"), 400,
             "filename 'pkg5-1.0.tar.gz' does not match project name 'other'"),
        ]
        before = disk_snapshot(self.dir)
        for fields, file, code, message in cases:
            response, _b = self.post("/alice/dev/", [(":action", "file_upload"), *fields], [file], auth)
            self.assertEqual((response.code, response.original.phrase.decode()), (code, message))
        response, _b = self.post("/alice/dev/", [("name", "x")], [("content", "x-1.0.zip", b"x")], auth)
        self.assertEqual((response.code, response.original.phrase), (400, b":action field not found"))
        response, _b = self.post("/alice/dev/", [(":action", "bogus")], [], auth)
        self.assertEqual((response.code, response.original.phrase), (400, b"action 'bogus' not supported"))
        response, _b = self.post("/alice/dev/", [(":action", "file_upload"), ("name", "x")], [], auth)
        self.assertEqual((response.code, response.original.phrase), (400, b"content file field not found"))
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_hostile_file_names_are_refused(self) -> None:
        auth = basic_auth("alice", "secret")
        before = disk_snapshot(self.dir)
        for filename in ("../hello_pkg-1.0.tar.gz", "/etc/hello_pkg-1.0.tar.gz", "hello_pkg-1.0\x00.tar.gz",
                         "hello_pkg-1.0\x07.tar.gz", "sub/hello_pkg-1.0.tar.gz", ".hello_pkg-1.0.tar.gz"):
            fields = [(":action", "file_upload"), ("name", "hello-pkg"), ("version", "1.0")]
            response, _b = self.post("/alice/dev/", fields, [("content", filename, b"data")], auth)
            self.assertEqual(response.code, 400, filename)
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_malformed_multipart_is_400(self) -> None:
        before = disk_snapshot(self.dir)
        body = b"--xyz\r\nContent-Disposition: form-data; name=\":action\"\r\n\r\nfile_upload\r\n--xyz"
        response = self.successResultOf(self.http.post(
            f"{BASE}/alice/dev/", data=body,
            headers={"Content-Type": "multipart/form-data; boundary=xyz", **basic_auth("alice", "secret")}))
        self.assertEqual(response.code, 400)
        self.assertEqual(disk_snapshot(self.dir), before)

    def test_invalid_wheel_is_400(self) -> None:
        fields = upload_fields("hello-pkg", "1.0", b"not a zip")
        response, _b = self.post("/alice/dev/", fields, [("content", "hello_pkg-1.0-py3-none-any.whl", b"not a zip")],
                                 basic_auth("alice", "secret"))
        self.assertEqual(response.code, 400)
        self.assertIn(b"invalid wheel", response.original.phrase)

    def test_mirror_index_refuses(self) -> None:
        filename, data, _m = wheel_bytes("hello-pkg", "1.0")
        response, _b = self.post("/root/pypi/", upload_fields("hello-pkg", "1.0", data),
                                 [("content", filename, data)], basic_auth("root", ""))
        self.assertEqual((response.code, response.original.phrase), (404, b"cannot submit to mirror index"))

    def test_missing_index_is_404(self) -> None:
        response, _b = self.post("/alice/nope/", [(":action", "submit")], [], basic_auth("alice", "secret"))
        self.assertEqual(response.code, 404)

    def test_upload_without_trailing_slash_works(self) -> None:
        filename, data, _m = wheel_bytes("hello-pkg", "1.0")
        response, _b = self.post("/alice/dev", upload_fields("hello-pkg", "1.0", data),
                                 [("content", filename, data)], basic_auth("alice", "secret"))
        self.assertEqual(response.code, 200)

    def test_submit_registers_metadata_and_merge_keeps_fields(self) -> None:
        auth = basic_auth("alice", "secret")
        response, _b = self.post("/alice/dev/", [(":action", "submit"), ("name", "Hello.Pkg"), ("version", "1.0"),
                                                  ("description", "long text"), ("summary", "UNKNOWN")], [], auth)
        self.assertEqual(response.code, 200)
        versiondata = self.server.store.get(version_key("alice", "dev", "hello-pkg", "1.0"))
        self.assertEqual(versiondata["description"], "long text")
        self.assertEqual(versiondata["summary"], "")
        self.assertEqual(versiondata["classifiers"], [])
        self.upload_wheel()
        versiondata = self.server.store.get(version_key("alice", "dev", "hello-pkg", "1.0"))
        self.assertEqual(versiondata["description"], "long text")
        self.assertEqual(len(versiondata["+elinks"]), 1)

    def test_doc_upload_stores_doczip_under_normalized_name(self) -> None:
        auth = basic_auth("alice", "secret")
        self.upload_wheel("vol")
        response, _b = self.post("/alice/vol/", [(":action", "doc_upload"), ("name", "Hello_Pkg")],
                                 [("content", "whatever.zip", b"PK\x05\x06" + b"\x00" * 18)], auth)
        self.assertEqual(response.code, 200)
        links = self.server.store.get(version_key("alice", "vol", "hello-pkg", "1.0"))["+elinks"]
        self.assertEqual(sorted(link["entrypath"].rsplit("/", 1)[1] for link in links),
                         sorted(["hello-pkg-1.0.doc.zip", "hello_pkg-1.0-py3-none-any.whl"]))

    def test_doc_upload_without_any_release_is_400(self) -> None:
        response, _b = self.post("/alice/vol/", [(":action", "doc_upload"), ("name", "pkg1")],
                                 [("content", "x.zip", b"zip")], basic_auth("alice", "secret"))
        self.assertEqual((response.code, response.original.phrase),
                         (400, b"doczip has no version and 'pkg1' has no releases to derive one from"))

    def test_json_accept_gets_json_error_body(self) -> None:
        response, body = self.post("/alice/dev/", [("name", "x")], [], basic_auth("alice", "secret"),
                                   accept="application/json")
        self.assertEqual(response.code, 400)
        self.assertIn(b'"message": ":action field not found"', body)


class BodyLimitTests(SynchronousTestCase):
    def test_oversized_body_gets_413_before_it_is_read(self) -> None:
        server = make_test_server(self.mktemp(), max_request_body_bytes=1000)
        site = server.site()
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /alice/dev/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                              b"boundary=b\r\nContent-Length: 5000\r\n\r\n" + b"a" * 100)
        output = transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 413 "), output[:60])
        self.assertIn(b"X-Devpi-Api-Version: 2", output)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(os.listdir(server.store.blobs.tmp_dir), [])



class FormParsingOffTests(SynchronousTestCase):
    def test_site_leaves_form_bodies_unparsed(self) -> None:
        """Twisted's own form parsing would hold whole uploads in memory: it must be off."""
        from twisted.web.resource import Resource

        from devpitx.web.root import DevpitxSite

        seen: dict[str, Any] = {}

        class Recorder(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                seen["args"] = dict(request.args)
                return b"ok"

        site = DevpitxSite(Recorder(), max_body_bytes=10**6, tmp_dir=Path(self.mktemp()),
                           identity_headers=lambda: {})
        site.tmp_dir.mkdir(parents=True)
        body, content_type = multipart([("name", "x")], [("content", "x-1.0.tar.gz", b"data")])
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type.encode()
                              + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.assertIn(b"200 OK", transport.value())
        self.assertEqual(seen["args"], {})

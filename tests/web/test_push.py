"""Push (http-api.md §3.10): internal copies with the exact actionlog, and external uploads to a fake index."""
from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent

from devpitx.storage.keys import file_key, version_key
from devpitx.web import push as push_area
from tests.helpers.testserver import BASE, devpi_auth
from tests.web.test_projects import ALICE, BOB, CAROL, ReleaseTestCase, add_mirror

STAMP = "20231114221320"    # the test clock's start, 1_700_000_000


class InternalPushTests(ReleaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_index("alice", "prod", volatile=False)

    def push(self, body: Any, *, auth: tuple[str, str] | None = ALICE, source: str = "/alice/dev",
             method: str = "PUSH", raw: bytes | None = None) -> Any:
        return self.request(method, source, body, raw=raw, auth=auth)

    def release(self) -> dict[str, str]:
        """pkg 1.0 in alice/dev: sdist with a toxresult, wheel, doczip."""
        sdist = self.upload("dev", "pkg", "1.0", extra=[("summary", "a summary")])
        wheel = self.upload_wheel("dev", "pkg", "1.0")
        tox = self.request("POST", f"/{sdist}", raw=b'{"testenvs": {}}').json["result"].split("#")[0]
        doc = self.upload_doc("dev", "pkg", "1.0")
        return {"sdist": sdist, "wheel": wheel, "tox": tox, "doc": doc}

    def test_actionlog_and_copies(self) -> None:
        files = self.release()
        uploaded = self.stored(file_key(files["sdist"]))
        self.clock.advance(3600)     # the copies keep the source's last_modified
        serial = self.server.store.serial
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "alice/prod"})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.headers["x-devpi-serial"], str(serial + 1))
        target = {k: v.replace("alice/dev/", "alice/prod/", 1) for k, v in files.items()}
        target["tox"] = f"{target['sdist']}.toxresult-20231114231320-0"
        self.assertEqual(reply.json, {"type": "actionlog", "result": [
            [200, "register", "pkg", "1.0", "->", "alice/prod"],
            [200, "store_releasefile", target["wheel"]],      # sorted by basename
            [200, "store_releasefile", target["sdist"]],
            [200, "store_toxresult", target["tox"]],
            [200, "store_doczip", "pkg", "1.0", "->", "alice/prod"],
        ]})
        for name in ("sdist", "wheel", "tox", "doc"):
            self.assertEqual(self.file_code(target[name]), 200, name)
        copied = self.stored(file_key(target["sdist"]))
        self.assertEqual(copied["last_modified"], uploaded["last_modified"])
        self.assertEqual(self.server.store.blobs.relpath_path(target["tox"]).read_bytes(), b'{"testenvs": {}}')
        versiondata = self.stored(version_key("alice", "prod", "pkg", "1.0"))
        self.assertEqual(versiondata["summary"], "a summary")
        for link in versiondata["+elinks"]:
            log = [(e["what"], e["who"], e.get("src"), e.get("dst")) for e in link["_log"]]
            expected_first = ("upload", None if link["rel"] == "toxresult" else "alice", None, "alice/dev")
            self.assertEqual(log, [expected_first, ("push", "alice", "alice/dev", "alice/prod")], link["rel"])
        self.assertEqual(self.projects("prod"), ["pkg"])

    def test_overwrite_entries_are_not_copied(self) -> None:
        self.upload("vol", "pkg", "1.0")
        relpath = self.upload("vol", "pkg", "1.0", content=b"second build")
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "alice/prod"}, source="/alice/vol")
        self.assertEqual(reply.code, 200, reply.body)
        versiondata = self.stored(version_key("alice", "prod", "pkg", "1.0"))
        whats = [e["what"] for e in versiondata["+elinks"][0]["_log"]]
        self.assertEqual(whats, ["upload", "push"])
        self.assertEqual(versiondata["+elinks"][0]["entrypath"], relpath.replace("alice/vol/", "alice/prod/"))

    def test_volatile_target_is_overwritten(self) -> None:
        self.upload("dev", "pkg", "1.0")
        self.upload("vol", "pkg", "1.0", content=b"older build in vol")
        body = {"name": "pkg", "version": "1.0", "targetindex": "alice/vol"}
        self.assertEqual(self.push(body).code, 200)
        versiondata = self.stored(version_key("alice", "vol", "pkg", "1.0"))
        self.assertEqual([e["what"] for e in versiondata["+elinks"][0]["_log"]], ["overwrite", "upload", "push"])

    def test_no_docs_and_only_docs(self) -> None:
        self.release()
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "alice/prod", "no_docs": True})
        self.assertEqual([a[1] for a in reply.json["result"]],
                         ["register", "store_releasefile", "store_releasefile", "store_toxresult"])
        self.add_index("alice", "docs", volatile=False)
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "alice/docs", "only_docs": True})
        self.assertEqual(reply.json["result"], [[200, "register", "pkg", "1.0", "->", "alice/docs"],
                                                [200, "store_doczip", "pkg", "1.0", "->", "alice/docs"]])

    def test_post_with_json_body_is_a_push(self) -> None:
        self.upload("dev", "pkg", "1.0")
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "alice/prod"}, method="POST",
                          source="/alice/dev/")
        self.assertEqual((reply.code, reply.json["type"]), (200, "actionlog"))

    def test_non_volatile_target_refuses_existing_files(self) -> None:
        self.upload("dev", "pkg", "1.0")
        body = {"name": "pkg", "version": "1.0", "targetindex": "alice/prod"}
        self.assertEqual(self.push(body).code, 200)
        self.upload("dev", "pkg", "1.0", filename="pkg-1.0.zip")
        serial = self.server.store.serial
        reply = self.push(body)     # the zip is new, the tar.gz exists: nothing at all is copied
        self.assertEqual((reply.code, reply.message), (409, "pkg-1.0.tar.gz already exists in non-volatile index"))
        self.assertUnchanged(serial)

    def test_bad_requests(self) -> None:
        self.release()
        serial = self.server.store.serial
        ok = {"name": "pkg", "version": "1.0", "targetindex": "alice/prod"}
        cases: list[tuple[Any, int, str]] = [
            (b"{nope", 400, "Bad request: could not decode json"),
            (["pkg"], 400, "push request must be a JSON object"),
            ({"version": "1.0", "targetindex": "alice/prod"}, 400, "there are no files for  1.0 on stage alice/dev"),
            ({**ok, "version": "9.9"}, 400, "there are no files for pkg 9.9 on stage alice/dev"),
            ({**ok, "no_docs": True, "only_docs": True}, 400, "can't use 'no_docs' and 'only_docs' together"),
            ({**ok, "no_docs": "yes"}, 400, "'no_docs' must be true or false"),
            ({**ok, "posturl": "http://127.0.0.1:1/"}, 400, "unknown additional options: posturl"),
            ({**ok, "targetindex": "prod"}, 400, "targetindex not in format user/index"),
            ({**ok, "targetindex": "alice/prod/x"}, 400, "targetindex not in format user/index"),
            ({**ok, "targetindex": 7}, 400, "targetindex not in format user/index"),
            ({**ok, "targetindex": "alice/nope"}, 404, "The stage alice/nope could not be found."),
        ]
        for body, code, message in cases:
            reply = self.push(None, raw=body) if isinstance(body, bytes) else self.push(body)
            self.assertEqual((reply.code, reply.message), (code, message), body)
        reply = self.push(ok, source="/alice/missing")
        self.assertEqual((reply.code, reply.message), (404, "The stage alice/missing could not be found."))
        self.assertUnchanged(serial)

    def test_no_selected_files(self) -> None:
        self.upload("dev", "pkg", "1.0")
        self.post_form("/alice/dev/", [(":action", "submit"), ("name", "pkg"), ("version", "2.0")], [])
        serial = self.server.store.serial
        for body in ({"name": "pkg", "version": "1.0", "targetindex": "alice/prod", "only_docs": True},
                     {"name": "pkg", "version": "2.0", "targetindex": "alice/prod"}):
            reply = self.push(body)
            self.assertEqual((reply.code, reply.message), (404, f"no release/files found for pkg {body['version']}"))
        self.assertUnchanged(serial)

    def test_upload_permission_on_target(self) -> None:
        self.upload("dev", "pkg", "1.0")
        self.request("PATCH", "/alice/prod", ["acl_upload+=carol"], auth=ALICE)
        body = {"name": "pkg", "version": "1.0", "targetindex": "alice/prod"}
        serial = self.server.store.serial
        for auth, who in ((None, "None"), (BOB, "'bob'"), (self.root(), "'root'")):
            reply = self.push(body, auth=auth)
            self.assertEqual((reply.code, reply.message), (401, f"user {who} cannot upload to 'alice/prod'"))
        self.assertUnchanged(serial)
        self.assertEqual(self.push(body, auth=CAROL).code, 200)
        versiondata = self.stored(version_key("alice", "prod", "pkg", "1.0"))
        self.assertEqual(versiondata["+elinks"][0]["_log"][-1]["who"], "carol")

    def test_into_a_mirror_is_refused(self) -> None:
        self.upload("dev", "pkg", "1.0")
        reply = self.push({"name": "pkg", "version": "1.0", "targetindex": "root/pypi"}, auth=self.root())
        self.assertEqual(reply.code, 401)


class MirrorSourceTests(ReleaseTestCase):
    def test_push_from_a_mirror(self) -> None:
        files = add_mirror(self)
        self.add_index("alice", "prod", volatile=False)
        reply = self.request("PUSH", "/alice/mirror", {"name": "pkg", "version": "2.0", "targetindex": "alice/prod"},
                             auth=ALICE)
        self.assertEqual(reply.code, 200, reply.body)
        wheel, sdist = (files[b].replace("alice/mirror/", "alice/prod/") for b in ("pkg-2.0-py3-none-any.whl",
                                                                                   "pkg-2.0.tar.gz"))
        self.assertEqual(reply.json["result"], [[200, "register", "pkg", "2.0", "->", "alice/prod"],
                                                [200, "store_releasefile", wheel],
                                                [200, "store_releasefile", sdist]])
        versiondata = self.stored(version_key("alice", "prod", "pkg", "2.0"))
        self.assertEqual(versiondata["requires_python"], ">=3.8")
        self.assertEqual([e["what"] for e in versiondata["+elinks"][0]["_log"]], ["push"])
        self.assertEqual(self.stored(file_key(sdist))["+size"], len(b"pkg-2.0.tar.gz"))
        self.assertEqual(self.file_code(sdist), 200)

    def test_files_not_cached_offline_and_unknown_versions(self) -> None:
        # Without an HTTP client mirrors are offline: only cached files exist (mirror.md §7).
        add_mirror(self, cached=("pkg-1.0.tar.gz",))
        self.add_index("alice", "prod", volatile=False)
        serial = self.server.store.serial
        for version in ("2.0", "3.0"):
            message = f"there are no files for pkg {version} on stage alice/mirror"
            reply = self.request("PUSH", "/alice/mirror",
                                 {"name": "pkg", "version": version, "targetindex": "alice/prod"}, auth=ALICE)
            self.assertEqual((reply.code, reply.message), (400, message), version)
        reply = self.request("PUSH", "/alice/mirror", {"name": "pkg", "version": "1.0", "targetindex": "alice/prod",
                                                       "only_docs": True}, auth=ALICE)
        self.assertEqual((reply.code, reply.message), (404, "no release/files found for pkg 1.0"))
        self.assertUnchanged(serial)


# -- external push ------------------------------------------------------------------------------
@dataclass
class Received:
    authorization: str | None
    fields: list[tuple[str, str]]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def field(self, name: str) -> str:
        values = [v for k, v in self.fields if k == name]
        assert len(values) == 1, (name, self.fields)
        return values[0]


class FakeIndex:
    """A legacy-upload endpoint at ``/legacy/`` answering the queued (code, text) pairs, then 200."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.received: list[Received] = []
        self.answers = list(answers)
        app = Klein()
        app.route("/legacy/", methods=["POST"])(self.upload)
        # Not StubTreq: it refuses streamed bodies, and the push streams every file.
        self.agent = RequestTraversalAgent(app.resource())
        self.http = HTTPClient(self.agent)

    def upload(self, request: IRequest) -> bytes:
        body = request.content.read()
        content_type = request.getHeader(b"content-type").decode()
        auth = request.getHeader(b"authorization")
        received = Received(auth.decode() if auth else None, [])
        if content_type.startswith("multipart/"):
            message = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body,
                                               policy=email.policy.HTTP)
            for part in message.iter_parts():
                name = str(part.get_param("name", header="content-disposition"))
                payload = cast(bytes, part.get_payload(decode=True))
                filename = part.get_filename()
                if filename is not None:
                    received.files[name] = (filename, payload)
                else:
                    received.fields.append((name, payload.decode()))
        else:
            received.fields = parse_qsl(body.decode(), keep_blank_values=True)
        self.received.append(received)
        code, text = self.answers.pop(0) if self.answers else (200, "")
        request.setResponseCode(code)
        return text.encode()


class Unreachable:
    def post(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.errback(ConnectionRefusedError("Connection was refused by other side: 111"))
        return d


class ExternalPushTests(ReleaseTestCase):
    POSTURL = "http://127.0.0.1:9/legacy/"

    def push(self, fake: Any, **extra: Any) -> Any:
        """PUSH and pump both in-memory connections and the clock until the answer is there."""
        client = fake.http if isinstance(fake, FakeIndex) else fake
        self.patch(push_area, "new_push_client", lambda reactor: client)
        body = {"name": "pkg", "version": "1.0", "posturl": self.POSTURL, "username": "bob",
                "password": "pw", **extra}
        d = self.http.request("PUSH", f"{BASE}/alice/dev", data=json.dumps(body).encode(),  # type: ignore[attr-defined]
                              headers={"Accept": "application/json", **devpi_auth(*ALICE)})
        results: list[Any] = []
        d.addBoth(results.append)
        for _ in range(10_000):
            if results:
                break
            self.clock.advance(0)
            self.http.flush()
            if isinstance(fake, FakeIndex):
                fake.agent.flush()
        response = results[0]
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def test_files_and_docs_are_uploaded(self) -> None:
        sdist = self.upload("dev", "pkg", "1.0", extra=[("summary", "hi"), ("classifiers", "A :: B"),
                                                       ("classifiers", "C :: D")])
        wheel = self.upload_wheel("dev", "pkg", "1.0")
        self.upload_doc("dev", "pkg", "1.0", content=b"docs zip bytes")
        fake = FakeIndex()
        serial = self.server.store.serial
        code, body = self.push(fake)
        self.assertEqual(code, 200, body)
        self.assertEqual(body, {"type": "actionlog", "result": [
            [200, "upload", wheel, ""], [200, "upload", sdist, ""], [200, "docfile", "pkg"]]})
        self.assertUnchanged(serial)
        wheel_form, sdist_form, doc_form = fake.received
        self.assertEqual(sdist_form.authorization, "Basic Ym9iOnB3")     # bob:pw
        self.assertEqual(sdist_form.field(":action"), "file_upload")
        self.assertEqual((sdist_form.field("name"), sdist_form.field("version")), ("pkg", "1.0"))
        self.assertEqual(sdist_form.field("summary"), "hi")
        self.assertEqual([v for k, v in sdist_form.fields if k == "classifiers"], ["A :: B", "C :: D"])
        self.assertEqual((sdist_form.field("filetype"), sdist_form.field("pyversion")), ("sdist", "source"))
        self.assertEqual((wheel_form.field("filetype"), wheel_form.field("pyversion")), ("bdist_wheel", "3"))
        content = self.server.store.blobs.relpath_path(sdist).read_bytes()
        self.assertEqual(sdist_form.files["content"], ("pkg-1.0.tar.gz", content))
        self.assertEqual(sdist_form.field("sha256_digest"), self.stored(file_key(sdist))["hashes"]["sha256"])
        self.assertEqual(doc_form.field(":action"), "doc_upload")
        self.assertEqual(doc_form.files["content"], ("pkg.zip", b"docs zip bytes"))

    def test_register_project_first(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        fake = FakeIndex()
        code, body = self.push(fake, register_project=True, no_docs=True)
        self.assertEqual((code, body["result"]), (200, [[200, "register", "pkg", "1.0"], [200, "upload", relpath, ""]]))
        self.assertEqual(fake.received[0].field(":action"), "submit")
        refused = FakeIndex((403, "forbidden"))
        code, body = self.push(refused, register_project=True)
        self.assertEqual((code, body["result"]), (502, [[403, "register", "pkg", "1.0"]]))
        self.assertEqual(len(refused.received), 1)

    def test_refused_upload_is_502_with_the_text(self) -> None:
        relpath = self.upload("dev", "pkg", "1.0")
        code, body = self.push(FakeIndex((400, "File already exists.")))
        self.assertEqual((code, body["result"]), (502, [[400, "upload", relpath, "File already exists."]]))
        # only the last entry decides: a failed upload followed by good docs is 200 (as devpi-server)
        self.upload_doc("dev", "pkg", "1.0")
        code, body = self.push(FakeIndex((409, "exists")))
        self.assertEqual((code, [a[0] for a in body["result"]]), (200, [409, 200]))

    def test_connection_errors(self) -> None:
        self.upload("dev", "pkg", "1.0")
        code, body = self.push(Unreachable())
        self.assertEqual(code, 502)
        (entry,) = body["result"]
        self.assertEqual(entry[:2], [-1, "exception on release upload:"])
        self.assertIn("refused", entry[2])
        code, body = self.push(Unreachable(), register_project=True)
        self.assertEqual((code, body["result"][0][:2]), (502, [-1, "exception on register:"]))

    def test_bad_requests(self) -> None:
        self.upload("dev", "pkg", "1.0")
        fake = FakeIndex()
        for extra, message in (
                ({"posturl": "ftp://127.0.0.1/"}, "push needs 'targetindex' (user/index) or 'posturl' "
                                                  "(an http or https URL)"),
                ({"posturl": None}, "push needs 'targetindex' (user/index) or 'posturl' (an http or https URL)"),
                ({"username": 1}, "external push needs 'username' and 'password' strings"),
                ({"extra": 1}, "unknown additional options: extra"),
                ({"register_project": "yes"}, "'register_project' must be true or false")):
            code, body = self.push(fake, **extra)
            self.assertEqual((code, body["message"]), (400, message), extra)
        self.assertEqual(fake.received, [])

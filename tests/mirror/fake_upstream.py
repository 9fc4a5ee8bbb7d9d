"""A fake upstream simple index: a small twisted.web resource tests can make slow, broken or wrong.

Served in process through treq's StubTreq (``tests/mirror/harness.py``) or
as a real process on 127.0.0.1 (``python -m tests.mirror.fake_upstream``,
used by the integration test). Layout under its root URL::

    /simple/                    project list (PEP 691 JSON or PEP 503 HTML, by Accept)
    /simple/<project>/          project page, with ETag and X-Pypi-Last-Serial
    /files/<filename>           release files
    /files/<filename>.metadata  core metadata of wheels (PEP 658)

``html_only`` makes it ignore Accept and always answer HTML without the
extra PEP 700/658 data, like a plain directory of links.

Misbehaviour, per path: ``status`` (answer with that code), ``hold``
(answer only when :meth:`release` is called: a slow upstream), ``drop_after``
(send that many bytes of the body, then drop the connection), ``stall_after``
(send that many bytes, the rest on :meth:`release`), ``corrupt``
(serve different bytes than the page's hash promises).
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass
class FakeFile:
    filename: str
    content: bytes
    requires_python: str | None = None
    yanked: bool | str | None = None
    with_hash: bool = True
    metadata: bytes | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def _normalize(name: str) -> str:
    import re
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(eq=False)
class FakeUpstream(Resource):
    """The resource; mutate its fields from tests."""

    projects: dict[str, list[FakeFile]] = field(default_factory=dict)
    html_only: bool = False
    serial: int = 1000
    status: dict[str, int] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)  # send that many bytes, the rest on release
    corrupt: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)      # projects with pages but not in the list
    send_etag: bool = True
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    requests: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)
        self._held: list[tuple[Request, str]] = []
        self._stalled: list[tuple[Request, str, bytes]] = []

    # -- content ---------------------------------------------------------------------------------
    def add(self, project: str, filename: str, content: bytes | None = None, **kwargs: Any) -> FakeFile:
        fake = FakeFile(filename, content if content is not None else f"content of {filename}".encode(), **kwargs)
        self.projects.setdefault(_normalize(project), []).append(fake)
        return fake

    def count(self, path: str) -> int:
        return Counter(self.requests)[path]

    def file_url_path(self, filename: str) -> str:
        return f"/files/{filename}"

    # -- answers ---------------------------------------------------------------------------------
    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        self.requests.append(path)
        self.headers_seen.append({k.decode().lower(): v[0].decode()
                                  for k, v in request.requestHeaders.getAllRawHeaders()})
        if path in self.hold:
            self._held.append((request, path))
            return NOT_DONE_YET
        return self._answer(request, path)

    def release(self, path: str | None = None, *, drop: bool = False) -> int:
        """Answer the held requests (for ``path``, or all); returns how many.

        ``drop``: stalled downloads lose their connection instead of getting the rest.
        """
        stalled = [(r, p, rest) for r, p, rest in self._stalled if path is None or p == path]
        self._stalled = [item for item in self._stalled if item not in stalled]
        for request, stalled_path, rest in stalled:
            self.stall_after.pop(stalled_path, None)
            if request._disconnected:
                continue
            if drop:
                request.loseConnection()
            else:
                request.write(rest)
                request.finish()
        ready = [(r, p) for r, p in self._held if path is None or p == path]
        self._held = [(r, p) for r, p in self._held if (r, p) not in ready]
        for request, held_path in ready:
            self.hold.discard(held_path)
            if request._disconnected:
                continue
            body = self._answer(request, held_path)
            if body is not NOT_DONE_YET:
                assert isinstance(body, bytes)
                request.write(body)
                request.finish()
        return len(ready) + len(stalled)

    def _answer(self, request: Request, path: str) -> bytes | int:
        if path in self.redirect:
            request.setResponseCode(302)
            request.setHeader(b"location", self.redirect[path].encode())
            return b""
        if path.startswith("/moved/"):
            path = "/simple/" + path[len("/moved/"):]       # where redirects point to
        if path in self.status:
            request.setResponseCode(self.status[path])
            return b"forced status"
        accept = (request.getHeader(b"accept") or b"").decode()
        as_json = not self.html_only and JSON_TYPE in accept
        if path == "/simple/":
            return self._list(request, as_json)
        if path.startswith("/simple/") and path.endswith("/") and path.count("/") == 3:
            return self._page(request, path.split("/")[2], as_json)
        if path.startswith("/files/"):
            return self._file(request, path[len("/files/"):])
        request.setResponseCode(404)
        return b"not found"

    def _etagged(self, request: Request, body: bytes, content_type: str) -> bytes:
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        request.setHeader(b"x-pypi-last-serial", str(self.serial).encode())
        if not self.send_etag:
            request.setHeader(b"content-type", content_type.encode())
            return body
        request.setHeader(b"etag", etag.encode())
        if request.getHeader(b"if-none-match") == etag.encode():
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", content_type.encode())
        return body

    def _list(self, request: Request, as_json: bool) -> bytes:
        names = sorted(name for name in self.projects if name not in self.unlisted)
        if as_json:
            body = json.dumps({"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}).encode()
            return self._etagged(request, body, JSON_TYPE)
        links = "".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a>\n' for n in names)
        return self._etagged(request, f"<html><body>{links}</body></html>".encode(), "text/html")

    def _page(self, request: Request, project: str, as_json: bool) -> bytes:
        files = self.projects.get(project)
        if files is None:
            request.setResponseCode(404)
            return b"no such project"
        if as_json:
            items = []
            for f in files:
                item: dict[str, Any] = {"filename": f.filename, "url": f"../../files/{f.filename}",
                                        "hashes": {"sha256": f.sha256} if f.with_hash else {},
                                        "size": len(f.content), "upload-time": "2024-05-01T12:00:00.000000Z"}
                if f.requires_python is not None:
                    item["requires-python"] = f.requires_python
                if f.yanked is not None:
                    item["yanked"] = f.yanked
                if f.metadata is not None:
                    item["core-metadata"] = {"sha256": hashlib.sha256(f.metadata).hexdigest()}
                items.append(item)
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": items}).encode()
            return self._etagged(request, body, JSON_TYPE)
        lines = []
        for f in files:
            href = f"../../files/{f.filename}" + (f"#sha256={f.sha256}" if f.with_hash else "")
            attrs = f'href="{html.escape(href)}"'
            if f.requires_python is not None:
                attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
            if f.yanked is not None:
                attrs += f' data-yanked="{html.escape("" if f.yanked is True else str(f.yanked))}"'
            lines.append(f"<a {attrs}>{html.escape(f.filename)}</a><br/>\n")
        body = f"<html><body><h1>Links for {project}</h1>{''.join(lines)}</body></html>".encode()
        return self._etagged(request, body, "text/html")

    def _find(self, filename: str) -> FakeFile | None:
        for files in self.projects.values():
            for f in files:
                if f.filename == filename:
                    return f
        return None

    def _file(self, request: Request, name: str) -> bytes | int:
        if name.endswith(".metadata"):
            wheel = self._find(name[:-len(".metadata")])
            if wheel is None or wheel.metadata is None:
                request.setResponseCode(404)
                return b"no metadata"
            return wheel.metadata
        fake = self._find(name)
        if fake is None:
            request.setResponseCode(404)
            return b"no such file"
        path = self.file_url_path(name)
        content = fake.content
        if path in self.corrupt:
            content = bytes(b ^ 0xFF for b in content)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"last-modified", b"Wed, 01 May 2024 12:00:00 GMT")
        request.setHeader(b"content-length", str(len(content)).encode())
        if path in self.stall_after:
            cut = self.stall_after[path]
            request.write(content[:cut])
            self._stalled.append((request, path, content[cut:]))
            return NOT_DONE_YET
        if path in self.drop_after:
            request.write(content[:self.drop_after[path]])
            request.loseConnection()
            return NOT_DONE_YET
        return content


# -- as a process (integration tests) -----------------------------------------------------------
def load_directory(upstream: FakeUpstream, directory: Path) -> None:
    """Every ``*.whl``/``*.tar.gz`` in ``directory``; wheels get their METADATA as core metadata."""
    import zipfile
    for path in sorted(directory.iterdir()):
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                metadata = next((zf.read(n) for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            project = path.name.split("-")[0]
            upstream.add(project, path.name, path.read_bytes(), metadata=metadata)
        elif path.name.endswith(".tar.gz"):
            upstream.add(path.name.rsplit("-", 1)[0], path.name, path.read_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake upstream index for tests (127.0.0.1 only)")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--html-only", action="store_true")
    parser.add_argument("--log", type=Path, help="append one line per request path")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.web.server import Site

    upstream = FakeUpstream(html_only=args.html_only)
    load_directory(upstream, args.directory)
    if args.log is not None:
        log_file = open(args.log, "a", buffering=1)
        original = upstream.render

        def logged(request: Request) -> bytes | int:
            log_file.write(request.path.decode() + "\n")
            return original(request)
        upstream.render = logged  # type: ignore[method-assign]
    port = cast(Any, reactor).listenTCP(0, Site(upstream), interface="127.0.0.1")
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port.getHost().port))
    tmp.rename(args.port_file)
    cast(Any, reactor).run()


if __name__ == "__main__":
    main(sys.argv[1:])

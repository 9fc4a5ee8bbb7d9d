"""A local fake upstream index for the mirror measure: static PEP 503 pages served on 127.0.0.1.

The mirror indexes of both servers point at this, never at a real index.
It serves a small dependency tree of generated wheels:

    bench-app -> bench-liba -> bench-libc
              -> bench-libb -> bench-libc, bench-libd

from a directory (``simple/<project>/index.html``, ``packages/<file>``) with
the standard library's threaded HTTP server, in a thread of the harness.
"""
from __future__ import annotations

import html
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.packages import Dist, make_wheel

# project -> (versions, requirements of every version)
TREE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bench-app": (("1.0", "1.1", "2.0"), ("bench-liba>=1.0", "bench-libb")),
    "bench-liba": (("1.0", "1.1", "1.2"), ("bench-libc",)),
    "bench-libb": (("0.9", "1.0"), ("bench-libc", "bench-libd")),
    "bench-libc": (("1.0", "2.0", "3.0"), ()),
    "bench-libd": (("1.0",), ()),
}
ROOT_PROJECT = "bench-app"
WHEEL_PAYLOAD_BYTES = 50_000


def tree_dists() -> dict[str, list[Dist]]:
    return {name: [make_wheel(name, v, WHEEL_PAYLOAD_BYTES, requires_dist=reqs) for v in versions]
            for name, (versions, reqs) in TREE.items()}


def write_tree(root: Path, dists: Mapping[str, Sequence[Dist]]) -> None:
    """Write the static simple index: project list, one page per project, the files."""
    (root / "packages").mkdir(parents=True, exist_ok=True)
    anchors = "".join(f'<a href="{name}/">{name}</a>\n' for name in dists)
    (root / "simple").mkdir(exist_ok=True)
    (root / "simple" / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n")
    for name, files in dists.items():
        links = []
        for dist in files:
            (root / "packages" / dist.filename).write_bytes(dist.content)
            links.append(f'<a href="../../packages/{dist.filename}#sha256={dist.sha256}">'
                         f"{html.escape(dist.filename)}</a><br>\n")
        page = root / "simple" / name
        page.mkdir(exist_ok=True)
        (page / "index.html").write_text(
            f"<!DOCTYPE html><html><body><h1>Links for {name}</h1>\n{''.join(links)}</body></html>\n")


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real index would

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Upstream:
    root: Path
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    requests: int = field(default=0)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    def start(self) -> None:
        handler = partial(_QuietHandler, directory=str(self.root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="fake-upstream", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None

"""Seed a server through its HTTP API: user, login token, indexes, and the generated packages.

Both servers get exactly the same requests in the same order. Uploads use
the legacy upload protocol as twine does, authenticated with a login token
(Basic auth), over kept-alive connections; the 10,000-project index is
filled by a few parallel sessions so that seeding is not the slow part of
the run.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.client import Session, basic_auth, expect, multipart, upload_fields
from bench.packages import Dist, make_sdist, make_wheel, wheel_filename, write_big_wheel

USER = "bench"
PASSWORD = "bench-password"
# Two levels of bases: the simple page is read through dev -> mid -> base.
BASE, MID, DEV = "base", "mid", "dev"
MANY = "many"
SIMPLE_PROJECT = "bench-simple"
DOWNLOAD_PROJECT = "bench-download"
BIG_UPLOAD_PROJECT = "bench-bigupload"
SMALL_UPLOAD_PROJECT = "bench-upload"
REQUIRES_PYTHON = ">=3.8"
SEED_WORKERS = 4


@dataclass(frozen=True)
class Plan:
    """Sizes of everything the run generates; --quick shrinks what dominates the run time."""

    quick: bool
    many_projects: int
    simple_versions: int = 100
    small_uploads: int = 200
    small_upload_bytes: int = 100 * 1000
    download_bytes: int = 50 * 1000 * 1000
    big_upload_bytes: int = 300 * 1000 * 1000

    @classmethod
    def full(cls) -> Plan:
        return cls(quick=False, many_projects=10_000)

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(quick=True, many_projects=1_000, small_uploads=100)

    def scaled(self, factor: float) -> Plan:
        """Tiny plans for debugging the harness (--scale)."""
        def s(n: int) -> int:
            return max(1, int(n * factor))
        return Plan(self.quick, s(self.many_projects), s(self.simple_versions), s(self.small_uploads),
                    self.small_upload_bytes, s(self.download_bytes), s(self.big_upload_bytes))


@dataclass(frozen=True)
class Corpus:
    """Everything uploaded, built once and sent identically to both servers."""

    simple: list[Dist]
    many: list[Dist]
    small: list[Dist]
    download_path: Path
    download_sha256: str
    download_filename: str
    big_path: Path
    big_sha256: str
    big_filename: str


def simple_versions(n: int) -> list[str]:
    return [f"1.{i}.0" for i in range(n)]


def many_project_name(i: int) -> str:
    return f"bench-proj-{i:05d}"


def build_corpus(plan: Plan, workdir: Path) -> Corpus:
    simple = []
    for version in simple_versions(plan.simple_versions):
        simple.append(make_sdist(SIMPLE_PROJECT, version, 512, REQUIRES_PYTHON))
        simple.append(make_wheel(SIMPLE_PROJECT, version, 512, REQUIRES_PYTHON))
    many = [make_wheel(many_project_name(i), "1.0") for i in range(plan.many_projects)]
    small = [make_wheel(SMALL_UPLOAD_PROJECT, f"1.0.{i}", plan.small_upload_bytes) for i in range(plan.small_uploads)]
    download_filename = wheel_filename(DOWNLOAD_PROJECT, "1.0")
    download_path = workdir / download_filename
    download_sha = write_big_wheel(download_path, DOWNLOAD_PROJECT, "1.0", plan.download_bytes)
    big_filename = wheel_filename(BIG_UPLOAD_PROJECT, "1.0")
    big_path = workdir / big_filename
    big_sha = write_big_wheel(big_path, BIG_UPLOAD_PROJECT, "1.0", plan.big_upload_bytes)
    return Corpus(simple, many, small, download_path, download_sha, download_filename, big_path, big_sha,
                  big_filename)


def file_path(index: str, sha256: str, filename: str) -> str:
    """Where both servers serve an uploaded file (model.md: +f/<h[0:3]>/<h[3:16]>/<name>)."""
    return f"/{USER}/{index}/+f/{sha256[:3]}/{sha256[3:16]}/{filename}"


# -- API calls -------------------------------------------------------------------------------


def create_user(session: Session) -> None:
    reply = session.json_request("PUT", f"/{USER}", {"password": PASSWORD})
    expect(reply, (201,), f"create user {USER}")


def login(session: Session, password: str = PASSWORD, user: str = USER) -> str:
    reply = expect(session.json_request("POST", "/+login", {"user": user, "password": password}), (200,),
                   f"login {user}")
    token = reply.json()["result"]["password"]
    assert isinstance(token, str)
    return token


def create_index(session: Session, auth: str, index: str, bases: Sequence[str] = (), volatile: bool = False) -> None:
    body = {"bases": [f"{USER}/{b}" for b in bases], "volatile": volatile}
    expect(session.json_request("PUT", f"/{USER}/{index}", body, auth=auth), (200,), f"create index {USER}/{index}")


def upload(session: Session, auth: str, index: str, dist: Dist) -> None:
    form = multipart(upload_fields(dist.name, dist.version, dist.filetype, dist.pyversion, dist.sha256,
                                   dist.requires_python), "content", dist.filename)
    body = form.with_content(dist.content)
    reply = session.request("POST", f"/{USER}/{index}/", body,
                            {"Content-Type": form.content_type, "Authorization": auth,
                             "Content-Length": str(len(body))})
    expect(reply, (200,), f"upload {dist.filename} to {USER}/{index}")


def upload_file(session: Session, auth: str, index: str, path: Path, name: str, version: str, sha256: str) -> None:
    """Stream a big wheel from disk (the harness never holds 300 MB in memory)."""
    form = multipart(upload_fields(name, version, "bdist_wheel", "py3", sha256), "content", path.name)
    size = path.stat().st_size
    reply = session.request("POST", f"/{USER}/{index}/", form.stream_file(path),
                            {"Content-Type": form.content_type, "Authorization": auth,
                             "Content-Length": str(form.length(size))})
    expect(reply, (200,), f"upload {path.name} to {USER}/{index}")


def upload_parallel(base_url: str, auth: str, index: str, dists: Sequence[Dist], workers: int = SEED_WORKERS,
                    progress: Callable[[int], None] | None = None) -> None:
    """Upload ``dists`` over ``workers`` kept-alive connections (bounded by the list's length)."""
    local = threading.local()
    sessions: list[Session] = []
    lock = threading.Lock()
    done = 0

    def one(dist: Dist) -> None:
        nonlocal done
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = Session(base_url)
            with lock:
                sessions.append(session)
        upload(session, auth, index, dist)
        with lock:
            done += 1
            if progress and done % 1000 == 0:
                progress(done)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, d) for d in dists]:
                future.result()
    finally:
        for session in sessions:
            session.close()


def wait_until_settled(base_url: str, timeout: float = 300.0) -> float | None:
    """Wait until the server's event processing has caught up with its last commit.

    devpi-server works through every committed serial in a background thread
    after the uploads; measuring before it is done would charge that work to
    the first measure. Returns the seconds waited, or None if it did not
    settle within ``timeout`` (or the server does not report it).
    """
    start = time.monotonic()
    with Session(base_url) as session:
        while time.monotonic() - start < timeout:
            reply = session.get("/+status", {"Accept": "application/json"})
            if reply.status != 200:
                return None
            status = reply.json()["result"]
            serial, events = status.get("serial"), status.get("event-serial")
            if not isinstance(serial, int) or not isinstance(events, int):
                return None
            if events >= serial:
                return time.monotonic() - start
            time.sleep(0.2)
    return None


@dataclass(frozen=True)
class Seeded:
    token: str
    download_path: str
    seconds: dict[str, float]


def seed(base_url: str, plan: Plan, corpus: Corpus, say: Callable[[str], None]) -> Seeded:
    """Create user, token, indexes (base <- mid <- dev, many) and upload the corpus."""
    seconds: dict[str, float] = {}
    with Session(base_url) as session:
        t0 = time.monotonic()
        create_user(session)
        token = login(session)
        auth = basic_auth(USER, token)
        create_index(session, auth, BASE)
        create_index(session, auth, MID, [BASE])
        create_index(session, auth, DEV, [MID])
        create_index(session, auth, MANY)
        seconds["user, login, indexes"] = time.monotonic() - t0

        t0 = time.monotonic()
        for dist in corpus.simple:
            upload(session, auth, BASE, dist)
        seconds[f"{len(corpus.simple)} files of {SIMPLE_PROJECT}"] = time.monotonic() - t0

        t0 = time.monotonic()
        upload_file(session, auth, BASE, corpus.download_path, DOWNLOAD_PROJECT, "1.0", corpus.download_sha256)
        seconds[f"{corpus.download_path.stat().st_size / 1e6:.0f} MB download file"] = time.monotonic() - t0
        download_path = file_path(BASE, corpus.download_sha256, corpus.download_filename)
        expect(session.request("HEAD", download_path), (200,), f"HEAD {download_path}")

    t0 = time.monotonic()
    upload_parallel(base_url, auth, MANY, corpus.many,
                    progress=lambda n: say(f"  {n}/{len(corpus.many)} projects uploaded"))
    seconds[f"{len(corpus.many)} projects ({SEED_WORKERS} parallel sessions)"] = time.monotonic() - t0
    settled = wait_until_settled(base_url)
    if settled is None:
        say("  event processing did not report catching up; measuring anyway")
    else:
        seconds["event processing caught up"] = settled
    return Seeded(token, download_path, seconds)

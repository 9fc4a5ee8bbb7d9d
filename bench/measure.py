"""The measures of issue 5, each adding rows to the results.

Every measure runs its servers interleaved (devpitx, devpi-server, [nginx],
devpitx, devpi-server, …) for each point, so that a slow moment of the shared
machine lands on both. A server that cannot answer a measure (an endpoint
not built yet, an error) gets an error cell and the run goes on.

To add a measure, write ``def measure_x(ctx: Context) -> None`` and list
it in ``MEASURES`` in run.py.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import HTTPFailure, Session, basic_auth, check_local
from bench.report import DEVPI, DEVPITX, NGINX, NOT_BUILT, Results, Row, Target
from bench.seed import (
    BIG_UPLOAD_PROJECT,
    DEV,
    MANY,
    PASSWORD,
    SIMPLE_PROJECT,
    USER,
    Corpus,
    Plan,
    Seeded,
    create_index,
    login,
    upload,
    upload_file,
)
from bench.servers import (
    DEVPITX_PYTHON,
    REPO,
    ROOT_PASSWORD,
    Memory,
    Nginx,
    Server,
    clean_env,
    memory_of,
    reset_peak,
)
from bench.upstream import ROOT_PROJECT, TREE, WHEEL_PAYLOAD_BYTES, Upstream, tree_dists, write_tree
from bench.wrk import WrkError, WrkResult, run_wrk

MIB = 1 << 20
# What pip sends (spec/clients.md §2); an installer User-Agent gets the installer pages, no redirects.
PIP_UA = 'pip/24.0 {"installer":{"name":"pip","version":"24.0"}}'
PIP_JSON = {"Accept": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
                      "text/html; q=0.01", "User-Agent": PIP_UA}
PIP_HTML = {"Accept": "text/html", "User-Agent": PIP_UA}
API_JSON = {"Accept": "application/json"}
DOWNLOAD_HEADERS = {"User-Agent": PIP_UA}


@dataclass
class Context:
    plan: Plan
    corpus: Corpus
    servers: dict[str, Server]
    seeded: dict[str, Seeded]
    results: Results
    rounds: int
    duration_s: float
    concurrencies: tuple[int, ...]
    wrk_exe: str
    say: Callable[[str], None]
    workdir: Path
    nginx: Nginx | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    def contestants(self) -> list[str]:
        return [name for name in (DEVPITX, DEVPI) if name in self.servers]

    def url(self, name: str) -> str:
        if name == NGINX:
            assert self.nginx is not None
            return self.nginx.url
        return self.servers[name].url

    def interleaved(self, names: list[str]) -> Iterator[tuple[int, str]]:
        """(round, server) in the order A B [N] A B [N] …"""
        for r in range(self.rounds):
            for name in names:
                yield r, name

    def usable(self, row: Row, names: list[str]) -> list[str]:
        """The servers that can take part; the others get the reason as their cell."""
        ok = []
        for name in names:
            if name in self.unavailable:
                row.fail(name, self.unavailable[name])
            else:
                ok.append(name)
        return ok


# -- GET measures with wrk ----------------------------------------------------------------------


def probe(ctx: Context, name: str, path: str, headers: Mapping[str, str]) -> bytes:
    """One GET before loading a URL with wrk: it must answer 200, or wrk would measure error pages."""
    with Session(ctx.url(name)) as session:
        reply = session.get(path, headers)
    if reply.status != 200:
        raise HTTPFailure(f"HTTP {reply.status}")
    return reply.body


def _wrk(ctx: Context, url: str, connections: int, headers: Mapping[str, str], duration: float) -> WrkResult:
    result = run_wrk(url, connections, duration, headers, exe=ctx.wrk_exe)
    if result.errors:
        raise WrkError(f"{result.non_2xx} non-2xx, socket errors {dict(result.socket_errors)}")
    return result


def load_get(ctx: Context, rows: Mapping[str, Row], path_of: Mapping[str, str], headers: Mapping[str, str],
             connections: int, extract: Mapping[str, Callable[[WrkResult], float]], warm_up: bool = True) -> None:
    """wrk every usable server on its URL, interleaved; ``extract`` maps row keys to values of a run."""
    any_row = next(iter(rows.values()))
    names = [n for n in ctx.usable(any_row, list(path_of)) if not any(n in r.errors for r in rows.values())]
    for name in names if warm_up else ():  # not recorded: caches, lazy imports, first-use costs
        try:
            run_wrk(ctx.url(name) + path_of[name], connections, 1, headers, exe=ctx.wrk_exe)
        except WrkError:
            pass
    for _, name in ctx.interleaved(names):
        if any(name in r.errors for r in rows.values()):
            continue
        try:
            result = _wrk(ctx, ctx.url(name) + path_of[name], connections, headers, ctx.duration_s)
        except (WrkError, OSError) as exc:
            for row in rows.values():
                row.fail(name, str(exc)[:200])
            continue
        for key, fn in extract.items():
            rows[key].add(name, fn(result))


def _probe_all(ctx: Context, rows: list[Row], path: str, headers: Mapping[str, str]) -> dict[str, bytes]:
    bodies = {}
    for name in ctx.usable(rows[0], ctx.contestants()):
        try:
            bodies[name] = probe(ctx, name, path, headers)
        except (HTTPFailure, OSError) as exc:
            for row in rows:
                row.fail(name, str(exc))
    return bodies


def measure_simple_page(ctx: Context) -> None:
    """1. Project page with N versions × 2 files through dev -> mid -> base, HTML and JSON."""
    path = f"/{USER}/{DEV}/+simple/{SIMPLE_PROJECT}/"
    files = 2 * ctx.plan.simple_versions
    for fmt, headers, static in (("HTML", PIP_HTML, "simple.html"), ("JSON", PIP_JSON, "simple.json")):
        rows_by_c = {}
        for c in ctx.concurrencies:
            prefix = f"simple.{fmt.lower()}.c{c}"
            label = f"simple page {fmt} ({files} files, 2 levels of bases), c={c}"
            rows_by_c[c] = {
                "rps": ctx.results.row(f"{prefix}.rps", f"{label}: requests/s", "req/s",
                                       [Target("ratio>=", 10)] if c == 10 else []),
                "p50": ctx.results.row(f"{prefix}.p50", f"{label}: p50", "ms"),
                "p99": ctx.results.row(f"{prefix}.p99", f"{label}: p99", "ms",
                                       [Target("ratio<=", 0.1)] if c == 64 else []),
            }
        all_rows = [r for rows in rows_by_c.values() for r in rows.values()]
        bodies = _probe_all(ctx, all_rows, path, headers)
        paths = {name: path for name in bodies}
        if ctx.nginx is not None and bodies:
            # nginx serves the very bytes devpitx produced (devpi-server's if devpitx could not).
            body = bodies.get(DEVPITX) or bodies[DEVPI]
            (ctx.nginx.root / static).write_bytes(body)
            paths[NGINX] = "/" + static
        ctx.say(f"simple page {fmt}: {', '.join(f'{n} {len(b):,} bytes' for n, b in bodies.items())}")
        for i, (c, rows) in enumerate(rows_by_c.items()):
            load_get(ctx, rows, paths, headers, c, {
                "rps": lambda r: r.requests_per_s,
                "p50": lambda r: r.latency_ms(50),
                "p99": lambda r: r.latency_ms(99),
            }, warm_up=i == 0)


def measure_project_list(ctx: Context) -> None:
    """2. ``+simple/`` of an index with N projects: latency and bytes, one client."""
    n = ctx.plan.many_projects
    path = f"/{USER}/{MANY}/+simple/"
    for fmt, headers in (("HTML", PIP_HTML), ("JSON", PIP_JSON)):
        label = f"project list of {n:,} projects {fmt}, c=1"
        rows = {
            "p50": ctx.results.row(f"list.{fmt.lower()}.p50", f"{label}: p50", "ms", [Target("ratio<=", 0.1)]),
            "p99": ctx.results.row(f"list.{fmt.lower()}.p99", f"{label}: p99", "ms"),
        }
        size_row = ctx.results.row(f"list.{fmt.lower()}.bytes", f"project list of {n:,} projects {fmt}: size",
                                   "KiB")
        bodies = _probe_all(ctx, [*rows.values(), size_row], path, headers)
        for name, body in bodies.items():
            size_row.add(name, len(body) / 1024)
        load_get(ctx, rows, {name: path for name in bodies}, headers, 1,
                 {"p50": lambda r: r.latency_ms(50), "p99": lambda r: r.latency_ms(99)})


def measure_project_json(ctx: Context) -> None:
    """1b. The project's JSON view (``GET /U/I/P``, Accept: application/json) through the bases."""
    path = f"/{USER}/{DEV}/{SIMPLE_PROJECT}"
    label = f"project JSON (GET /{USER}/{DEV}/{SIMPLE_PROJECT}, {ctx.plan.simple_versions} versions), c=1"
    rows = {
        "p50": ctx.results.row("projectjson.p50", f"{label}: p50", "ms", [Target("ratio<=", 0.1)]),
        "p99": ctx.results.row("projectjson.p99", f"{label}: p99", "ms"),
    }
    bodies = _probe_all(ctx, list(rows.values()), path, API_JSON)
    load_get(ctx, rows, {name: path for name in bodies}, API_JSON, 1,
             {"p50": lambda r: r.latency_ms(50), "p99": lambda r: r.latency_ms(99)})


def measure_download(ctx: Context) -> None:
    """3. Download of the big file: MiB/s with 1 and 8 connections."""
    size_mb = ctx.corpus.download_path.stat().st_size / 1e6
    paths = {name: ctx.seeded[name].download_path for name in ctx.contestants() if name in ctx.seeded}
    if ctx.nginx is not None:
        target = ctx.nginx.root / "download.whl"
        if not target.exists():
            target.hardlink_to(ctx.corpus.download_path)
        paths[NGINX] = "/download.whl"
    for i, c in enumerate((1, 8)):
        row = ctx.results.row(f"download.c{c}", f"download of a {size_mb:.0f} MB file, c={c}", "MiB/s",
                              [Target("ratio>=", 1.0), Target("nginx>=", 0.6)])
        for name in ctx.contestants():
            if name not in paths and name not in ctx.unavailable:
                row.fail(name, "not seeded")
        usable = {n: p for n, p in paths.items() if n == NGINX or n in ctx.usable(row, [n])}
        load_get(ctx, {"mibs": row}, usable, DOWNLOAD_HEADERS, c, {"mibs": lambda r: r.bytes_per_s / MIB},
                 warm_up=i == 0)


# -- uploads -------------------------------------------------------------------------------------


def measure_small_uploads(ctx: Context) -> None:
    """4a. N uploads of 100 KB, one client as twine: with the password on every request, and with a token."""
    n = len(ctx.corpus.small)
    kb = ctx.plan.small_upload_bytes / 1000
    for kind in ("password", "token"):
        row = ctx.results.row(
            f"upload.small.{kind}", f"{n} uploads of {kb:.0f} KB, Basic auth with {kind}", "files/s",
            [Target("ratio>=", 4.0)] if kind == "password" else [],
            note="twine sends the password with every upload" if kind == "password" else "")
        for r, name in ctx.interleaved(ctx.usable(row, ctx.contestants())):
            index = f"up-{kind}-{r}"
            try:
                with Session(ctx.url(name)) as session:
                    token_auth = basic_auth(USER, ctx.seeded[name].token)
                    create_index(session, token_auth, index)
                    auth = basic_auth(USER, PASSWORD) if kind == "password" else token_auth
                    t0 = time.monotonic()
                    for dist in ctx.corpus.small:
                        upload(session, auth, index, dist)
                    row.add(name, n / (time.monotonic() - t0))
            except (HTTPFailure, OSError) as exc:
                row.fail(name, str(exc)[:200])


class RssSampler:
    """Samples the RSS of a process tree every few milliseconds, in a thread, bounded by stop()."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self._pid = pid
        self._interval = interval_s
        self._stop = threading.Event()
        self.max_tree_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_tree_bytes = max(self.max_tree_bytes, memory_of(self._pid).tree_rss_bytes)
            self._stop.wait(self._interval)


def measure_big_upload(ctx: Context) -> None:
    """4b. One big upload: seconds, and how much it adds to the server's peak RSS."""
    size_mb = ctx.corpus.big_path.stat().st_size / 1e6
    time_row = ctx.results.row("upload.big.seconds", f"upload of one {size_mb:.0f} MB file", "s",
                               [Target("ratio<=", 1.0)])
    rss_row = ctx.results.row("upload.big.rss", f"upload of one {size_mb:.0f} MB file: added peak RSS", "MiB",
                              [Target("devpitx<=", 32)],
                              note="VmHWM after the upload minus VmRSS before (peak reset via clear_refs)")
    for r, name in ctx.interleaved(ctx.usable(time_row, ctx.contestants())):
        server = ctx.servers[name]
        index = f"big-{r}"
        try:
            with Session(server.url, timeout=600) as session:
                auth = basic_auth(USER, ctx.seeded[name].token)
                create_index(session, auth, index)
                time.sleep(0.5)  # let the index creation's garbage settle before the baseline
                before = memory_of(server.pid)
                exact = reset_peak(server.pid)
                with RssSampler(server.pid) as sampler:
                    t0 = time.monotonic()
                    upload_file(session, auth, index, ctx.corpus.big_path, BIG_UPLOAD_PROJECT, "1.0",
                                ctx.corpus.big_sha256)
                    seconds = time.monotonic() - t0
                after = memory_of(server.pid)
        except (HTTPFailure, OSError) as exc:
            time_row.fail(name, str(exc)[:200])
            rss_row.fail(name, str(exc)[:200])
            continue
        time_row.add(name, seconds)
        added_main = (after.peak_bytes if exact else sampler.max_tree_bytes) - before.rss_bytes
        added_tree = sampler.max_tree_bytes - before.tree_rss_bytes
        rss_row.add(name, max(added_main, added_tree, 0) / MIB)


# -- memory and start-up ---------------------------------------------------------------------------


def measure_memory_after_workload(ctx: Context) -> None:
    """5a. RSS of each server (with its child processes) after everything above."""
    row = ctx.results.row("rss.after_workload", "server RSS after the whole workload", "MiB",
                          [Target("devpitx<", 300)], note="main process plus children")
    for name in ctx.usable(row, ctx.contestants()):
        server = ctx.servers[name]
        if not server.alive():
            row.fail(name, "server exited")
            continue
        row.add(name, server.memory().tree_rss_bytes / MIB)


def measure_startup(ctx: Context) -> None:
    """5b. Stop each server, start it again on its (now full) server directory: time to first answer, RSS at rest."""
    n = ctx.plan.many_projects
    time_row = ctx.results.row("startup.seconds", f"start-up with {n:,} projects (spawn to first /+api answer)",
                               "s", [Target("devpitx<", 1.0)],
                               note="includes each server's start-up work on its secret (argon2 key derivation "
                                    "with the server's parameters; devpi-server derives at every start)")
    rss_row = ctx.results.row("startup.rss", f"RSS at rest after start-up with {n:,} projects", "MiB",
                              note="main process plus children, 1 s after the first answer")
    names = ctx.usable(time_row, ctx.contestants())
    for name in names:
        ctx.servers[name].stop()
    for _, name in ctx.interleaved(names):
        server = ctx.servers[name]
        try:
            seconds = server.start()
            time.sleep(1.0)
            memory: Memory = server.memory()
        except RuntimeError as exc:
            time_row.fail(name, str(exc)[:200])
            continue
        finally:
            server.stop()
        time_row.add(name, seconds)
        rss_row.add(name, memory.tree_rss_bytes / MIB)


# -- not built yet -------------------------------------------------------------------------------


def feature_exists(module_path: str) -> bool:
    """Whether devpitx has a module yet (the mirror and replica measures wait for theirs)."""
    return (REPO / module_path).exists()


def pip_install(index_url: str, target: Path, requirement: str) -> float:
    """``pip install`` into an empty target directory from ``index_url`` only; returns seconds.

    ``--isolated`` and an empty config file keep the machine's pip
    configuration (extra indexes, find-links, caches) out of the measure.
    """
    check_local(index_url)
    argv = [str(DEVPITX_PYTHON), "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input",
            "install", "--no-cache-dir", "--only-binary", ":all:", "--target", str(target),
            "--index-url", index_url, requirement]
    env = {**clean_env(), "PIP_CONFIG_FILE": os.devnull}
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise HTTPFailure(f"pip exited {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}")
    installed = sorted(p.name for p in target.glob("*.dist-info"))
    if len(installed) != len(TREE):
        raise HTTPFailure(f"pip installed {installed}, expected {len(TREE)} distributions")
    return seconds


def measure_mirror(ctx: Context) -> None:
    """6. Cold and warm ``pip install`` of a small dependency tree through a mirror index of a local upstream.

    Each round gets a new mirror index (root/pypi, then root/pypi1, …), so
    "cold" really finds nothing cached; "warm" repeats the install into a new
    target directory right after.
    """
    n = len(TREE)
    note = (f"{n} wheels of {WHEEL_PAYLOAD_BYTES // 1000} KB from a fake upstream on 127.0.0.1; "
            "includes pip's own run time")
    cold = ctx.results.row("mirror.cold", f"pip install of a {n}-package tree through root/pypi, cold", "s",
                           note=note)
    warm = ctx.results.row("mirror.warm", f"pip install of a {n}-package tree through root/pypi, warm", "s")
    names = ctx.usable(cold, ctx.contestants())
    ctx.usable(warm, ctx.contestants())
    if DEVPITX in names and not feature_exists("devpitx/mirror/upstream.py"):
        for row in (cold, warm):
            row.fail(DEVPITX, NOT_BUILT)
        names.remove(DEVPITX)
    if not names:
        return
    upstream = Upstream(ctx.workdir / "upstream")
    write_tree(upstream.root, tree_dists())
    upstream.start()
    root_tokens: dict[str, str] = {}
    try:
        # The floor: the same install straight from the upstream, without any index server between.
        floor = statistics.median(
            pip_install(upstream.simple_url, ctx.workdir / f"pip-direct-{r}", ROOT_PROJECT) for r in range(2))
        cold.note = f"{note}; pip straight from the upstream takes {floor:.2f} s"
        for r, name in ctx.interleaved(names):
            if name in cold.errors:
                continue
            index = "pypi" if r == 0 else f"pypi{r}"
            try:
                with Session(ctx.url(name)) as session:
                    if name not in root_tokens:
                        root_tokens[name] = login(session, ROOT_PASSWORD, user="root")
                    reply = session.json_request("PUT", f"/root/{index}",
                                                 {"type": "mirror", "mirror_url": upstream.simple_url},
                                                 auth=basic_auth("root", root_tokens[name]))
                    if reply.status != 200:
                        raise HTTPFailure(f"create mirror index: {reply.describe()}")
                index_url = f"{ctx.url(name)}/root/{index}/+simple/"
                cold_s = pip_install(index_url, ctx.workdir / f"pip-{name}-{r}-cold", ROOT_PROJECT)
                warm_s = pip_install(index_url, ctx.workdir / f"pip-{name}-{r}-warm", ROOT_PROJECT)
            except (HTTPFailure, OSError, subprocess.SubprocessError) as exc:
                for row in (cold, warm):
                    row.fail(name, str(exc)[:200])
                continue
            cold.add(name, cold_s)
            warm.add(name, warm_s)
    finally:
        upstream.stop()

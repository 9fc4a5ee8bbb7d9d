"""Side-by-side benchmark of devpitx against devpi-server: ``python bench/run.py [--quick]``.

Installs the newest devpi-server into bench/.venv-devpi-server (pip, by
name), makes sure wrk (and optionally nginx) is there, starts both servers
on 127.0.0.1 with fresh server directories, seeds both with the same
generated packages, runs the measures interleaved, prints one table,
writes bench/results/<timestamp>.json and regenerates the table in
docs/performance.md. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

if __package__ in (None, ""):
    # Run as a script (python bench/run.py): make ``bench`` importable as a package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers  # noqa: E402
from bench.measure import (  # noqa: E402
    Context,
    measure_big_upload,
    measure_download,
    measure_memory_after_workload,
    measure_mirror,
    measure_project_json,
    measure_project_list,
    measure_simple_page,
    measure_small_uploads,
    measure_startup,
)
from bench.replication import measure_replication  # noqa: E402
from bench.report import (  # noqa: E402
    DEVPI,
    DEVPITX,
    Results,
    render_notes,
    render_summary,
    render_table,
    update_doc,
    write_json,
)
from bench.seed import Plan, Seeded, build_corpus, seed  # noqa: E402

# Order matters: the big upload, start-up and replication come late because they change the
# servers' memory and stop or restart them; memory after the workload is read before the restarts,
# and everything that needs the seeded servers running comes before start-up.
MEASURES: dict[str, Callable[[Context], None]] = {
    "simple": measure_simple_page,
    "list": measure_project_list,
    "projectjson": measure_project_json,
    "download": measure_download,
    "upload": measure_small_uploads,
    "mirror": measure_mirror,
    "bigupload": measure_big_upload,
    "memory": measure_memory_after_workload,
    "startup": measure_startup,
    "replication": measure_replication,
}
RESULTS_DIR = servers.BENCH_DIR / "results"
DOC_PATH = servers.REPO / "docs" / "performance.md"


@dataclass(frozen=True)
class Preset:
    rounds: int
    wrk_seconds: float
    concurrencies: tuple[int, ...]


QUICK = Preset(rounds=2, wrk_seconds=2.0, concurrencies=(1, 10, 64))
FULL = Preset(rounds=2, wrk_seconds=10.0, concurrencies=(1, 10, 16, 64))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1,000 instead of 10,000 projects, 100 instead of 200 small uploads, 2 s instead of 10 s "
                        "per wrk run, concurrencies 1/10/64 (under 10 minutes)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per measure point (default 2)")
    p.add_argument("--duration", type=float, help="seconds per wrk run")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply counts and file sizes (e.g. 0.01 to debug the harness in seconds)")
    p.add_argument("--only", default="", help=f"comma list of measures to run ({','.join(MEASURES)})")
    p.add_argument("--servers", default=f"{DEVPITX},{DEVPI}", help="comma list: devpitx, devpi-server")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx static-file reference")
    p.add_argument("--fast-argon2", action="store_true",
                   help="tiny argon2 parameters for both servers' secret derivation (default: their defaults)")
    p.add_argument("--no-upgrade", action="store_true",
                   help="keep the devpi-server already in bench/.venv-devpi-server instead of upgrading it")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, sample devpitx with py-spy on the hot paths (installs py-spy into bench/.venv-tools)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    p.add_argument("--doc-note", default="", help="text placed above the table in docs/performance.md")
    p.add_argument("--workdir", type=Path, help="where server directories go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, server directories)")
    args = p.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(MEASURES)
    if unknown:
        p.error(f"unknown measures: {', '.join(sorted(unknown))}")
    names = [s for s in args.servers.split(",") if s]
    if not names or set(names) - {DEVPITX, DEVPI}:
        p.error("--servers takes devpitx and/or devpi-server")
    return args


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _terminate(signum: int, frame: Any) -> NoReturn:
    # Turn SIGTERM into an exception so that the finally blocks stop the servers we started.
    raise SystemExit(128 + signum)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(servers.REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(servers.REPO), "status", "--porcelain", "--", "devpitx"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return out.stdout.strip() + (" (+ uncommitted changes in devpitx/)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB RAM, " \
           f"Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    preset = QUICK if args.quick else FULL
    plan = Plan.quick_plan() if args.quick else Plan.full()
    if args.scale != 1.0:
        plan = plan.scaled(args.scale)
    rounds = args.rounds or preset.rounds
    duration = args.duration or preset.wrk_seconds
    concurrencies = preset.concurrencies
    wanted = [n for n in args.servers.split(",") if n]
    only = [m for m in args.only.split(",") if m] or list(MEASURES)
    started = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    say(f"{'quick' if plan.quick else 'full'} run: {plan}, rounds={rounds}, wrk {duration:g} s per point, "
        f"concurrencies {concurrencies}")
    if plan.quick:
        say(f"QUICK MODE: {plan.many_projects:,} projects instead of 10,000 and {duration:g} s wrk runs; "
            "figures are indicative only")

    wrk_exe = servers.ensure_wrk()
    nginx_exe = None if args.no_nginx else servers.ensure_nginx(install=True)
    devpi_version = servers.ensure_devpi_server(upgrade=not args.no_upgrade) if DEVPI in wanted else None
    if DEVPITX in wanted and not servers.DEVPITX_PYTHON.exists():
        raise SystemExit(f"{servers.DEVPITX_PYTHON} is missing: create the project venv first (README.md)")
    if DEVPITX in wanted:
        servers.compile_devpitx_bytecode()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="devpitx-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"work directory {workdir}")
    argon2 = servers.FAST_ARGON2 if args.fast_argon2 else ()
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": plan.quick,
        "devpitx": git_revision(),
        "devpi-server": devpi_version,
        "machine": machine(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": rounds,
        "parameters": {"many_projects": plan.many_projects, "simple_versions": plan.simple_versions,
                       "small_uploads": plan.small_uploads, "small_upload_bytes": plan.small_upload_bytes,
                       "download_bytes": plan.download_bytes, "big_upload_bytes": plan.big_upload_bytes,
                       "wrk_seconds": duration, "wrk_threads": 1, "concurrencies": list(concurrencies)},
        "argon2": "tiny (8 KiB, 1, 1) for both" if argon2 else "each server's defaults",
    }
    results = Results(meta)
    running: list[servers.Server] = []
    nginx: servers.Nginx | None = None
    try:
        say("building the package corpus")
        corpus = build_corpus(plan, workdir)
        ctx_servers: dict[str, servers.Server] = {}
        if DEVPITX in wanted:
            ctx_servers[DEVPITX] = servers.devpitx_server(workdir, servers.free_port(), argon2)
        if DEVPI in wanted:
            ctx_servers[DEVPI] = servers.devpi_server(workdir, servers.free_port(), argon2)
        seeded: dict[str, Seeded] = {}
        unavailable: dict[str, str] = {}
        for name, server in ctx_servers.items():
            try:
                if name == DEVPI:
                    servers.init_devpi_server(server)
                say(f"starting {name}")
                running.append(server)
                server.start()
                say(f"{name} ready on {server.url} (pid {server.pid}) in {server.ready_seconds:.2f} s; seeding")
                seeded[name] = seed(server.url, plan, corpus, say)
                for what, secs in seeded[name].seconds.items():
                    say(f"  {name}: {what}: {secs:.1f} s")
            except Exception as exc:  # noqa: BLE001 - one broken server must not stop the other's figures
                unavailable[name] = f"{type(exc).__name__}: {str(exc)[:150]}"
                say(f"{name} unavailable: {unavailable[name]}")
        meta["seeding_seconds"] = {name: s.seconds for name, s in seeded.items()}
        if nginx_exe:
            nginx = servers.Nginx(nginx_exe, workdir / "nginx", servers.free_port())
            nginx.start()
            say(f"nginx on {nginx.url} (pid {nginx.proc.pid if nginx.proc else '?'})")
        ctx = Context(plan, corpus, ctx_servers, seeded, results, rounds, duration, concurrencies, wrk_exe, say,
                      workdir, nginx=nginx, unavailable=unavailable)
        for key, fn in MEASURES.items():
            if key not in only:
                continue
            say(f"measure: {key}")
            t0 = time.monotonic()
            try:
                fn(ctx)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next measure
                say(f"measure {key} failed: {type(exc).__name__}: {exc}")
                meta.setdefault("notes", []).append(f"measure {key} failed: {type(exc).__name__}: {exc}")
            say(f"measure {key} took {time.monotonic() - t0:.0f} s")
        if args.profile and DEVPITX in ctx_servers and DEVPITX not in unavailable:
            from bench.profile import profile_devpitx

            meta["profiles"] = profile_devpitx(ctx, RESULTS_DIR, stamp)
    finally:
        for server in running:
            server.stop()
        if nginx is not None:
            nginx.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            say(f"kept {workdir}")
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["duration_s"] = round(time.monotonic() - started)

    json_path = RESULTS_DIR / f"{stamp}{'-quick' if plan.quick else ''}.json"
    write_json(json_path, results)
    print()
    print(render_table(results))
    print()
    print(render_notes(results))
    print()
    print(render_summary(results))
    for text in results.meta.get("profiles", {}).values():
        print()
        print(text)
    say(f"results written to {json_path.relative_to(servers.REPO)}; run took {meta['duration_s']} s")
    if not args.no_docs and set(wanted) == {DEVPITX, DEVPI} and only == list(MEASURES):
        update_doc(DOC_PATH, results, args.doc_note)
        say(f"table regenerated in {DOC_PATH.relative_to(servers.REPO)}")
    elif not args.no_docs:
        say("partial run (--only/--servers): docs/performance.md left unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

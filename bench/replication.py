"""Measure 7: replication lag and the catch-up of a fresh replica, for each server against its own kind.

Each primary (restarted with ``--role primary``: replication must be asked
for) gets a fresh replica started from serial 0 on the same secret file. The
replica's ``/+status`` is polled until its serial reaches the primary's
(metadata caught up) and until ``replica-in-sync-at`` is set (files too);
then its RSS is read. With the replica in sync, small uploads go to the
primary one by one, alternating between the two servers, and the replica's
simple page is polled until the new file appears: that delay is the lag.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from bench.client import HTTPFailure, Session, basic_auth
from bench.measure import MIB, PIP_JSON, Context, feature_exists
from bench.packages import make_wheel
from bench.report import DEVPITX, NOT_BUILT, Row, Target
from bench.seed import PASSWORD, USER, create_index, login, upload
from bench.servers import (
    Server,
    as_primary,
    devpi_replica,
    devpitx_replica,
    free_port,
    init_devpi_server,
)

LAG_INDEX = "repl"
LAG_PROJECT = "bench-repl"
LAG_POLL_S = 0.001
LAG_TIMEOUT_S = 30.0
STATUS_POLL_S = 0.25


def _status(session: Session) -> dict[str, Any]:
    reply = session.get("/+status", {"Accept": "application/json"})
    if reply.status != 200:
        raise HTTPFailure(f"/+status: {reply.describe()}")
    result = reply.json()["result"]
    assert isinstance(result, dict)
    return result


def wait_for_catch_up(replica: Server, target_serial: int, timeout: float) -> tuple[float, float]:
    """Seconds from the replica's spawn until metadata, and until files, are in sync (bounded)."""
    meta_s: float | None = None
    with Session(replica.url) as session:
        while time.monotonic() - replica.started_at < timeout:
            if not replica.alive():
                raise HTTPFailure("replica exited")
            status = _status(session)
            now = time.monotonic() - replica.started_at
            serial = status.get("serial")
            if meta_s is None and isinstance(serial, int) and serial >= target_serial:
                meta_s = now
            if meta_s is not None and status.get("replica-in-sync-at") is not None:
                return meta_s, now
            time.sleep(STATUS_POLL_S)
    raise HTTPFailure(f"not caught up after {timeout:.0f} s"
                      + (" (metadata was)" if meta_s is not None else ""))


def measure_lag(primary: Session, replica: Session, auth: str, version: str) -> float:
    """Upload one small file to the primary; seconds until the replica's page lists it."""
    dist = make_wheel(LAG_PROJECT, version, 1000)
    page = f"/{USER}/{LAG_INDEX}/+simple/{LAG_PROJECT}/"
    upload(primary, auth, LAG_INDEX, dist)
    t0 = time.monotonic()
    while time.monotonic() - t0 < LAG_TIMEOUT_S:
        reply = replica.get(page, PIP_JSON)
        if reply.status == 200 and dist.filename.encode() in reply.body:
            return time.monotonic() - t0
        time.sleep(LAG_POLL_S)
    raise HTTPFailure(f"{dist.filename} not on the replica after {LAG_TIMEOUT_S:.0f} s")


def measure_replication(ctx: Context) -> None:
    """7. Lag p50/p99, catch-up of a fresh replica (metadata; files), replica RSS."""
    lag_uploads = 20 if ctx.plan.quick else 100
    timeout = 240.0 if ctx.plan.quick else 900.0
    lag50 = ctx.results.row("replication.lag.p50", f"replication lag p50 ({lag_uploads} uploads)", "ms",
                            [Target("devpitx<=", 20)],
                            note="upload answered by the primary -> file listed on the replica's simple page")
    lag99 = ctx.results.row("replication.lag.p99", f"replication lag p99 ({lag_uploads} uploads)", "ms")
    meta = ctx.results.row("replication.catchup.meta", "fresh replica catch-up from serial 0: metadata", "s",
                           [Target("ratio<=", 0.1)])
    files = ctx.results.row("replication.catchup.files", "fresh replica catch-up from serial 0: metadata and files",
                            "s", [Target("ratio<=", 0.1)],
                            note="one replica per server (not repeated); counted from the replica's spawn, so it "
                                 "includes start-up and the secret key derivations with each server's argon2 "
                                 "parameters")
    rss = ctx.results.row("replication.rss", "replica RSS after catch-up", "MiB", [Target("devpitx<", 200)])
    rows: list[Row] = [lag50, lag99, meta, files, rss]
    names = ctx.usable(lag50, ctx.contestants())
    for row in rows[1:]:
        ctx.usable(row, ctx.contestants())
    if DEVPITX in names and not feature_exists("devpitx/replica/puller.py"):
        for row in rows:
            row.fail(DEVPITX, NOT_BUILT)
        names.remove(DEVPITX)
    started: list[Server] = []
    pairs: dict[str, tuple[Server, Server]] = {}
    try:
        for name in names:
            base = ctx.servers[name]
            base.stop()  # stopped by the start-up measure already, unless it was skipped
            primary = as_primary(base)
            started.append(primary)
            primary.start()
            with Session(primary.url) as session:
                target = _status(session)["serial"]
            if name == DEVPITX:
                replica = devpitx_replica(ctx.workdir, free_port(), primary.url)
            else:
                replica = devpi_replica(ctx.workdir, free_port(), primary.url)
                init_devpi_server(replica, replica_of=primary.url)
            ctx.say(f"{name}: fresh replica catching up on {target:,} serials")
            started.append(replica)
            try:
                replica.start()
                meta_s, files_s = wait_for_catch_up(replica, target, timeout)
            except (HTTPFailure, RuntimeError, OSError) as exc:
                for row in rows:
                    row.fail(name, str(exc)[:200])
                continue
            meta.add(name, meta_s)
            files.add(name, files_s)
            rss.add(name, replica.memory().tree_rss_bytes / MIB)
            pairs[name] = (primary, replica)
        lags: dict[str, list[float]] = {name: [] for name in pairs}
        sessions = {name: (Session(p.url), Session(r.url)) for name, (p, r) in pairs.items()}
        try:
            auths = {}
            for name, (primary_session, _) in sessions.items():
                auths[name] = basic_auth(USER, login(primary_session, PASSWORD))
                create_index(primary_session, auths[name], LAG_INDEX)
            for i in range(lag_uploads):
                for name in list(lags):
                    primary_session, replica_session = sessions[name]
                    try:
                        lags[name].append(measure_lag(primary_session, replica_session, auths[name], f"1.0.{i}"))
                    except (HTTPFailure, OSError) as exc:
                        lag50.fail(name, str(exc)[:200])
                        lag99.fail(name, str(exc)[:200])
                        del lags[name]
        finally:
            for pair in sessions.values():
                for session in pair:
                    session.close()
        for name, values in lags.items():
            lag50.add(name, statistics.median(values) * 1000)
            lag99.add(name, statistics.quantiles(values, n=100, method="inclusive")[98] * 1000)
    finally:
        for server in reversed(started):
            server.stop()


"""``--profile``: where devpitx spends its time on the hot paths, sampled with py-spy.

Issue 5 asks for a profile of the hot path wherever a target is missed.
After the measures, devpitx is started again on its full server directory
*under* py-spy (attaching to a running process is not possible in every
sandbox; launching always is), one scenario is driven, the server is
stopped, and py-spy's collapsed stacks are summarised by self and inclusive
time. py-spy is installed by name with pip into bench/.venv-tools.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.client import Session, basic_auth
from bench.measure import PIP_HTML, PIP_JSON, Context
from bench.report import DEVPITX
from bench.seed import DEV, MANY, PASSWORD, SIMPLE_PROJECT, USER, create_index, upload
from bench.servers import BENCH_DIR, STOP_TIMEOUT_SECONDS, Server, descendants, venv_python
from bench.wrk import WrkError, run_wrk

TOOLS_VENV = BENCH_DIR / ".venv-tools"
PY_SPY = TOOLS_VENV / "bin" / "py-spy"
SAMPLES_PER_S = 250
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def ensure_py_spy() -> Path:
    if not PY_SPY.exists():
        if not (TOOLS_VENV / "bin" / "python").exists():
            subprocess.run([venv_python(), "-m", "venv", str(TOOLS_VENV)], check=True, timeout=300)
        print("installing py-spy with pip", flush=True)
        subprocess.run([str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "py-spy"], check=True, timeout=900)
    return PY_SPY


@dataclass(frozen=True)
class Summary:
    samples: int
    self_top: list[tuple[str, float]]  # (function, share of samples)
    inclusive_top: list[tuple[str, float]]

    def render(self, title: str) -> str:
        lines = [f"{title}: {self.samples} samples while serving (idle excluded)", "  self time:"]
        lines += [f"    {share:6.1%}  {func}" for func, share in self.self_top]
        lines.append("  inclusive time, devpitx functions:")
        lines += [f"    {share:6.1%}  {func}" for func, share in self.inclusive_top]
        return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: lines vary, the function is what counts."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = Path(path).parts
    # Keep the package context for our own code and for libraries, drop site-packages prefixes.
    for anchor in ("devpitx", "twisted", "klein", "werkzeug", "json", "http"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor):])
            break
    else:
        path = Path(path).name
    return f"{m.group('func')} ({path})"


def _serving(frames: list[str]) -> bool:
    """False for the main thread's start-up (imports, makeService) before the reactor loop runs."""
    return not frames[0].startswith("_run_module_as_main") or any(f.startswith("ReactorBase.mainLoop")
                                                                   for f in frames)


def summarise(collapsed: Iterable[str], top: int = 15) -> Summary:
    """Aggregate py-spy ``--format raw`` lines (``frame;frame;… count``) of the serving phase.

    Self time counts the innermost frame of every sample; inclusive time
    only devpitx's own functions (the reactor and runpy frames that sit
    under everything would otherwise fill the list).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        # With --subprocesses every stack starts with 'process PID:"cmdline"' of the server; a
        # second such frame marks a child process (password checks).
        if raw and raw[0].startswith("process "):
            raw = raw[1:]
        frames = ["[child process]" if f.startswith("process ") else _short(f) for f in raw]
        if not frames or not _serving(frames):
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            if "(devpitx/" in frame:
                incl_counts[frame] += count
    if total == 0:
        return Summary(0, [], [])
    return Summary(total,
                   [(f, c / total) for f, c in self_counts.most_common(top)],
                   [(f, c / total) for f, c in incl_counts.most_common(top)])


def _profiled(server: Server, out: Path) -> Server:
    # --subprocesses: devpitx verifies passwords in a child process, which belongs in the picture.
    argv = [str(PY_SPY), "record", "--format", "raw", "--rate", str(SAMPLES_PER_S), "--subprocesses",
            "--output", str(out), "--", *server.argv]
    return Server(f"{server.name} (py-spy)", argv, server.serverdir, server.port,
                  server.log_path.with_name("devpitx-profile.log"))


def _stop_under_py_spy(profiled: Server) -> None:
    """SIGTERM the server (py-spy's child, so started by us), then wait for py-spy to write its file."""
    if profiled.proc is None:
        return
    for pid in descendants(profiled.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"devpitx" in cmdline:
            os.kill(pid, signal.SIGTERM)
            break
    try:
        profiled.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    profiled.stop()  # py-spy itself, if it is still there


def _scenarios(ctx: Context) -> dict[str, Callable[[str], None]]:
    seconds = max(ctx.duration_s, 5.0)

    def simple_json(url: str) -> None:
        run_wrk(f"{url}/{USER}/{DEV}/+simple/{SIMPLE_PROJECT}/", 10, seconds, PIP_JSON, exe=ctx.wrk_exe)

    def project_list(url: str) -> None:
        run_wrk(f"{url}/{USER}/{MANY}/+simple/", 1, seconds, PIP_HTML, exe=ctx.wrk_exe)

    def upload_password(url: str) -> None:
        with Session(url) as session:
            create_index(session, basic_auth(USER, ctx.seeded[DEVPITX].token), "profile-upload")
            for dist in ctx.corpus.small[:50]:
                upload(session, basic_auth(USER, PASSWORD), "profile-upload", dist)

    return {"simple-json-c10": simple_json, "project-list-html-c1": project_list,
            "upload-password": upload_password}


def profile_devpitx(ctx: Context, results_dir: Path, stamp: str) -> dict[str, str]:
    """Run each scenario against devpitx under py-spy; return scenario -> rendered summary."""
    ensure_py_spy()
    base = ctx.servers[DEVPITX]
    base.stop()  # normally already stopped by the start-up measure
    rendered = {}
    for name, drive in _scenarios(ctx).items():
        out = results_dir / f"{stamp}-profile-{name}.txt"
        profiled = _profiled(base, out)
        try:
            profiled.start()
            ctx.say(f"profiling devpitx: {name}")
            drive(profiled.url)
        except (RuntimeError, WrkError, OSError) as exc:
            rendered[name] = f"{name}: profile failed: {exc}"
            continue
        finally:
            _stop_under_py_spy(profiled)
        time.sleep(0.2)
        if out.exists():
            summary = summarise(out.read_text().splitlines())
            rendered[name] = summary.render(f"devpitx {name}") + f"\n  (raw stacks: {out.name})"
        else:
            rendered[name] = f"{name}: py-spy wrote no profile"
    return rendered

"""Run wrk against a local URL and parse its report.

wrk (C, event loop, one thread here as in the reference figures) is the
load generator for every GET measure: a Python client would saturate long
before nginx does and would then measure itself.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.client import check_local

_TIME_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_TIME_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# wrk prints byte counts with binary prefixes ("137.04MB" = 137.04 * 2**20).
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}
_NUMBER_UNIT = r"([0-9.]+)([a-zA-Z]+)"


class WrkError(RuntimeError):
    """wrk failed or printed a report this parser does not understand."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    latency_us: Mapping[int, float]  # percentile -> microseconds (50, 75, 90, 99)
    socket_errors: Mapping[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_read / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def latency_ms(self, percentile: int) -> float:
        return self.latency_us[percentile] / 1000.0


def _number(text: str, units: Mapping[str, float], what: str) -> float:
    m = re.fullmatch(_NUMBER_UNIT, text.strip())
    if not m or m.group(2) not in units:
        raise WrkError(f"cannot parse {what} {text!r}")
    return float(m.group(1)) * units[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's text report (run with ``--latency``)."""
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+[a-z]+), ([0-9.]+[A-Z]+) read\s*$", output, re.M)
    if not total:
        raise WrkError(f"no 'requests in' line in wrk output:\n{output}")
    latency: dict[int, float] = {}
    for m in re.finditer(r"^\s*(50|75|90|99)%\s+([0-9.]+[a-z]+)\s*$", output, re.M):
        latency[int(m.group(1))] = _number(m.group(2), _TIME_US, "latency")
    if set(latency) != {50, 75, 90, 99}:
        raise WrkError(f"no latency distribution in wrk output (run with --latency):\n{output}")
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=_number(total.group(2), _TIME_S, "duration"),
        bytes_read=int(_number(total.group(3), _BYTES, "byte count")),
        latency_us=latency,
        socket_errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(url: str, connections: int, duration_s: float, headers: Mapping[str, str],
                threads: int = 1, timeout_s: float = 30.0, exe: str = "wrk") -> list[str]:
    check_local(url)
    argv = [exe, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            "--latency", f"--timeout={int(timeout_s)}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    return [*argv, url]


def run_wrk(url: str, connections: int, duration_s: float, headers: Mapping[str, str],
            exe: str = "wrk") -> WrkResult:
    argv = wrk_command(url, connections, duration_s, headers, exe=exe)
    # wrk stops by itself after -d; the extra margin covers its last in-flight timeouts.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout)

"""Smoke tests of the benchmark harness (bench/): no servers, no wrk, no network.

They cover the parts whose mistakes would silently corrupt a run: the
generated packages (both servers reject invalid archives, and a
non-deterministic archive would give the two servers different data), the
upload body, the wrk report parser (a unit slip turns MB into MiB or ms into
µs), the target arithmetic and the table written into docs/performance.md.
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from bench.client import NotLocal, check_local, multipart, upload_fields
from bench.packages import iter_payload, make_sdist, make_wheel, payload, write_big_wheel
from bench.report import (
    DEVPI,
    DEVPITX,
    NGINX,
    TABLE_END,
    TABLE_START,
    Results,
    Target,
    render_table,
    update_doc,
)
from bench.seed import Plan, file_path
from bench.upstream import TREE, tree_dists, write_tree
from bench.wrk import WrkError, parse_wrk, wrk_command

WRK_OK = """\
Running 3s test @ http://127.0.0.1:8080/bench/dev/+simple/bench-simple/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec    16.97k     1.39k   19.73k    76.00%
  Latency Distribution
     50%  439.00us
     75%  590.00us
     90%    1.06ms
     99%    1.20s
  50000 requests in 2.50s, 137.04MB read
Requests/sec:  20000.00
Transfer/sec:     54.82MB
"""

WRK_ERRORS = """\
Running 1s test @ http://127.0.0.1:8080/x
  1 threads and 64 connections
  Latency Distribution
     50%   10.00ms
     75%   20.00ms
     90%   30.00ms
     99%   40.00ms
  100 requests in 1.00s, 1.50GB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:    100.00
Transfer/sec:      1.50GB
"""


# -- packages --------------------------------------------------------------------------------


def _record_digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _check_wheel(zf: zipfile.ZipFile, name: str, version: str) -> dict[str, bytes]:
    members = {info.filename: zf.read(info) for info in zf.infolist()}
    distinfo = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(members[f"{distinfo}/METADATA"])
    assert metadata["Name"] == name and metadata["Version"] == version
    assert b"Root-Is-Purelib: true" in members[f"{distinfo}/WHEEL"]
    record = members[f"{distinfo}/RECORD"].decode().splitlines()
    listed = {line.split(",")[0]: line.split(",")[1:] for line in record}
    assert set(listed) == set(members)
    for arcname, (digest, size) in listed.items():
        if arcname.endswith("RECORD"):
            assert (digest, size) == ("", "")
        else:
            assert digest == _record_digest(members[arcname]) and int(size) == len(members[arcname])
    return members


def test_wheel_is_valid_and_deterministic() -> None:
    dist = make_wheel("bench-simple", "1.7.0", payload_bytes=1000, requires_python=">=3.8")
    assert parse_wheel_filename(dist.filename)[:2] == (canonicalize_name("bench-simple"), dist_version("1.7.0"))
    assert (dist.filetype, dist.pyversion) == ("bdist_wheel", "py3")
    with zipfile.ZipFile(io.BytesIO(dist.content)) as zf:
        assert zf.testzip() is None
        members = _check_wheel(zf, "bench-simple", "1.7.0")
    assert len(members["bench_simple/data.bin"]) == 1000
    assert b"Requires-Python: >=3.8" in members["bench_simple-1.7.0.dist-info/METADATA"]
    assert make_wheel("bench-simple", "1.7.0", payload_bytes=1000, requires_python=">=3.8").content == dist.content
    # A different version carries different payload bytes: no two files share a hash (and a +f path).
    assert make_wheel("bench-simple", "1.8.0", payload_bytes=1000).sha256 != dist.sha256


def dist_version(text: str) -> object:
    from packaging.version import Version

    return Version(text)


def test_sdist_is_valid_and_deterministic() -> None:
    dist = make_sdist("bench-simple", "1.7.0", payload_bytes=2000, requires_python=">=3.8")
    assert parse_sdist_filename(dist.filename) == (canonicalize_name("bench-simple"), dist_version("1.7.0"))
    assert dist.filetype == "sdist"
    # gzip header carries no timestamp, so the bytes depend only on the inputs
    assert gzip.decompress(dist.content)[:1] and dist.content[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(dist.content), mode="r:gz") as tar:
        names = tar.getnames()
        pkg_info = tar.extractfile("bench_simple-1.7.0/PKG-INFO").read()  # type: ignore[union-attr]
        data = tar.extractfile("bench_simple-1.7.0/src/bench_simple/data.bin").read()  # type: ignore[union-attr]
    assert all(n.startswith("bench_simple-1.7.0/") for n in names)
    assert b"Name: bench-simple\nVersion: 1.7.0\n" in pkg_info
    assert len(data) == 2000
    assert make_sdist("bench-simple", "1.7.0", payload_bytes=2000, requires_python=">=3.8").content == dist.content


def test_streamed_payload_matches_one_shot_payload() -> None:
    assert b"".join(iter_payload("seed", 10_003, chunk=1024)) == payload("seed", 10_003)
    assert payload("seed", 100) != payload("other", 100)


def test_big_wheel_streamed_to_disk_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "bench_download-1.0-py3-none-any.whl"
    sha = write_big_wheel(path, "bench-download", "1.0", 3 * 1024 * 1024 + 5)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        members = _check_wheel(zf, "bench-download", "1.0")
    assert members["bench_download/data.bin"] == payload("bench-download-1.0-whl", 3 * 1024 * 1024 + 5)
    again = tmp_path / "again.whl"
    assert write_big_wheel(again, "bench-download", "1.0", 3 * 1024 * 1024 + 5) == sha


def test_file_path_follows_the_plus_f_layout() -> None:
    sha = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"
    assert file_path("base", sha, "pkg-1.0.tar.gz") == "/bench/base/+f/a66/5a45920422f9d/pkg-1.0.tar.gz"


def test_quick_plan_is_smaller_and_says_so() -> None:
    quick, full = Plan.quick_plan(), Plan.full()
    assert quick.quick and not full.quick
    assert full.many_projects == 10_000 and quick.many_projects < full.many_projects
    assert (full.simple_versions, full.small_uploads, full.download_bytes, full.big_upload_bytes) == (
        100, 200, 50_000_000, 300_000_000)
    tiny = full.scaled(0.01)
    assert tiny.many_projects == 100 and tiny.simple_versions == 1 and tiny.small_upload_bytes == 100_000


# -- upload body -------------------------------------------------------------------------------------


def test_multipart_body_parses_as_the_upload_form(tmp_path: Path) -> None:
    dist = make_wheel("bench-upload", "1.0.3", payload_bytes=300)
    form = multipart(upload_fields(dist.name, dist.version, dist.filetype, dist.pyversion, dist.sha256, ">=3.8"),
                     "content", dist.filename)
    body = form.with_content(dist.content)
    assert form.length(len(dist.content)) == len(body)
    source = tmp_path / dist.filename
    source.write_bytes(dist.content)
    assert b"".join(form.stream_file(source)) == body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {form.content_type}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert parts[":action"].get_content() == "file_upload"
    assert parts["name"].get_content() == "bench-upload" and parts["version"].get_content() == "1.0.3"
    assert parts["sha256_digest"].get_content() == dist.sha256
    assert parts["requires_python"].get_content() == ">=3.8"
    assert parts["content"].get_filename() == dist.filename
    assert parts["content"].get_payload(decode=True) == dist.content


def test_only_local_urls_are_accepted() -> None:
    assert check_local("http://127.0.0.1:3141/+api") == ("127.0.0.1", 3141)
    for url in ("http://localhost:3141/", "https://127.0.0.1:3141/", "http://10.0.0.1:80/", "http://127.0.0.1/"):
        with pytest.raises(NotLocal):
            check_local(url)
    with pytest.raises(NotLocal):
        wrk_command("http://192.168.1.1:80/", 1, 1, {})


# -- wrk -----------------------------------------------------------------------------------------------


def test_parse_wrk_report() -> None:
    result = parse_wrk(WRK_OK)
    assert result.requests == 50000 and result.duration_s == 2.5
    assert result.requests_per_s == 20000.0
    assert result.bytes_read == int(137.04 * 2**20)
    assert result.latency_ms(50) == pytest.approx(0.439)
    assert result.latency_ms(90) == pytest.approx(1.06)
    assert result.latency_ms(99) == pytest.approx(1200.0)
    assert result.errors == 0


def test_parse_wrk_counts_errors_and_binary_units() -> None:
    result = parse_wrk(WRK_ERRORS)
    assert result.bytes_per_s == pytest.approx(1.5 * 2**30)
    assert dict(result.socket_errors) == {"connect": 0, "read": 1, "write": 0, "timeout": 3}
    assert result.non_2xx == 7 and result.errors == 11


def test_parse_wrk_rejects_reports_without_latency_distribution() -> None:
    with pytest.raises(WrkError):
        parse_wrk(WRK_OK.replace("  Latency Distribution\n", "").replace("     99%    1.20s\n", ""))
    with pytest.raises(WrkError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_line() -> None:
    argv = wrk_command("http://127.0.0.1:1234/p/", 64, 3.0, {"Accept": "text/html"}, exe="/usr/bin/wrk")
    assert argv == ["/usr/bin/wrk", "-t1", "-c64", "-d3s", "--latency", "--timeout=30s", "-H", "Accept: text/html",
                    "http://127.0.0.1:1234/p/"]


# -- results, targets, table -------------------------------------------------------------------------


def _results() -> Results:
    results = Results({"quick": True, "started": "2026-01-01 00:00 UTC", "rounds": 2})
    rps = results.row("simple.c10.rps", "simple page c=10: requests/s", "req/s", [Target("ratio>=", 10)])
    for v in (1500.0, 1300.0):
        rps.add(DEVPITX, v)
    for v in (120.0, 130.0):
        rps.add(DEVPI, v)
    p99 = results.row("simple.c64.p99", "simple page c=64: p99", "ms", [Target("ratio<=", 0.1)])
    p99.add(DEVPITX, 100.0)
    p99.add(DEVPI, 800.0)
    dl = results.row("download.c8", "download c=8", "MiB/s", [Target("ratio>=", 1.0), Target("nginx>=", 0.6)])
    dl.add(DEVPITX, 1000.0)
    dl.add(DEVPI, 900.0)
    dl.add(NGINX, 2000.0)
    start = results.row("startup", "start-up", "s", [Target("devpitx<", 1.0)])
    start.fail(DEVPITX, "HTTP 404")
    start.add(DEVPI, 9.0)
    results.row("replication.lag", "replication lag p50", "ms", [Target("devpitx<=", 20)]).status = "not built yet"
    return results


def test_targets_and_verdicts() -> None:
    rows = {row.key: row for row in _results().rows}
    assert rows["simple.c10.rps"].ratio() == pytest.approx(1400 / 125)
    assert rows["simple.c10.rps"].verdict() == "met"
    assert rows["simple.c64.p99"].verdict() == "missed"  # 1/8 is not 1/10
    assert rows["download.c8"].verdict() == "missed"  # beats devpi-server but only 50% of nginx
    assert rows["startup"].verdict() == "?"
    assert Target("devpitx<=", 32).check(rows["simple.c64.p99"]) is False


def test_table_shows_values_ratio_nginx_and_verdicts() -> None:
    table = render_table(_results()).splitlines()
    assert table[0] == "| measure | devpitx | devpi-server | ratio | nginx | target | verdict |"
    assert table[2] == "| simple page c=10: requests/s | 1,400 req/s | 125 req/s | 11.2× |  | ≥ 10.0× | met |"
    assert table[3] == "| simple page c=64: p99 | 100 ms | 800 ms | 0.125× |  | ≤ 1/10 | missed |"
    assert table[4] == ("| download c=8 | 1,000 MiB/s | 900 MiB/s | 1.11× | 2,000 MiB/s | ≥ 1.00× and ≥ 60% of nginx "
                        "| missed |")
    assert table[5] == "| start-up | error: HTTP 404 | 9.00 s | — |  | < 1.00 s | ? |"
    assert table[6] == "| replication lag p50 | not built yet | not built yet | — | — | ≤ 20.0 ms |  |"


def test_results_json_round_trip() -> None:
    results = _results()
    data = json.loads(json.dumps(results.to_json()))
    assert data["rows"][0]["median"] == {DEVPITX: 1400.0, DEVPI: 125.0}
    assert data["rows"][0]["verdict"] == "met"
    assert render_table(Results.from_json(data)) == render_table(results)


def test_update_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nhand-written intro\n\n{TABLE_START}\nold table\n{TABLE_END}\n\n## Notes\nkept\n")
    update_doc(doc, _results(), "quick run on a busy machine")
    text = doc.read_text()
    assert "old table" not in text
    assert text.startswith("# Performance\n\nhand-written intro\n")
    assert text.endswith(f"{TABLE_END}\n\n## Notes\nkept\n")
    block = text.split(TABLE_START)[1].split(TABLE_END)[0]
    assert "quick run on a busy machine" in block and "**Quick run**" in block
    assert "| simple page c=10: requests/s | 1,400 req/s |" in block
    update_doc(doc, _results())
    assert doc.read_text().count(TABLE_START) == 1


def test_update_doc_creates_the_page(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "performance.md"
    update_doc(doc, _results())
    text = doc.read_text()
    assert "python bench/run.py --quick" in text
    assert text.index(TABLE_START) < text.index("| measure |") < text.index(TABLE_END)


# -- fake upstream of the mirror measure ------------------------------------------------------------


def test_fake_upstream_tree_is_a_closed_valid_simple_index(tmp_path: Path) -> None:
    from packaging.requirements import Requirement

    dists = tree_dists()
    assert set(dists) == set(TREE)
    write_tree(tmp_path, dists)
    listing = (tmp_path / "simple" / "index.html").read_text()
    for name, files in dists.items():
        assert f'<a href="{name}/">{name}</a>' in listing
        page = (tmp_path / "simple" / name / "index.html").read_text()
        for dist in files:
            assert f'href="../../packages/{dist.filename}#sha256={dist.sha256}"' in page
            served = tmp_path / "packages" / dist.filename
            assert hashlib.sha256(served.read_bytes()).hexdigest() == dist.sha256
            with zipfile.ZipFile(served) as zf:
                metadata = zf.read(f"{name.replace('-', '_')}-{dist.version}.dist-info/METADATA").decode()
            requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
            assert requires == list(TREE[name][1])
            # every requirement can be satisfied from the tree itself: pip never looks elsewhere
            for req in map(Requirement, requires):
                assert any(req.specifier.contains(v) for v in TREE[req.name][0]), req


# -- py-spy summary -----------------------------------------------------------------------------------


def test_profile_summary_skips_start_up_and_counts_devpitx_frames() -> None:
    from bench.profile import summarise

    site = "/work/.venv/lib/python3.11/site-packages"
    serve = (f'process 10:"python -m twisted devpitx";_run_module_as_main (<frozen runpy>:198);'
             f"ReactorBase.mainLoop ({site}/twisted/internet/base.py:1)")
    lines = [
        # start-up: imports before the reactor runs are not part of the serving profile
        f'process 10:"python";_run_module_as_main (<frozen runpy>:198);makeService (/w/devpitx/cli/tap.py:3) 50',
        f"{serve};Routes.project (/w/devpitx/web/simple.py:10);dumps ({site}/json/__init__.py:2) 30",
        f"{serve};Routes.project (/w/devpitx/web/simple.py:12);render_links (/w/devpitx/web/simplepages.py:5) 10",
        f'process 10:"python";process 11:"python -c spawn_main";verify_secret ({site}/argon2/low_level.py:1) 60',
        "garbage line",
    ]
    summary = summarise(lines)
    assert summary.samples == 100
    assert summary.self_top[0] == ("verify_secret (low_level.py)", 0.6)
    assert ("dumps (json/__init__.py)", 0.3) in summary.self_top
    assert dict(summary.inclusive_top) == {"Routes.project (devpitx/web/simple.py)": 0.4,
                                           "render_links (devpitx/web/simplepages.py)": 0.1}
    assert "makeService" not in summary.render("t")

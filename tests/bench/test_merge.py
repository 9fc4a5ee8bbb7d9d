"""bench/merge.py: a partial run's rows replace the full run's rows with the same key."""
from __future__ import annotations

from bench.merge import merge
from bench.report import Results, Row, render_meta


def results(started: str, **rows: float) -> Results:
    out = Results({"started": started, "devpitx": "abc", "devpi-server": "6"})
    for key, value in rows.items():
        row = out.row(key, key, "s")
        row.add("devpitx", value)
    return out


def test_partial_rows_replace_same_keys_in_place_and_new_ones_are_added() -> None:
    full = results("full", a=1.0, b=2.0, c=3.0)
    partial = results("partial", b=20.0, d=40.0)
    merged = merge(full, partial)
    assert [row.key for row in merged.rows] == ["a", "b", "c", "d"]
    assert [row.median("devpitx") for row in merged.rows] == [1.0, 20.0, 3.0, 40.0]
    assert merged.meta["started"] == "full"
    assert "rows b, d from a later partial run: started partial" in render_meta(merged.meta)


def test_full_results_are_not_modified() -> None:
    full = results("full", a=1.0)
    merge(full, results("partial", a=5.0))
    assert isinstance(full.rows[0], Row) and full.rows[0].median("devpitx") == 1.0
    assert "merged" not in full.meta


def test_merging_twice_keeps_both_provenances() -> None:
    once = merge(results("full", a=1.0, b=2.0), results("first", a=3.0))
    twice = merge(once, results("second", b=4.0))
    assert "rows a from a later partial run: started first" in twice.meta["merged"]
    assert "rows b from a later partial run: started second" in twice.meta["merged"]
    assert [row.median("devpitx") for row in twice.rows] == [3.0, 4.0]


def test_a_later_merge_of_the_same_rows_drops_the_earlier_provenance() -> None:
    once = merge(results("full", a=1.0, b=2.0), results("first", a=3.0, b=4.0))
    twice = merge(once, results("second", b=5.0))
    assert "rows a from a later partial run: started first" in twice.meta["merged"]
    assert "rows b from a later partial run: started second" in twice.meta["merged"]
    assert "rows a, b" not in twice.meta["merged"]
    thrice = merge(twice, results("third", a=6.0))
    assert "started first" not in thrice.meta["merged"]

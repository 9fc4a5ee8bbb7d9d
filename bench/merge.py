"""Fold the rows of a partial run (``--only ...``) into a full run and regenerate docs/performance.md.

    python bench/merge.py bench/results/<full>.json bench/results/<partial>.json

Rows of the partial run replace the rows with the same key in the full run
(or are added); everything else stays as the full run measured it. The meta
block records both runs, so the table says which rows came from where. The
merged results are written next to the full run as ``<full>+<partial>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Results, update_doc, write_json  # noqa: E402
from bench.run import DOC_PATH  # noqa: E402


def merge(full: Results, partial: Results) -> Results:
    replaced = {row.key for row in partial.rows}
    rows = [row for row in full.rows if row.key not in replaced]
    keys_in_order = [row.key for row in full.rows]
    for row in partial.rows:
        # Keep the full run's order where the row existed there; new rows go last.
        position = keys_in_order.index(row.key) if row.key in keys_in_order else len(rows)
        rows.insert(min(position, len(rows)), row)
    meta = dict(full.meta)
    run = (f"started {partial.meta.get('started')}, devpitx {partial.meta.get('devpitx')}, "
           f"devpi-server {partial.meta.get('devpi-server')}, load_before {partial.meta.get('load_before')}")
    # Merging again keeps the earlier merges' provenance, minus the rows this one replaces.
    earlier = [{"rows": [key for key in entry["rows"] if key not in replaced], "run": entry["run"]}
               for entry in meta.get("merged_runs", [])]
    merged_runs = [entry for entry in earlier if entry["rows"]]
    merged_runs.append({"rows": sorted(replaced), "run": run})
    meta["merged_runs"] = merged_runs
    described = "; ".join(f"rows {', '.join(entry['rows'])} from a later partial run: {entry['run']}"
                          for entry in merged_runs)
    if full.meta.get("merged") and not full.meta.get("merged_runs"):
        described = f"{full.meta['merged']}; {described}"     # merged before rows were recorded
    meta["merged"] = described
    return Results(meta, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("full", type=Path)
    parser.add_argument("partial", type=Path)
    parser.add_argument("--no-docs", action="store_true", help="only write the merged JSON")
    args = parser.parse_args(argv)
    full = Results.from_json(json.loads(args.full.read_text()))
    partial = Results.from_json(json.loads(args.partial.read_text()))
    merged = merge(full, partial)
    out = args.full.with_name(f"{args.full.stem}+{args.partial.stem}.json")
    write_json(out, merged)
    print(f"merged results written to {out}")
    if not args.no_docs:
        update_doc(DOC_PATH, merged)
        print(f"table regenerated in {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

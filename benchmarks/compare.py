"""Diff two benchmark result files (``--json`` of any script in benchmarks/, format in ``common.py``).

Rows are matched by their key, metrics by name; each line shows old, new and the change, and a change
worse than ``--threshold`` percent in the metric's bad direction is marked REGRESSION. Exit status 1 when
there is any regression (for CI), 2 on bad input.

    python benchmarks/compare.py results/bench/train_before.json results/bench/train_after.json --threshold 10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import SCHEMA, markdown_table


def load(path: str) -> dict:
    """The parsed result file; exits with one line naming the file when it cannot be read."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), list):
            raise ValueError(f"not a schema-{SCHEMA} benchmark result (keys schema, benchmark, rows)")
        return doc
    except (OSError, ValueError, AttributeError) as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        sys.exit(2)


def key_text(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def diff(old: dict, new: dict, threshold: float) -> tuple[list[list[str]], int]:
    """Table rows (key, metric, old, new, change, flag) and the number of regressions."""
    lower = set(old.get("lower_is_better", [])) | set(new.get("lower_is_better", []))
    old_rows = {key_text(r["key"]): r["metrics"] for r in old["rows"]}
    table, regressions = [], 0
    for row in new["rows"]:
        key = key_text(row["key"])
        before = old_rows.get(key)
        if before is None:
            table.append([key, "(new row)", "", "", "", ""])
            continue
        for name, b in row["metrics"].items():
            a = before.get(name)
            if a is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)):
                continue
            change = 100 * (b - a) / abs(a) if a else 0.0
            gain = -change if name in lower else change  # > 0: better
            flag = "REGRESSION" if gain < -threshold else ""
            regressions += bool(flag)
            table.append([key, name, f"{a:.4g}", f"{b:.4g}", f"{change:+.1f}%", flag])
    return table, regressions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=10.0, help="percent change counted as a regression")
    args = ap.parse_args()
    old, new = load(args.old), load(args.new)
    if old.get("benchmark") != new.get("benchmark"):
        print(f"error: {args.new}: benchmark {new.get('benchmark')!r} differs from {args.old}'s "
              f"{old.get('benchmark')!r}", file=sys.stderr)
        sys.exit(2)
    for label, doc in (("old", old), ("new", new)):
        m = doc.get("meta", {})
        print(f"{label}: {m.get('date')} commit {m.get('git_commit')} {m.get('cpu')} load {m.get('load_avg')}")
    table, regressions = diff(old, new, args.threshold)
    print(markdown_table(["row", "metric", "old", "new", "change", ""], table))
    print(f"\n{regressions} regression(s) beyond {args.threshold:g}%")
    sys.exit(1 if regressions else 0)


if __name__ == "__main__":
    main()

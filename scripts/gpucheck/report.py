"""The check's outputs: the table on the terminal (rich when importable, else plain text), ``gpu_check.md``
(the same table in markdown, for the README) and ``gpu_check.json`` (every row, the machine, the timings);
``--quick`` and ``--dry-run`` write ``gpu_check_quick.*`` / ``gpu_check_dry_run.*`` instead."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from common import markdown_table
from gpucheck.rows import Row

HEAD = ["section", "row", "status", "numbers", "message", "s"]


def fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def cells(row: Row) -> list[str]:
    numbers = ", ".join(f"{k}={fmt(v)}" for k, v in row.numbers.items())
    return [row.section, row.name, row.status.upper(), numbers, row.message, f"{row.seconds:.1f}"]


def summary(rows: list[Row]) -> dict[str, int]:
    return {status: sum(r.status == status for r in rows) for status in ("pass", "fail", "skip")}


def print_table(rows: list[Row], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in rows:
            print(" | ".join(cells(r)))
        return
    table = Table(*HEAD, title=title, show_lines=False)
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for r in rows:
        c = cells(r)
        c[2] = f"[{style[c[2]]}]{c[2]}[/]"
        table.add_row(*c)
    Console(width=220).print(table)


def write(out: Path, doc: dict, rows: list[Row]) -> Path:
    """Write the JSON and the markdown table into ``out``; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = doc | {"summary": summary(rows), "rows": [asdict(r) for r in rows]}
    stem = "gpu_check" + {"full": "", "quick": "_quick", "dry-run": "_dry_run"}[doc["mode"]]
    path = out / f"{stem}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    m = doc["machine"]
    lines = [f"{m['date']}, {m['device']}, torch {m['torch']}, CUDA {m.get('cuda')}, commit {m['git_commit']}, mode {doc['mode']}, "
             f"{doc['total_s']:.0f} s", "", markdown_table(HEAD, [[c.replace("|", "\\|") for c in cells(r)] for r in rows])]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path

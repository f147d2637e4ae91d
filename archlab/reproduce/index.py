"""The table of every claim (``archlab reproduce --table``): paper claim | paper's setting and number | our setting |
our number with its 95% interval | verdict, read from each claim's committed ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from archlab.config import ConfigError
from archlab.reproduce.claim import CLAIMS_DIR, RESULTS_DIR, load_claim
from archlab.reproduce.render import SUMMARY_JSON


TABLE_BEGIN, TABLE_END = "<!-- begin: archlab reproduce --table -->", "<!-- end: archlab reproduce --table -->"


def _effect(e: dict | None) -> str:
    if not e:
        return "–"
    return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] (n = {e['n']})"


def _cell(s: str) -> str:
    return s.replace("|", "/").replace("\n", " ")


def claims_table(results: Path = RESULTS_DIR, budget: str = "cpu", claims_dir: Path = CLAIMS_DIR, link_prefix: str = "../") -> str:
    """Markdown: one row per claim of ``claims_dir`` with the budget (claims without results say 'not run'), and a
    row for each other budget of a claim that has results (e.g. a deeper follow-up). Report links are
    ``link_prefix`` + the results path (default: relative to docs/, where the table lives)."""
    from archlab.reproduce import default_out

    lines = ["| claim | paper's claim | paper's setting and number | our setting | our number (95% CI) | verdict | CPU-min |",
             "|---|---|---|---|---|---|---|"]
    for name in sorted(p.stem for p in claims_dir.glob("*.yaml")):
        claim = load_claim(name, claims_dir)
        for b in claim.budgets:
            out = results / default_out(name, b).relative_to(RESULTS_DIR)
            path = out / SUMMARY_JSON
            if b != budget and not path.is_file():
                continue
            s = json.loads(path.read_text()) if path.is_file() else None
            if s is None:
                ours, verdict, cpu = "not run", "–", "–"
            else:
                parts = [f"{c['name']}: {_effect(c['effect'])}" for c in s["comparisons"] if c["decides"]]
                ours = "; ".join(parts) + f" ({s['runs_done']}/{s['runs_planned']} runs)"
                cpu_s = sum(s["cpu_s"].values()) if isinstance(s["cpu_s"], dict) else s["cpu_s"]
                verdict, cpu = f"**{s['verdict']}**", f"{cpu_s / 60:.0f}"
            label = name if b == budget else f"{name} (`--budget {b}`)"
            lines.append(f"| [{label}]({link_prefix}{out / 'report.md'}) | {_cell(claim.paper.claim)} | {_cell(claim.paper.setting)} "
                         f"{_cell(claim.paper.number)} | {_cell(claim.budgets[b].setting)} | {_cell(ours)} | {verdict} | {cpu} |")
    return "\n".join(lines)


def with_table(text: str, table: str, where: str = "document") -> str:
    """``text`` with the block between TABLE_BEGIN and TABLE_END replaced by ``table`` (docs/reproductions.md)."""
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_BEGIN) > text.index(TABLE_END):
        raise ConfigError(f"{where}: needs one line {TABLE_BEGIN!r} and, after it, one line {TABLE_END!r}")
    head, rest = text.split(TABLE_BEGIN)
    return f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{rest.split(TABLE_END)[1]}"

"""The table of every claim (``archlab reproduce --table``): paper claim | paper's setting and number | our setting |
our number with its 95% interval | verdict, read from each claim's committed ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from archlab.reproduce.claim import CLAIMS_DIR, RESULTS_DIR, load_claim
from archlab.reproduce.render import SUMMARY_JSON


def _effect(e: dict | None) -> str:
    if not e:
        return "–"
    return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] (n = {e['n']})"


def _cell(s: str) -> str:
    return s.replace("|", "/").replace("\n", " ")


def claims_table(results: Path = RESULTS_DIR, budget: str = "cpu", claims_dir: Path = CLAIMS_DIR, link_prefix: str = "../") -> str:
    """Markdown: one row per claim of ``claims_dir`` with the budget; claims without results say 'not run'. Report
    links are ``link_prefix`` + the results path (default: relative to docs/, where the table lives)."""
    from archlab.reproduce import default_out

    lines = ["| claim | paper's claim | paper's setting and number | our setting | our number (95% CI) | verdict | CPU-min |",
             "|---|---|---|---|---|---|---|"]
    for name in sorted(p.stem for p in claims_dir.glob("*.yaml")):
        claim = load_claim(name, claims_dir)
        if budget not in claim.budgets:
            continue
        out = results / default_out(name, budget).relative_to(RESULTS_DIR)
        path = out / SUMMARY_JSON
        s = json.loads(path.read_text()) if path.is_file() else None
        if s is None:
            ours, verdict, cpu = "not run", "–", "–"
        else:
            parts = [f"{c['name']}: {_effect(c['effect'])}" for c in s["comparisons"] if c["decides"]]
            ours = "; ".join(parts) + f" ({s['runs_done']}/{s['runs_planned']} runs)"
            cpu_s = sum(s["cpu_s"].values()) if isinstance(s["cpu_s"], dict) else s["cpu_s"]
            verdict, cpu = f"**{s['verdict']}**", f"{cpu_s / 60:.0f}"
        lines.append(f"| [{name}]({link_prefix}{out / 'report.md'}) | {_cell(claim.paper.claim)} | {_cell(claim.paper.setting)} "
                     f"{_cell(claim.paper.number)} | {_cell(claim.budgets[budget].setting)} | {_cell(ours)} | {verdict} | {cpu} |")
    return "\n".join(lines)

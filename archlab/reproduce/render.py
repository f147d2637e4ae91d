"""Markdown pieces shared by every claim's report: the verdict line, effects, the header, the sittings log."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from archlab.reproduce.claim import Claim
from archlab.stats import PairedEffect

REPORT_MD, VERDICT_TXT, SUMMARY_JSON, SITTINGS = "report.md", "verdict.txt", "summary.json", "sittings.jsonl"


def rel_path(path: Path | None) -> str:
    """A recipe path relative to the repository, for reports that read the same from any checkout."""
    from archlab.reproduce.claim import REPO

    if path is None:
        return "(defaults)"
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def fmt_effect(e: PairedEffect | None) -> str:
    if e is None:
        return "–"
    p = f", sign-flip p = {e.p:.3g}" if e.p is not None else ""
    return f"{e.mean:+.4f} (95% CI {e.lo:+.4f} … {e.hi:+.4f}; n = {e.n}{p})"


def effect_dict(e: PairedEffect | None) -> dict[str, Any] | None:
    """What summary.json keeps of an effect."""
    if e is None:
        return None
    return {"mean": e.mean, "sd": e.sd, "lo": e.lo, "hi": e.hi, "p": e.p, "n": e.n, "seeds_80": e.seeds_80, "diffs": list(e.diffs)}


def fmt_values(values: list[float]) -> str:
    if not values:
        return "–"
    import statistics

    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def verdict_line(claim: Claim, verdict: str, measured: str) -> str:
    """The one line a reader needs: claim, measured effect, verdict."""
    return f"**{claim.title}** — paper: {claim.paper.claim} Measured: {measured} **Verdict: {verdict}.**"


def header(claim: Claim, budget: str, command: str, verdict: str, measured: str, status: str) -> list[str]:
    b = claim.budgets[budget]
    return [f"# Reproduction: {claim.title}", "", verdict_line(claim, verdict, measured), "", f"Status: {status}", "",
            "| | |", "|---|---|", f"| paper's claim | {claim.paper.claim} |", f"| paper's setting | {claim.paper.setting} |",
            f"| paper's number | {claim.paper.number} |", f"| our setting (`--budget {budget}`) | {b.setting} |",
            f"| command | `{command}` |", ""] + ([claim.notes.strip(), ""] if claim.notes.strip() else [])


def command_line(name: str, budget: str, jobs: int, out: Path) -> str:
    return f"archlab reproduce {name} --budget {budget} --jobs {jobs} --out {out}"


def log_sitting(out: Path, started: float, runs: int, cpu_s: float, driver_cpu_s: float) -> None:
    """One line per invocation that ran something: when, how many runs, their CPU seconds and the driver's own
    (evaluations it does itself), the command line."""
    entry = {"start": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
             "end": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(time.time() - started, 1), "runs": runs,
             "cpu_s": round(cpu_s, 1), "driver_cpu_s": round(driver_cpu_s, 1), "argv": shlex.join(sys.argv)}
    with open(out / SITTINGS, "a") as f:
        f.write(json.dumps(entry) + "\n")


def write_outputs(out: Path, lines: list[str], verdict_text: str, summary: dict[str, Any]) -> Path:
    (out / VERDICT_TXT).write_text(verdict_text + "\n")
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=1, default=str))
    path = out / REPORT_MD
    path.write_text("\n".join(lines) + "\n")
    return path

"""``archlab reproduce CLAIM``: a paper's claim as one resumable command that ends in a report with a verdict.

A claim is ``configs/reproduce/CLAIM.yaml`` (:mod:`archlab.reproduce.claim`); ``kind: sweep`` claims run and report
through :mod:`archlab.reproduce.sweep_claim`, the retrofitted-recurrence pipeline through
:mod:`archlab.reproduce.recurrence`. Statistics: :mod:`archlab.stats`.
"""

from __future__ import annotations

from pathlib import Path

from archlab.reproduce.claim import RESULTS_DIR, claim_names, load_claim


def default_out(claim: str, budget: str) -> Path:
    """results/reproduce/CLAIM for the CPU budget (committed), results/reproduce/CLAIM-BUDGET otherwise."""
    return RESULTS_DIR / (claim if budget == "cpu" else f"{claim}-{budget}")


def run_claim(name: str, budget: str = "cpu", jobs: int = 1, out: Path | None = None, execute: bool = True,
              on_done=None, claims_dir: Path | None = None) -> Path:
    """Run claim ``name`` at ``budget`` into ``out`` (finished runs are skipped) and write its report.md."""
    claim = load_claim(name, claims_dir) if claims_dir else load_claim(name)
    claim.budget(budget)
    out = out or default_out(name, budget)
    if claim.kind == "sweep":
        from archlab.reproduce.sweep_claim import run
    else:
        from archlab.reproduce.recurrence import run
    return run(claim, budget, out, jobs, execute, on_done)


__all__ = ["claim_names", "default_out", "load_claim", "run_claim"]

"""A ``kind: sweep`` claim: run its sweeps (resumable, :mod:`archlab.sweep`), then write ``report.md`` with the
verdict, the comparisons with their intervals, the grid, and the optional sections and plots.

Layout of OUT: one sweep directory per sweep of the budget (``OUT/<sweep>/``: results.sqlite, sweep.json, run
directories), and ``report.md``, ``verdict.txt``, ``summary.json``, ``sittings.jsonl``, PNGs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from archlab.report import arm_label, best_lr_per_arm, plot_loss_bands, plot_metric_vs_key
from archlab.reproduce import analysis as an
from archlab.reproduce import sections as sec
from archlab.reproduce.claim import Claim, Comparison, SweepBudget
from archlab.reproduce.figures import plot_effects
from archlab.reproduce.render import command_line, effect_dict, fmt_effect, header, log_sitting, rel_path, write_outputs
from archlab.sweep import DB_FILE, RunSpec, SweepPlan, load_results, prepare, run_plan

OnDone = Callable[[str, RunSpec, dict[str, Any], int, int], None]


def plans(claim: Claim, budget_name: str) -> dict[str, SweepPlan]:
    """The budget's sweep plans, with every comparison's arms checked against their grid (before any work)."""
    budget = claim.budget(budget_name)
    assert isinstance(budget, SweepBudget)
    out = {name: spec.plan(claim.path) for name, spec in budget.sweeps.items()}
    for c in claim.comparisons(budget_name):
        plan = out[sweep_of(c, budget)]
        arms = an.planned_arms(plan, claim.report.lr_key)
        an.find_arm(arms, {**c.at, **c.treatment}, f"compare {c.name!r} treatment")
        an.find_arm(arms, {**c.at, **c.baseline}, f"compare {c.name!r} baseline")
    return out


def sweep_of(c: Comparison, budget: SweepBudget) -> str:
    return c.sweep or next(iter(budget.sweeps))


def run(claim: Claim, budget_name: str, out: Path, jobs: int, execute: bool = True, on_done: OnDone | None = None) -> Path:
    """Run what is not finished yet (unless ``execute`` is False), then write the report; returns report.md."""
    sweep_plans = plans(claim, budget_name)
    out.mkdir(parents=True, exist_ok=True)
    if execute:
        started, c0, n, cpu = time.time(), time.process_time(), 0, 0.0
        for name, plan in sweep_plans.items():
            cb = (lambda spec, row, i, total, name=name: on_done(name, spec, row, i, total)) if on_done else None
            rows = run_plan(out / name, plan, jobs, on_done=cb)
            n, cpu = n + len(rows), cpu + sum(r.get("cpu_time") or 0.0 for r in rows)
        if n:
            log_sitting(out, started, n, cpu, time.process_time() - c0)
    else:
        for name, plan in sweep_plans.items():
            prepare(out / name, plan)  # refuses a directory made with other settings
    return write_report(claim, budget_name, out, sweep_plans, jobs)


def _rows(out: Path, name: str) -> list[dict[str, Any]]:
    return load_results(out / name) if (out / name / DB_FILE).is_file() else []


def measured_text(results: list[an.ComparisonResult]) -> str:
    parts = [f"{r.comparison.name}: {r.comparison.metric} {fmt_effect(r.effect)} → {r.verdict}"
             for r in results if r.comparison.decides]
    return "; ".join(parts) + "."


def sweep_sections(claim: Claim, name: str, plan: SweepPlan, rows: list[dict[str, Any]], first: Comparison, out: Path,
                   tag_files: bool) -> list[str]:
    """The sections of one sweep, on the metric of its first comparison; plot files prefixed by the sweep's name
    when the budget has several sweeps."""
    rep, lr_key, sdir = claim.report, claim.report.lr_key, out / name
    metric, higher, tag = first.metric, first.higher_is_better, f"{name}_" if tag_files else ""
    lines = [f"## Sweep `{name}`: {metric}, every arm × LR (mean ± sd over finished seeds; n/planned)", "",
             f"Recipe `{rel_path(plan.base)}`, overrides `{' '.join(plan.overrides)}`; {plan.seeds} seeds.", ""]
    lines += sec.grid(rows, plan, metric, lr_key)
    if rep.by and rep.by in plan.grid:
        lines += sec.against(rows, plan, metric, higher, lr_key, rep.by, out / f"{tag}by_{rep.by.split('.')[-1]}.png")
    if rep.stability:
        lines += sec.stability(rows, plan, lr_key, sdir)
    if rep.first_block_grad:
        lines += sec.first_block_grad(rows, plan, lr_key, sdir)
    done = [r for r in rows if r["status"] == "done"]
    best = best_lr_per_arm(done, metric, lr_key, higher, seeds=plan.seeds)
    if not best:
        return lines
    if rep.curves:
        lines += sec.task_metrics(rows, plan, metric, higher, lr_key, rep.curves, rep.acquired, sdir, out / f"{tag}task_metrics.png")
    plot_loss_bands(best, sdir, out / f"{tag}loss_curves.png")
    plot_metric_vs_key(done, metric, lr_key, out / f"{tag}metric_vs_lr.png")
    return lines + [f"![loss curves]({tag}loss_curves.png) ![{metric} vs lr]({tag}metric_vs_lr.png)", ""]


def write_report(claim: Claim, budget_name: str, out: Path, sweep_plans: dict[str, SweepPlan], jobs: int) -> Path:
    budget = claim.budget(budget_name)
    assert isinstance(budget, SweepBudget)
    lr_key = claim.report.lr_key
    rows = {name: _rows(out, name) for name in sweep_plans}
    comparisons = claim.comparisons(budget_name)
    results = [an.compare(c, sweep_plans[sweep_of(c, budget)], rows[sweep_of(c, budget)], lr_key) for c in comparisons]
    verdict = an.claim_verdict(results)
    planned = sum(len(p.specs()) for p in sweep_plans.values())
    all_rows = [r for rs in rows.values() for r in rs]
    n_done = sum(r["status"] == "done" for r in all_rows)
    cpu = sum(r.get("cpu_time") or 0.0 for r in all_rows)
    wall = sum(r.get("wall_time") or 0.0 for r in all_rows)
    status = (f"{n_done} of {planned} runs finished, {len(all_rows) - n_done} failed (diverged or crashed); "
              f"{cpu / 60:.1f} CPU-minutes in the runs ({wall / 60:.1f} min of wall clock summed over runs, {jobs} at a time).")
    lines = header(claim, budget_name, command_line(claim.name, budget_name, jobs, out), verdict, measured_text(results), status)
    lines += sec.comparisons(results, lr_key)
    plot_effects(results, out / "effects.png")
    lines += ["![effects](effects.png)", ""]
    for name, plan in sweep_plans.items():
        comps = [c for c in comparisons if sweep_of(c, budget) == name]
        if comps:
            lines += sweep_sections(claim, name, plan, rows[name], comps[0], out, len(sweep_plans) > 1)
    lines += ["## Method", "",
              "Per arm (every swept key but seed and LR) the LR with the best mean over seeds is chosen, among LRs at which "
              "every seed finished with a finite metric, as the papers report; choosing on the same runs that measure the "
              "effect is optimistic for both arms, so the effect at each common LR is shown too. The effect is "
              "treatment − baseline per seed (same seed = same data order and, where the arms' shapes agree, the same "
              "init), its 95% interval the Student-t interval over seeds (n − 1 df; exact quantile, `archlab/stats.py`), "
              "p the exact two-sided sign-flip test (with n seeds p ≥ 2/2^n). **Shown** iff the interval excludes zero "
              "in the paper's direction. Seeds for 80% power: ((z₀.₉₇₅ + z₀.₈) · sd / effect)², normal approximation, "
              "with the measured mean and sd of the paired differences."]
    summary = {"claim": claim.name, "budget": budget_name, "verdict": verdict, "runs_planned": planned, "runs_done": n_done,
               "cpu_s": cpu, "wall_s": wall, "comparisons": [_summary(r) for r in results]}
    return write_outputs(out, lines, lines[2], summary)


def _summary(r: an.ComparisonResult) -> dict[str, Any]:
    return {"name": r.comparison.name, "metric": r.comparison.metric, "verdict": r.verdict, "decides": r.comparison.decides,
            "treatment": arm_label(r.treatment), "baseline": arm_label(r.baseline), "treatment_lr": r.treatment_lr,
            "baseline_lr": r.baseline_lr, "treatment_edge": r.treatment_edge, "baseline_edge": r.baseline_edge,
            "treatment_values": r.treatment_values, "baseline_values": r.baseline_values,
            "effect": effect_dict(r.effect), "per_lr": {str(lr): effect_dict(x) for lr, x in r.per_lr}}

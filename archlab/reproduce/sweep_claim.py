"""A ``kind: sweep`` claim: run its sweeps (resumable, :mod:`archlab.sweep`), then write ``report.md`` with the
verdict, the comparisons with their intervals, the grid, and the optional sections and plots.

Layout of OUT: one sweep directory per sweep of the budget (``OUT/<sweep>/``: results.sqlite, sweep.json, run
directories), and ``report.md``, ``verdict.txt``, ``summary.json``, ``sittings.jsonl``, PNGs.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from archlab.plots import plt
from archlab.report import (
    Arm,
    arm_label,
    best_lr_per_arm,
    metric_of,
    numbered_metrics,
    plot_family,
    plot_loss_bands,
    plot_metric_vs_key,
)
from archlab.reproduce import analysis as an
from archlab.reproduce.claim import Claim, Comparison, SweepBudget
from archlab.reproduce.render import command_line, effect_dict, fmt_effect, fmt_values, header, log_sitting, rel_path, write_outputs
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


def _lr(v: Any) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def comparison_table(results: list[an.ComparisonResult], lr_key: str) -> list[str]:
    lines = ["## Comparisons (each arm at its best LR; treatment − baseline paired by seed)", "",
             "| comparison | metric | treatment (best LR): mean ± sd | baseline (best LR): mean ± sd | effect (95% t-interval) | seeds for 80% power | decides | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.comparison
        direction = "↑" if c.higher_is_better else "↓"
        power = str(r.effect.seeds_80) if r.effect and r.effect.seeds_80 else "–"
        lines.append(f"| {c.name} | {c.metric} {direction} | {arm_label(r.treatment)} ({lr_key.split('.')[-1]} {_lr(r.treatment_lr)}): "
                     f"{fmt_values(r.treatment_values)} | {arm_label(r.baseline)} ({_lr(r.baseline_lr)}): {fmt_values(r.baseline_values)} | "
                     f"{fmt_effect(r.effect)} | {power} | {'yes' if c.decides else 'no'} | **{r.verdict}** |")
    lines += ["", "Effect at each common LR (both arms at the same LR, paired by seed; no selection):", "",
              "| comparison | " + " | ".join(f"{lr_key} = {_lr(lr)}" for lr, _ in results[0].per_lr) + " |",
              "|---|" + "---|" * len(results[0].per_lr)]
    for r in results:
        lines.append(f"| {r.comparison.name} | " + " | ".join(
            "–" if e is None else f"{e.mean:+.4f} [{e.lo:+.4f}, {e.hi:+.4f}]" for _, e in r.per_lr) + " |")
    return lines + [""]


def grid_table(rows: list[dict[str, Any]], plan: SweepPlan, metric: str, lr_key: str) -> list[str]:
    """Every arm x LR: mean ± sd over the seeds that finished (n/planned)."""
    lrs = plan.grid.get(lr_key, [None])
    lines = [f"| arm | " + " | ".join(f"{lr_key.split('.')[-1]} {_lr(lr)}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    done = [r for r in rows if r["status"] == "done"]
    for arm in an.planned_arms(plan, lr_key):
        cells = []
        for lr in lrs:
            at = [r for r in done if an.arm_of_row(r, lr_key) == arm and r["params"].get(lr_key) == lr]
            vals = [m for r in at if (m := metric_of(r, metric)) is not None and math.isfinite(m)]
            cells.append(f"{fmt_values(vals)} ({len(vals)}/{plan.seeds})")
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines


def by_section(rows: list[dict[str, Any]], plan: SweepPlan, metric: str, higher: bool, lr_key: str, by: str, path: Path) -> list[str]:
    """The metric at each arm's best LR against the swept key ``by`` (e.g. depth): table + plot."""
    best = best_lr_per_arm([r for r in rows if r["status"] == "done"], metric, lr_key, higher, seeds=plan.seeds)
    values = plan.grid[by]
    lines = [f"## {metric} at the best LR against `{by}`", "", "| arm | " + " | ".join(f"{by.split('.')[-1]} = {v}" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for rest, arms in _split(an.planned_arms(plan, lr_key), by).items():
        cells, pts = [], []
        for v in values:
            arm = arms.get(v)
            vals = [m for r in best.get(arm, []) if (m := metric_of(r, metric)) is not None]
            cells.append(f"{fmt_values(vals)} (lr {_lr(best[arm][0]['params'][lr_key])})" if vals else "–")
            if vals:
                pts.append((v, sum(vals) / len(vals), min(vals), max(vals)))
        lines.append(f"| {arm_label(rest)} | " + " | ".join(cells) + " |")
        if pts:
            xs, ms, lo, hi = zip(*pts)
            ax.errorbar(xs, ms, yerr=[[m - a for m, a in zip(ms, lo)], [b - m for m, b in zip(ms, hi)]], marker="o", capsize=3, label=arm_label(rest))
    if all(isinstance(v, (int, float)) for v in values):
        ax.set_xscale("log", base=2)
    ax.set(xlabel=by, ylabel=metric, title=f"{metric} at each arm's best LR (mean, bars = min..max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return lines + ["", f"![{metric} vs {by}]({path.name})", ""]


def _split(arms: list[Arm], key: str) -> dict[Arm, dict[Any, Arm]]:
    """arms grouped by everything but ``key``: rest -> {value of key: arm}."""
    out: dict[Arm, dict[Any, Arm]] = {}
    for arm in arms:
        d = dict(arm)
        out.setdefault(tuple((k, v) for k, v in arm if k != key), {})[d[key]] = arm
    return out


def stability_section(rows: list[dict[str, Any]], plan: SweepPlan, lr_key: str, sweep_dir: Path) -> list[str]:
    table = an.stability(rows, lr_key, sweep_dir, plan.seeds)
    lrs = plan.grid[lr_key]
    lines = [f"## Stability (stable seeds of {plan.seeds} per LR; largest LR at which all were stable)", "",
             f"Stable = finished without a NaN/Inf stop, final val loss at least {an.LEARN_MARGIN:g} nat below a uniform guess "
             f"(ln V) and at most {an.SPIKE_MARGIN:g} nat above the lowest training loss the run logged.", "",
             "| arm | " + " | ".join(_lr(lr) for lr in lrs) + " | largest stable LR |", "|---|" + "---|" * (len(lrs) + 1)]
    for arm in an.planned_arms(plan, lr_key):
        per_lr = table.get(arm, {})
        top = an.max_stable_lr(per_lr, plan.seeds)
        bound = "≥ " if top is not None and top == max(lrs) else ""
        lines.append(f"| {arm_label(arm)} | " + " | ".join(f"{per_lr[lr]}" if lr in per_lr else "–" for lr in lrs)
                     + f" | {bound}{_lr(top) if top is not None else 'none'} |")
    return lines + ["", "(≥: stable at the largest LR tried, so only a lower bound.)", ""]


def grad_section(rows: list[dict[str, Any]], plan: SweepPlan, lr_key: str, sweep_dir: Path) -> list[str]:
    lrs = plan.grid[lr_key]
    lines = ["## First block's gradient norm at the last step (mean over finished seeds; `train.log_norms`)", "",
             "| arm | " + " | ".join(_lr(lr) for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    done = [r for r in rows if r["status"] == "done"]
    for arm in an.planned_arms(plan, lr_key):
        cells = []
        for lr in lrs:
            g = [x for r in done if an.arm_of_row(r, lr_key) == arm and r["params"].get(lr_key) == lr
                 and (x := an.first_block_grad(r, sweep_dir)) is not None]
            cells.append(f"{sum(g) / len(g):.2e}" if g else "–")
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines + [""]


def task_curve(run_dir: Path, key: str) -> dict[int, float]:
    """step -> task metric ``key``: the evaluations during training (``train.eval_task``) and the final eval.json."""
    records = an.read_records(run_dir)
    curve = {r["step"]: r["task"][key] for r in records if key in r.get("task", {})}
    final = run_dir / "eval.json"
    if final.is_file() and records and key in (ev := json.loads(final.read_text())):
        curve[records[-1]["step"]] = ev[key]
    return curve


def curves_section(rows: list[dict[str, Any]], plan: SweepPlan, metric: str, higher: bool, lr_key: str, keys: list[str],
                   acquired: float, sweep_dir: Path, path: Path) -> list[str]:
    """Task metrics against step at each arm's best LR (mean over seeds), one panel per metric, and the first
    evaluated step at which the mean reaches ``acquired``."""
    best = best_lr_per_arm([r for r in rows if r["status"] == "done"], metric, lr_key, higher, seeds=plan.seeds)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), dpi=120, squeeze=False)
    lines = [f"## During training (each arm at its best LR, mean over seeds): first evaluated step with mean ≥ {acquired:g}", "",
             "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for arm, arm_rows in best.items():
        cells = []
        for ax, key in zip(axes[0], keys):
            series = [task_curve(sweep_dir / row["name"], key) for row in arm_rows]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            means = [statistics.fmean(s[t] for s in series) for t in steps]
            ax.plot(steps, means, marker=".", label=arm_label(arm))
            cells.append(next((str(t) for t, m in zip(steps, means) if m >= acquired), "not reached"))
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    for ax, key in zip(axes[0], keys):
        ax.set(xlabel="step", ylabel=key, title=key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return lines + ["", f"![during training]({path.name})", ""]


def plot_effects(results: list[an.ComparisonResult], path: Path) -> None:
    """Forest plot: every comparison's effect with its 95% interval, signed so that right = better for the treatment."""
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(results) + 1.5), dpi=120)
    for i, r in enumerate(results):
        if r.effect is None:
            continue
        s = 1 if r.comparison.higher_is_better else -1
        lo, hi = sorted((s * r.effect.lo, s * r.effect.hi))
        ax.errorbar([s * r.effect.mean], [i], xerr=[[s * r.effect.mean - lo], [hi - s * r.effect.mean]], fmt="o",
                    capsize=4, color="C0" if r.comparison.decides else "C7")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(results)), [f"{r.comparison.name} ({r.comparison.metric})" for r in results], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="improvement of treatment over baseline (95% t-interval; > 0 = better)", title="effects (blue: decides the verdict)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measured_text(results: list[an.ComparisonResult]) -> str:
    parts = [f"{r.comparison.name}: {r.comparison.metric} {fmt_effect(r.effect)} → {r.verdict}"
             for r in results if r.comparison.decides]
    return "; ".join(parts) + "."


def write_report(claim: Claim, budget_name: str, out: Path, sweep_plans: dict[str, SweepPlan], jobs: int) -> Path:
    budget = claim.budget(budget_name)
    assert isinstance(budget, SweepBudget)
    rep, lr_key = claim.report, claim.report.lr_key
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
    lines += comparison_table(results, lr_key)
    plot_effects(results, out / "effects.png")
    lines += ["![effects](effects.png)", ""]
    for name, plan in sweep_plans.items():
        comps = [c for c in comparisons if sweep_of(c, budget) == name]
        if not comps:
            continue
        metric, higher, sdir, tag = comps[0].metric, comps[0].higher_is_better, out / name, f"{name}_" if len(sweep_plans) > 1 else ""
        lines += [f"## Sweep `{name}`: {metric}, every arm × LR (mean ± sd over finished seeds; n/planned)", "",
                  f"Recipe `{rel_path(plan.base)}`, overrides "
                  f"`{' '.join(plan.overrides)}`; {plan.seeds} seeds.", ""]
        lines += grid_table(rows[name], plan, metric, lr_key) + [""]
        if rep.by and rep.by in plan.grid:
            lines += by_section(rows[name], plan, metric, higher, lr_key, rep.by, out / f"{tag}by_{rep.by.split('.')[-1]}.png")
        if rep.stability:
            lines += stability_section(rows[name], plan, lr_key, sdir)
        if rep.first_block_grad:
            lines += grad_section(rows[name], plan, lr_key, sdir)
        done = [r for r in rows[name] if r["status"] == "done"]
        if not done:
            continue
        if rep.curves:
            lines += curves_section(rows[name], plan, metric, higher, lr_key, rep.curves, rep.acquired, sdir, out / f"{tag}during_training.png")
        best = best_lr_per_arm(done, metric, lr_key, higher, seeds=plan.seeds)
        plot_loss_bands(best, sdir, out / f"{tag}loss_curves.png")
        plot_metric_vs_key(done, metric, lr_key, out / f"{tag}metric_vs_lr.png")
        lines += [f"![loss curves]({tag}loss_curves.png) ![{metric} vs lr]({tag}metric_vs_lr.png)"]
        for i, (prefix, family) in enumerate(numbered_metrics(done).items()):
            if prefix == comps[0].metric.rstrip("0123456789"):
                plot_family(best, family, prefix, out / f"{tag}per_{prefix.rstrip('_')}.png")
                lines.append(f"![{prefix}N]({tag}per_{prefix.rstrip('_')}.png)")
        lines.append("")
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
            "baseline_lr": r.baseline_lr, "treatment_values": r.treatment_values, "baseline_values": r.baseline_values,
            "effect": effect_dict(r.effect), "per_lr": {str(lr): effect_dict(x) for lr, x in r.per_lr}}

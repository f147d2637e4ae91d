"""Markdown sections of a sweep claim's report: the comparisons, the grid, the metric against a swept key,
stability, the first block's gradient, task metrics at the best LR and during training."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from archlab.report import Arm, arm_label, best_lr_per_arm, metric_of
from archlab.reproduce import analysis as an
from archlab.reproduce.figures import plot_panels, plot_points
from archlab.reproduce.render import fmt_effect, fmt_values
from archlab.sweep import SweepPlan

Rows = list[dict[str, Any]]


def lr_text(v: Any) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _table(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


EDGE_NOTE = ("*Lowest / highest of grid*: that arm's best LR is an end of its LR grid, so its optimum may lie outside the "
             "grid and the effect is measured against (or for) an arm short of its best. Widen the grid in the claim file "
             "and rerun: a grown sweep keeps its finished runs.")


def lr_cell(lr: Any, edge: str | None) -> str:
    """An arm's best LR, marked when it is an end of the grid (:func:`archlab.reproduce.analysis.grid_edge`)."""
    return lr_text(lr) + (f", {edge} of grid" if edge else "")


def comparisons(results: list[an.ComparisonResult], lr_key: str) -> list[str]:
    lines = ["## Comparisons (each arm at its best LR; treatment − baseline paired by seed)", ""]
    lines += _table(["comparison", "metric", "treatment (best LR): mean ± sd", "baseline (best LR): mean ± sd",
                     "effect (95% t-interval)", "seeds for 80% power", "decides", "verdict"])
    for r in results:
        c = r.comparison
        power = str(r.effect.seeds_80) if r.effect and r.effect.seeds_80 else "–"
        lines.append(f"| {c.name} | {c.metric} {'↑' if c.higher_is_better else '↓'} | {arm_label(r.treatment)} "
                     f"({lr_key.split('.')[-1]} {lr_cell(r.treatment_lr, r.treatment_edge)}): {fmt_values(r.treatment_values)} | "
                     f"{arm_label(r.baseline)} ({lr_cell(r.baseline_lr, r.baseline_edge)}): {fmt_values(r.baseline_values)} | "
                     f"{fmt_effect(r.effect)} | {power} | {'yes' if c.decides else 'no'} | **{r.verdict}** |")
    if any(r.treatment_edge or r.baseline_edge for r in results):
        lines += ["", EDGE_NOTE]
    lines += ["", "Effect at each common LR (both arms at the same LR, paired by seed; no selection):", ""]
    lines += _table(["comparison", *(f"{lr_key} = {lr_text(lr)}" for lr, _ in results[0].per_lr)])
    for r in results:
        lines.append(f"| {r.comparison.name} | " + " | ".join(
            "–" if e is None else f"{e.mean:+.4f} [{e.lo:+.4f}, {e.hi:+.4f}]" for _, e in r.per_lr) + " |")
    return lines + [""]


def _at(rows: Rows, arm: Arm, lr: Any, lr_key: str) -> Rows:
    return [r for r in rows if r["status"] == "done" and an.arm_of_row(r, lr_key) == arm and r["params"].get(lr_key) == lr]


def grid(rows: Rows, plan: SweepPlan, metric: str, lr_key: str) -> list[str]:
    """Every arm x LR: mean ± sd over the seeds that finished (n/planned)."""
    lrs = plan.grid.get(lr_key, [None])
    lines = _table(["arm", *(f"{lr_key.split('.')[-1]} {lr_text(lr)}" for lr in lrs)])
    for arm in an.planned_arms(plan, lr_key):
        cells = []
        for lr in lrs:
            vals = [m for r in _at(rows, arm, lr, lr_key) if (m := metric_of(r, metric)) is not None and math.isfinite(m)]
            cells.append(f"{fmt_values(vals)} ({len(vals)}/{plan.seeds})")
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _best(rows: Rows, plan: SweepPlan, metric: str, higher: bool, lr_key: str) -> dict[Arm, Rows]:
    return best_lr_per_arm([r for r in rows if r["status"] == "done"], metric, lr_key, higher, seeds=plan.seeds)


def _split(arms: list[Arm], key: str) -> dict[Arm, dict[Any, Arm]]:
    """arms grouped by everything but ``key``: rest -> {value of key: arm}."""
    out: dict[Arm, dict[Any, Arm]] = {}
    for arm in arms:
        out.setdefault(tuple((k, v) for k, v in arm if k != key), {})[dict(arm)[key]] = arm
    return out


def against(rows: Rows, plan: SweepPlan, metric: str, higher: bool, lr_key: str, by: str, path: Path) -> list[str]:
    """The metric at each arm's best LR against the swept key ``by`` (e.g. depth): table + plot."""
    best, values = _best(rows, plan, metric, higher, lr_key), plan.grid[by]
    lines = [f"## {metric} at the best LR against `{by}`", ""] + _table(["arm", *(f"{by.split('.')[-1]} = {v}" for v in values)])
    series = {}
    for rest, arms in _split(an.planned_arms(plan, lr_key), by).items():
        cells, pts = [], []
        for v in values:
            at = best.get(arms.get(v), [])
            vals = [m for r in at if (m := metric_of(r, metric)) is not None]
            cells.append(f"{fmt_values(vals)} (lr {lr_text(at[0]['params'][lr_key])})" if vals else "–")
            if vals:
                pts.append((v, statistics.fmean(vals), min(vals), max(vals)))
        lines.append(f"| {arm_label(rest)} | " + " | ".join(cells) + " |")
        series[arm_label(rest)] = pts
    plot_points(series, by, metric, f"{metric} at each arm's best LR (mean, bars = min..max over seeds)", path,
                log2=all(isinstance(v, (int, float)) for v in values))
    return lines + ["", f"![{metric} vs {by}]({path.name})", ""]


def stability(rows: Rows, plan: SweepPlan, lr_key: str, sweep_dir: Path) -> list[str]:
    table, lrs = an.stability(rows, lr_key, sweep_dir, plan.seeds), plan.grid[lr_key]
    lines = [f"## Stability (stable seeds of {plan.seeds} per LR; largest LR at which all were stable)", "",
             "Stable = finished without a NaN/Inf stop, final val loss below the unigram entropy of its own val targets "
             "(the best context-free prediction: a run on that plateau has collapsed) and at most "
             f"{an.SPIKE_MARGIN:g} nat above the lowest training loss the run logged (no late blow-up).", ""]
    lines += _table(["arm", *map(lr_text, lrs), "largest stable LR"])
    for arm in an.planned_arms(plan, lr_key):
        per_lr = table.get(arm, {})
        top = an.max_stable_lr(per_lr, plan.seeds)
        bound = "≥ " if top is not None and top == max(lrs) else ""
        largest = "–" if not per_lr else "none" if top is None else f"{bound}{lr_text(top)}"
        lines.append(f"| {arm_label(arm)} | " + " | ".join(str(per_lr[lr]) if lr in per_lr else "–" for lr in lrs) + f" | {largest} |")
    return lines + ["", "(≥: stable at the largest LR tried, so only a lower bound.)", ""]


def first_block_grad(rows: Rows, plan: SweepPlan, lr_key: str, sweep_dir: Path) -> list[str]:
    lrs = plan.grid[lr_key]
    lines = ["## First block's gradient norm at the last step (mean over finished seeds; `train.log_norms`)", ""]
    lines += _table(["arm", *map(lr_text, lrs)])
    for arm in an.planned_arms(plan, lr_key):
        cells = []
        for lr in lrs:
            g = [x for r in _at(rows, arm, lr, lr_key) if (x := an.first_block_grad(r, sweep_dir)) is not None]
            cells.append(f"{statistics.fmean(g):.2e}" if g else "–")
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


def task_metrics(rows: Rows, plan: SweepPlan, metric: str, higher: bool, lr_key: str, keys: list[str], acquired: float,
                 sweep_dir: Path, path: Path) -> list[str]:
    """The task metrics ``keys`` at each arm's best LR (by ``metric``): final values, and during training the first
    evaluated step at which their seed mean reaches ``acquired`` (table + one panel per key)."""
    best = _best(rows, plan, metric, higher, lr_key)
    lines = [f"## Task metrics at each arm's best LR (by {metric}; mean ± sd over seeds), and the first evaluated step "
             f"at which the seed mean reaches {acquired:g}", ""]
    lines += _table(["arm", "lr", *keys, *(f"{k} ≥ {acquired:g} at step" for k in keys)])
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {k: {} for k in keys}
    for arm, arm_rows in best.items():
        finals, reached = [], []
        for key in keys:
            finals.append(fmt_values([m for r in arm_rows if (m := metric_of(r, key)) is not None]))
            series = [task_curve(sweep_dir / r["name"], key) for r in arm_rows]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            means = [statistics.fmean(s[t] for s in series) for t in steps]
            panels[key][arm_label(arm)] = (steps, means)
            reached.append(next((str(t) for t, m in zip(steps, means) if m >= acquired), "not reached"))
        lines.append(f"| {arm_label(arm)} | {lr_text(arm_rows[0]['params'][lr_key])} | " + " | ".join(finals + reached) + " |")
    plot_panels(panels, path)
    return lines + ["", f"![task metrics during training]({path.name})", ""]

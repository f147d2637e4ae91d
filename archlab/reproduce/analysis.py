"""The numbers of a sweep claim: each comparison's arms at their best LR, the paired effect with its interval and
verdict, the effect at every common LR, stability per arm, the first block's gradient norm.

Selection as the papers do it: per arm (every swept key but seed and LR), the LR with the best mean over seeds,
among the LRs at which every planned seed finished with a finite metric. This picks each arm's best of the grid
on the same runs that measure it, so it flatters both arms a little (the effect at each common LR is reported too).
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.config import ConfigError, RunConfig, load_config
from archlab.report import Arm, arm_of, best_lr_per_arm, group, metric_of
from archlab.reproduce.claim import Comparison
from archlab.stats import PairedEffect, paired_effect, verdict
from archlab.sweep import SweepPlan

PENDING = "pending"
# stable: finished with finite losses, final val loss below the unigram entropy of its own val targets (it uses its
# context: a run stuck on the context-free plateau has collapsed), and at most SPIKE_MARGIN above the lowest training
# loss the run logged (a late blow-up it did not recover from fails).
SPIKE_MARGIN = 0.5


def _norm(value: Any) -> Any:
    return "" if value is None else value


def arm_of_row(row: dict[str, Any], lr_key: str) -> Arm:
    return arm_of(row, {"seed", lr_key})


def planned_arms(plan: SweepPlan, lr_key: str) -> list[Arm]:
    """Every arm of the plan's grid (swept keys but the LR), in grid order."""
    keys = [k for k in plan.grid if k != lr_key]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*(plan.grid[k] for k in keys))]


def find_arm(arms: list[Arm], pins: dict[str, Any], what: str) -> Arm:
    """The one arm whose keys match ``pins``; a ConfigError names the problem otherwise."""
    pins = {k: _norm(v) for k, v in pins.items()}
    keys = {k for arm in arms for k, _ in arm}
    unknown = sorted(set(pins) - keys)
    if unknown:
        raise ConfigError(f"{what}: {unknown} not swept (swept keys: {sorted(keys)})")
    hits = [a for a in arms if all(dict(a)[k] == v for k, v in pins.items())]
    if len(hits) != 1:
        raise ConfigError(f"{what}: {pins} matches {len(hits)} arms; pin every swept key but the LR (use 'at')")
    return hits[0]


@dataclass
class ComparisonResult:
    comparison: Comparison
    treatment: Arm
    baseline: Arm
    treatment_lr: Any = None
    baseline_lr: Any = None
    treatment_values: list[float] = field(default_factory=list)
    baseline_values: list[float] = field(default_factory=list)
    effect: PairedEffect | None = None
    verdict: str = PENDING
    per_lr: list[tuple[Any, PairedEffect | None]] = field(default_factory=list)
    treatment_edge: str | None = None  # 'lowest' / 'highest': the best LR sits at that end of the grid
    baseline_edge: str | None = None


def grid_edge(lr: Any, lrs: list[Any]) -> str | None:
    """'lowest' or 'highest' when ``lr`` is that end of a grid of at least two LRs: the arm's optimum may then lie
    outside the grid, and its number flatters the other arm."""
    if lr is None or len(lrs) < 2:
        return None
    return "lowest" if lr == min(lrs) else "highest" if lr == max(lrs) else None


def _by_seed(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: m for r in rows if (m := metric_of(r, metric)) is not None and math.isfinite(m)}


def _paired(a: dict[int, float], b: dict[int, float]) -> PairedEffect | None:
    seeds = sorted(a.keys() & b.keys())
    return paired_effect([a[s] - b[s] for s in seeds]) if len(seeds) >= 2 else None


@dataclass(frozen=True)
class Side:
    """One side of a comparison: an arm of a sweep (its plan and all its rows)."""

    plan: SweepPlan
    rows: list[dict[str, Any]]
    arm: Arm


def compare(c: Comparison, plan: SweepPlan, rows: list[dict[str, Any]], lr_key: str) -> ComparisonResult:
    """One comparison between two arms of one sweep (rows of every status)."""
    arms = planned_arms(plan, lr_key)
    treatment = find_arm(arms, {**c.at, **c.treatment}, f"compare {c.name!r} treatment")
    baseline = find_arm(arms, {**c.at, **c.baseline}, f"compare {c.name!r} baseline")
    return compare_sides(c, Side(plan, rows, treatment), Side(plan, rows, baseline), lr_key)


def compare_sides(c: Comparison, t: Side, b: Side, lr_key: str) -> ComparisonResult:
    """treatment - baseline, each at its best LR (every planned seed finished), paired by seed; also at each LR
    both grids share. Pending while some planned run of either arm has not run yet."""
    res = ComparisonResult(c, t.arm, b.arm)
    best = {}
    for side, name in ((t, "treatment"), (b, "baseline")):
        done = [r for r in side.rows if r["status"] == "done" and arm_of_row(r, lr_key) == side.arm]
        rows = best_lr_per_arm(done, c.metric, lr_key, c.higher_is_better, seeds=side.plan.seeds).get(side.arm)
        if rows:
            best[name] = _by_seed(rows, c.metric)
            setattr(res, f"{name}_lr", rows[0]["params"].get(lr_key))
            setattr(res, f"{name}_values", list(best[name].values()))
            setattr(res, f"{name}_edge", grid_edge(getattr(res, f"{name}_lr"), side.plan.grid.get(lr_key, [])))
    for lr in [v for v in t.plan.grid.get(lr_key, []) if v in b.plan.grid.get(lr_key, [])]:
        at = [_by_seed([r for r in s.rows if r["status"] == "done" and arm_of_row(r, lr_key) == s.arm
                        and r["params"].get(lr_key) == lr], c.metric) for s in (t, b)]
        res.per_lr.append((lr, _paired(*at)))
    if len(best) == 2:
        res.effect = _paired(best["treatment"], best["baseline"])
        res.verdict = verdict(res.effect, c.higher_is_better)
    elif all(len([r for r in s.rows if arm_of_row(r, lr_key) == s.arm]) >= len(s.plan.grid.get(lr_key, [None])) * s.plan.seeds
             for s in (t, b)):
        res.verdict = "not shown"  # every run is in, but some arm has no LR at which all seeds trained
    return res


def claim_verdict(results: list[ComparisonResult]) -> str:
    """shown iff every deciding comparison is shown; pending while any of them waits for runs."""
    deciding = [r.verdict for r in results if r.comparison.decides]
    if PENDING in deciding:
        return PENDING
    if all(v == "shown" for v in deciding):
        return "shown"
    return "contradicted" if "contradicted" in deciding else "not shown"


def unigram_entropy(cfg: RunConfig) -> float:
    """Entropy (nats) of the target tokens of a run's val batches (the ones its val loss is measured on): the loss
    of the best context-free predictor of exactly those tokens."""
    return _unigram(json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True), cfg.train.seq_len, cfg.seed,
                    cfg.train.eval_batches, cfg.train.batch_size // cfg.train.grad_accum)


@functools.lru_cache(maxsize=64)
def _unigram(data_json: str, seq_len: int, seed: int, n_batches: int, batch_size: int) -> float:
    from archlab.config import build_config
    from archlab.tasks import build_task

    task = build_task(build_config({"data": json.loads(data_json)}).data, seq_len)
    counts: collections.Counter[int] = collections.Counter()
    for i in range(n_batches):
        b = task.batch("val", seed, 0, i, batch_size)
        counts.update(b.tokens[:, 1:][b.loss_mask[:, 1:]].tolist())
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def is_stable(row: dict[str, Any], sweep_dir: Path) -> bool:
    """See SPIKE_MARGIN. A run stopped on NaN/Inf is 'failed' and so unstable."""
    run_dir = sweep_dir / row["name"]
    val = row.get("val_loss")
    if row["status"] != "done" or val is None or not math.isfinite(val) or not (run_dir / "config.yaml").is_file():
        return False
    losses = [r["loss"] for r in read_records(run_dir) if math.isfinite(r.get("loss", math.nan))]
    return bool(losses) and val < unigram_entropy(load_config(run_dir / "config.yaml")) and val <= min(losses) + SPIKE_MARGIN


def stability(rows: list[dict[str, Any]], lr_key: str, sweep_dir: Path, seeds: int) -> dict[Arm, dict[Any, int]]:
    """arm -> {lr: stable seeds} over every planned LR the arm has rows for."""
    out: dict[Arm, dict[Any, int]] = {}
    for arm, arm_rows in group(rows, {"seed", lr_key}).items():
        out[arm] = {lr: sum(is_stable(r, sweep_dir) for r in lr_rows)
                    for lr, lr_rows in sorted(((r[0]["params"][lr_key], r) for r in group(arm_rows, {"seed"}).values()))}
    return out


def max_stable_lr(per_lr: dict[Any, int], seeds: int) -> Any:
    """The largest LR at which every seed was stable (None if there is none)."""
    ok = [lr for lr, n in per_lr.items() if n >= seeds]
    return max(ok) if ok else None


def first_block_grad(row: dict[str, Any], sweep_dir: Path) -> float | None:
    """Block 0's gradient norm at the last logged step (train.log_norms)."""
    norms = next((r["norms"] for r in reversed(read_records(sweep_dir / row["name"])) if "norms" in r), None)
    return norms["grad_norm"][0] if norms and norms["grad_norm"] and norms["grad_norm"][0] is not None else None


def mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None

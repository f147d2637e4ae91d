"""Reports from a sweep's results table: markdown tables (mean ± std over seeds, best of the LR grid per arm,
paired comparisons across seeds) and matplotlib plots (loss curves with seed bands, metric vs LR, metric
per hop / length for task metrics that end in a number), PNGs linked from ``report.md``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from archlab.plots import plt
from archlab.stats import sign_flip_p
from archlab.sweep import SWEEP_FILE, load_results

Arm = tuple[tuple[str, Any], ...]


def metric_of(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric, row["metrics"].get(metric))
    return float(value) if isinstance(value, (int, float)) else None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.4f} ± {s:.4f}"


def arm_of(row: dict[str, Any], drop: set[str]) -> Arm:
    return tuple((k, v) for k, v in row["params"].items() if k not in drop)


def arm_label(arm: Arm) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v if v != '' else '∅'}" for k, v in arm) or "all"


def group(rows: list[dict[str, Any]], drop: set[str]) -> dict[Arm, list[dict[str, Any]]]:
    groups: dict[Arm, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[arm_of(r, drop)].append(r)
    return dict(groups)


def best_lr_per_arm(rows: list[dict[str, Any]], metric: str, lr_key: str, higher: bool,
                    seeds: int | None = None) -> dict[Arm, list[dict[str, Any]]]:
    """For each arm (swept keys minus seed and LR): the rows of the LR with the best mean metric.
    With ``seeds``, only LRs at which that many runs have a finite metric compete (a diverged seed rules its LR out)."""
    best: dict[Arm, list[dict[str, Any]]] = {}
    for arm, arm_rows in group(rows, {"seed", lr_key}).items():
        by_lr = group(arm_rows, {"seed"})
        scored = [(statistics.fmean(v), lr_rows) for lr_rows in by_lr.values()
                  if (v := [m for r in lr_rows if (m := metric_of(r, metric)) is not None and (seeds is None or math.isfinite(m))])
                  and (seeds is None or len(v) >= seeds)]
        if scored:
            best[arm] = (max if higher else min)(scored, key=lambda t: t[0])[1]
    return best


def paired_section(best: dict[Arm, list[dict[str, Any]]], metric: str, compare_key: str | None,
                   grid: dict[str, list[Any]] | None = None) -> list[str]:
    """Paired differences over seeds (same seed = same data order and init) with an exact sign-flip p-value.
    The baseline value of ``compare_key`` is its first value in the sweep's grid."""
    arms = list(best)
    if compare_key is None:
        pairs = [(arms[0], arm) for arm in arms[1:]]
        title = f"against `{arm_label(arms[0])}`" if arms else ""
    else:
        present = [dict(a)[compare_key] for a in arms if compare_key in dict(a)]
        values = [v for v in (grid or {}).get(compare_key, []) if v in present] or list(dict.fromkeys(present))
        if not values:
            raise ValueError(f"compare key {compare_key!r} is not a swept key")
        base_of = lambda a: tuple((k, values[0] if k == compare_key else v) for k, v in a)  # noqa: E731
        pairs = [(base_of(a), a) for a in arms if dict(a).get(compare_key) != values[0] and base_of(a) in best]
        title = f"of `{compare_key}` against `{values[0] if values[0] != '' else '∅'}`, other keys equal"
    if not pairs:
        return []
    lines = ["", f"## Paired comparison {title} (same seeds)", "",
             "| arm | baseline | mean difference | seeds | sign-flip p |", "|---|---|---|---|---|"]
    for base, arm in pairs:
        base_by_seed = {r["seed"]: metric_of(r, metric) for r in best[base]}
        diffs = [m - base_by_seed[r["seed"]] for r in best[arm]
                 if (m := metric_of(r, metric)) is not None and base_by_seed.get(r["seed"]) is not None]
        if diffs:
            p = sign_flip_p(diffs) if len(diffs) <= 16 else float("nan")
            lines.append(f"| {arm_label(arm)} | {arm_label(base)} | {statistics.fmean(diffs):+.4f} | {len(diffs)} | {p:.3f} |")
    return lines + ["", "With n seeds the smallest attainable p is 2/2^n (n=3: 0.25, n=5: 0.0625)."]


def first_loss(sweep_dir: Path, name: str) -> float | None:
    f = sweep_dir / name / "metrics.jsonl"
    lines = f.read_text().splitlines() if f.is_file() else []
    return json.loads(lines[0]).get("loss") if lines else None


def is_stable(row: dict[str, Any], sweep_dir: Path) -> bool:
    """Finished, and the final val loss is below the first logged training loss."""
    start = first_loss(sweep_dir, row["name"])
    return row["status"] == "done" and row["val_loss"] is not None and start is not None and row["val_loss"] < start


def stability_section(rows: list[dict[str, Any]], lr_key: str, sweep_dir: Path) -> list[str]:
    """Per arm and LR: how many seeds trained stably; the largest LR at which all did. Only when some did not."""
    stable = {r["name"]: is_stable(r, sweep_dir) for r in rows}
    if all(stable.values()):
        return []
    lrs = sorted({r["params"][lr_key] for r in rows})
    lines = ["", f"## Stability (stable seeds / seeds per `{lr_key}`; stable = finished with final val loss below the "
             "first logged training loss)", "", "| arm | " + " | ".join(map(str, lrs)) + " | max stable LR |",
             "|" + "---|" * (len(lrs) + 2)]
    for arm, arm_rows in sorted(group(rows, {"seed", lr_key}).items(), key=lambda kv: str(kv[0])):
        cells, ok = [], []
        for lr in lrs:
            at = [r for r in arm_rows if r["params"][lr_key] == lr]
            n_ok = sum(stable[r["name"]] for r in at)
            cells.append(f"{n_ok}/{len(at)}" if at else "–")
            if at and n_ok == len(at):
                ok.append(lr)
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + f" | {max(ok) if ok else 'none'} |")
    return lines


def numbered_metrics(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    """Metric families ending in a number (acc_k1, acc_k2, ...): prefix -> [(n, key)], families of ≥ 3."""
    fams: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for r in rows:
        for key, v in r["metrics"].items():
            m = re.match(r"^(.*?)(\d+)$", key)
            if m and isinstance(v, (int, float)):
                fams[m.group(1)].add((int(m.group(2)), key))
    return {p: sorted(v) for p, v in fams.items() if len(v) >= 3}


def plot_loss_bands(arms: dict[Arm, list[dict[str, Any]]], sweep_dir: Path, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for arm, rows in arms.items():
        curves = []
        for r in rows:
            f = sweep_dir / r["name"] / "metrics.jsonl"
            if f.is_file():
                curves.append({m["step"]: m["loss"] for m in map(json.loads, f.read_text().splitlines()) if "loss" in m})
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        mean = [statistics.fmean(c[s] for c in curves) for s in steps]
        ax.plot(steps, mean, label=arm_label(arm))
        ax.fill_between(steps, [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps], alpha=0.2)
    ax.set(xlabel="step", ylabel="train loss", title="loss (mean, band = min..max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_metric_vs_key(rows: list[dict[str, Any]], metric: str, key: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for arm, arm_rows in group(rows, {"seed", key}).items():
        pts = []
        for lr_arm, lr_rows in group(arm_rows, {"seed"}).items():
            vals = [m for r in lr_rows if (m := metric_of(r, metric)) is not None]
            if vals:
                pts.append((dict(lr_arm)[key], *mean_std(vals)))
        pts.sort()
        if pts:
            xs, ms, ss = zip(*pts)
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=arm_label(arm))
    if all(isinstance(dict(r["params"]).get(key), (int, float)) for r in rows):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_family(arms: dict[Arm, list[dict[str, Any]]], family: list[tuple[int, str]], prefix: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for arm, rows in arms.items():
        xs, ms, ss = [], [], []
        for n, key in family:
            vals = [float(r["metrics"][key]) for r in rows if key in r["metrics"]]
            if vals:
                m, s = mean_std(vals)
                xs.append(n), ms.append(m), ss.append(s)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=arm_label(arm))
    ax.set(xlabel=prefix.rstrip("_=") or "n", ylabel=prefix + "N", title=f"{prefix}N per arm (best LR; mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(sweep_dir: Path, metric: str = "val_loss", lr_key: str | None = None, higher_is_better: bool = False,
                 compare_key: str | None = None) -> Path:
    """Write ``report.md`` (+ PNGs) into the sweep directory and return its path.

    ``compare_key``: pair each value of this swept key with its first value, all other keys equal
    (e.g. ``model.multipliers``: does vector beat none under AdamW, and under Muon?); default: every arm
    against the first arm."""
    rows_all = load_results(sweep_dir)
    done = [r for r in rows_all if r["status"] == "done"]
    failed = [r for r in rows_all if r["status"] != "done"]
    swept = sorted({k for r in rows_all for k in r["params"]} - {"seed"})
    if lr_key is None:
        lr_key = next((k for k in swept if k.endswith(".lr") or k.endswith("_lr")), None)
    direction = "higher is better" if higher_is_better else "lower is better"
    lines = [f"# Sweep report: `{sweep_dir}`", "", f"{len(done)} runs done, {len(failed)} failed; metric **{metric}** ({direction}).", ""]

    lines += ["## All configurations (mean ± std over seeds)", "", "| " + " | ".join(swept) + f" | n | {metric} |", "|" + "---|" * (len(swept) + 2)]
    for arm, rows in sorted(group(done, {"seed"}).items(), key=lambda kv: str(kv[0])):
        vals = [m for r in rows if (m := metric_of(r, metric)) is not None]
        params = dict(arm)
        lines.append("| " + " | ".join(str(params.get(k, "")) or "∅" for k in swept) + f" | {len(vals)} | {fmt(vals)} |")

    best = best_lr_per_arm(done, metric, lr_key, higher_is_better) if lr_key else group(done, {"seed"})
    if lr_key:
        lines += ["", f"## Best of the LR grid per arm (`{lr_key}`)", "", f"| arm | best {lr_key} | n | {metric} |", "|---|---|---|---|"]
        for arm, rows in best.items():
            vals = [m for r in rows if (m := metric_of(r, metric)) is not None]
            lines.append(f"| {arm_label(arm)} | {rows[0]['params'][lr_key]} | {len(vals)} | {fmt(vals)} |")

    meta = sweep_dir / SWEEP_FILE
    lines += paired_section(best, metric, compare_key, json.loads(meta.read_text())["grid"] if meta.is_file() else None)
    if lr_key:
        lines += stability_section(rows_all, lr_key, sweep_dir)

    lines += ["", "## Plots", ""]
    plot_loss_bands(best, sweep_dir, sweep_dir / "loss_curves.png")
    lines.append("![loss curves](loss_curves.png)")
    if lr_key:
        plot_metric_vs_key(done, metric, lr_key, sweep_dir / "metric_vs_lr.png")
        lines.append("![metric vs lr](metric_vs_lr.png)")
    for i, (prefix, family) in enumerate(numbered_metrics(done).items()):
        name = f"family_{i}.png"
        plot_family(best, family, prefix, sweep_dir / name)
        lines.append(f"![{prefix}N]({name})")

    if failed:
        lines += ["", "## Failed runs", "", "| run | error |", "|---|---|"]
        lines += [f"| {r['name']} | {(r['error'] or '').replace('|', '/')[:300]} |" for r in failed]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

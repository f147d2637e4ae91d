"""Residual style x depth x learning rate: final loss and the largest stable LR (KEEL vs pre-LN vs post-LN).

    nice -n 10 .venv/bin/python scripts/keel_depth.py                       # runs + table + plots
    nice -n 10 .venv/bin/python scripts/keel_depth.py --styles deepnorm sandwich
    .venv/bin/python scripts/keel_depth.py --report-only                    # table + plots from saved runs

Every run trains ``configs/keel_depth.yaml`` (byte-level text, d_model=32, one CPU thread) through
``archlab.train.train`` with ``model.residual``, ``model.n_layers`` (= depth / 2: a block is attention + MLP,
two sub-layers), ``optim.lr`` and ``seed`` overridden. A run is one line of ``results/keel/runs.jsonl``;
finished runs (same style, depth, lr, seed, steps) are skipped, so the script can be re-started and re-run
with more styles. Definitions:

* initial loss: the training loss of step 1 (before any update; ~ln 256 = 5.55);
* final loss: the validation loss after the last step (``eval_batches`` held-out batches);
* diverged: ``TrainingDiverged`` (NaN/Inf loss or gradient) or final loss > initial loss;
* stable at an LR: every seed finished with final loss < initial loss - ``--margin``;
* max stable LR (style, depth): the largest LR of the grid that is stable (None if none is);
* max LR with block-0 grad alive: the largest LR where every seed ends with block 0's gradient norm > 1e-6
  (``train.log_norms``): above it the first block no longer trains, even when the loss still falls;
* best loss (style, depth): the lowest mean-over-seeds final loss over the LRs where no seed diverged.

Writes ``results/keel/summary.csv``, ``summary.json``, ``table.md``, ``loss_vs_depth.png`` and
``max_lr_vs_depth.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

from archlab.config import load_config
from archlab.train import TrainingDiverged, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
STYLE_ORDER = ["pre", "post", "keel", "deepnorm", "sandwich"]
GRAD_ALIVE = 1e-6  # block 0 still receives a gradient: its grad norm at the last step exceeds this


def key(r: dict) -> tuple:
    return (r["style"], r["depth"], r["lr"], r["seed"], r["steps"])


def run_one(config: Path, style: str, depth: int, lr: float, seed: int, runs_dir: Path, extra: list[str],
            keep: bool = False) -> dict:
    name = f"{style}-d{depth}-lr{lr:g}-s{seed}"
    shutil.rmtree(runs_dir / name, ignore_errors=True)  # a run killed half-way is redone from scratch
    overrides = [f"model.residual={style}", f"model.n_layers={depth // 2}", f"optim.lr={lr}", f"seed={seed}",
                 f"out_dir={runs_dir}", f"name={name}", *extra]
    cfg = load_config(config, overrides)
    t0, c0 = time.time(), time.process_time()
    rec = {"style": style, "depth": depth, "n_layers": depth // 2, "lr": lr, "seed": seed, "steps": cfg.train.steps,
           "overrides": overrides}
    try:
        res = train(cfg, resume="never")
        metrics = read_metrics(res.run_dir)
        final, reason = float(res.eval["loss"]), None
    except TrainingDiverged as err:
        metrics = read_metrics(runs_dir / name)
        final, reason = float("nan"), str(err)
    curve = [(m["step"], m["loss"]) for m in metrics]
    initial = curve[0][1] if curve and curve[0][0] == 1 else math.log(256)
    norms = next((m["norms"] for m in reversed(metrics) if "norms" in m), None)
    diverged = reason is not None or not math.isfinite(final) or final > initial
    rec.update({
        "initial_loss": initial, "final_loss": final, "final_train_loss": curve[-1][1] if curve else float("nan"),
        "max_train_loss": max((l for _, l in curve), default=float("nan")), "diverged": diverged,
        "diverged_reason": reason or ("final loss > initial loss" if diverged else None),
        "grad_norm_first_block": norms["grad_norm"][0] if norms else None,
        "grad_norm_last_block": norms["grad_norm"][-1] if norms else None,
        "act_rms_last_block": norms["act_rms"][-1] if norms else None,
        "curve": curve, "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0,
    })
    if not keep:  # the record holds what the table needs; checkpoints of ~200 runs would fill the disk
        shutil.rmtree(runs_dir / name, ignore_errors=True)
    return rec


def summarise(records: list[dict], margin: float) -> list[dict]:
    rows = []
    groups: dict[tuple[str, int], dict[float, list[dict]]] = {}
    for r in records:
        groups.setdefault((r["style"], r["depth"]), {}).setdefault(r["lr"], []).append(r)
    for (style, depth), by_lr in sorted(groups.items(), key=lambda kv: (STYLE_ORDER.index(kv[0][0]), kv[0][1])):
        seeds = max(len(v) for v in by_lr.values())
        stable = [lr for lr, rs in by_lr.items() if len(rs) == seeds and all(
            not r["diverged"] and r["final_loss"] < r["initial_loss"] - margin for r in rs)]
        grads_ok = [lr for lr, rs in by_lr.items() if len(rs) == seeds and all(
            not r["diverged"] and (r["grad_norm_first_block"] or 0.0) > GRAD_ALIVE for r in rs)]
        finished = {lr: statistics.fmean(r["final_loss"] for r in rs) for lr, rs in by_lr.items()
                    if len(rs) == seeds and not any(r["diverged"] for r in rs)}
        best_lr = min(finished, key=finished.get) if finished else None
        best = by_lr[best_lr] if best_lr is not None else []
        per_lr = {f"{lr:g}": ("div" if any(r["diverged"] for r in rs) else f"{statistics.fmean(r['final_loss'] for r in rs):.3f}")
                  for lr, rs in sorted(by_lr.items())}
        rows.append({
            "style": style, "depth": depth, "n_layers": depth // 2, "seeds": seeds,
            "max_stable_lr": max(stable) if stable else None,
            "max_stable_is_top": bool(stable) and max(stable) == max(by_lr),  # a lower bound: the grid ends there
            "max_lr_block0_grad_alive": max(grads_ok) if grads_ok else None,
            "best_lr": best_lr, "best_loss": finished.get(best_lr) if best_lr is not None else None,
            "best_loss_spread": (max(r["final_loss"] for r in best) - min(r["final_loss"] for r in best)) if best else None,
            "grad_first_block_at_best": statistics.fmean(r["grad_norm_first_block"] for r in best) if best and all(r["grad_norm_first_block"] is not None for r in best) else None,
            "lrs": sorted(by_lr), "loss_by_lr": per_lr,
        })
    return rows


def table(rows: list[dict]) -> str:
    lrs = sorted({lr for r in rows for lr in r["lrs"]})
    head = ("| style | sub-layers | max stable LR | max LR with block-0 grad > 1e-6 | best LR | best final loss (mean; seed spread) | block-0 grad norm at best LR | "
            + " | ".join(f"loss @ {lr:g}" for lr in lrs) + " |")
    sep = "|" + "---|" * (7 + len(lrs))
    lines = [head, sep]
    for r in rows:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        top = "≥ " if r["max_stable_is_top"] else ""
        lines.append(f"| {r['style']} | {r['depth']} | {top}{f(r['max_stable_lr'], 'g')} | {f(r['max_lr_block0_grad_alive'], 'g')} | "
                     f"{f(r['best_lr'], 'g')} | "
                     f"{f(r['best_loss'], '.3f')}; {f(r['best_loss_spread'], '.3f')} | {f(r['grad_first_block_at_best'], '.2e')} | "
                     + " | ".join(r["loss_by_lr"].get(f"{lr:g}", "") for lr in lrs) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, margin: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = [s for s in STYLE_ORDER if any(r["style"] == s for r in rows)]
    lo = min(lr for r in rows for lr in r["lrs"])
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, s in enumerate(styles):
        pts = [(r["depth"], r["best_loss"]) for r in rows if r["style"] == s and r["best_loss"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=s)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth (sub-layers = 2 x blocks)")
    ax.set_ylabel("final val loss at the best LR (nats/byte)")
    ax.set_title("loss vs depth, best LR of the grid, mean over seeds")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "loss_vs_depth.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, s in enumerate(styles):
        rs = [r for r in rows if r["style"] == s]
        depths = [r["depth"] for r in rs]
        vals = [r["max_stable_lr"] if r["max_stable_lr"] is not None else lo / 3 for r in rs]
        jitter = 1 + 0.04 * (i - (len(styles) - 1) / 2)  # separate overlapping markers
        xs = [d * jitter for d in depths]
        ax.plot(xs, vals, color=f"C{i}", label=s)
        for x, v, r in zip(xs, vals, rs):  # hollow marker: stable at the largest LR tried, so only a lower bound
            ax.plot([x], [v], marker="os^Dv"[i % 5], color=f"C{i}", mfc="none" if r["max_stable_is_top"] else f"C{i}")
    ax.axhline(lo / 3, color="grey", lw=0.6, ls=":")
    ax.text(ax.get_xlim()[0], lo / 3, " none stable", va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth (sub-layers = 2 x blocks)")
    ax.set_ylabel("max stable LR in the grid (AdamW)")
    ax.set_title(f"largest LR where every seed ends below initial loss - {margin:g}\n(hollow: stable at the largest LR tried = lower bound)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "max_lr_vs_depth.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "keel_depth.yaml")
    ap.add_argument("--styles", nargs="+", default=["pre", "post", "keel"], choices=STYLE_ORDER)
    ap.add_argument("--depths", nargs="+", type=int, default=[8, 32, 128, 256], help="sub-layers (even)")
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--margin", type=float, default=0.3, help="stable: final loss < initial loss - margin (nats)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "keel")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "keel_depth")
    ap.add_argument("--keep-runs", action="store_true", help="keep each run directory (checkpoints, metrics.jsonl)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from runs.jsonl")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for every run (e.g. train.steps=60)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("archlab").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    records = [json.loads(ln) for ln in runs_path.read_text().splitlines() if ln.strip()] if runs_path.is_file() else []
    steps = load_config(args.config, args.overrides).train.steps
    command = ("nice -n 10 .venv/bin/python scripts/keel_depth.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    commands_path = args.out / "commands.txt"  # every sweep invocation that added runs, in order
    if not args.report_only:
        with open(commands_path, "a") as f:
            f.write(command + "\n")
        if any(d % 2 for d in args.depths):
            raise SystemExit("--depths are sub-layer counts and must be even (n_layers = depth / 2)")
        done = {key(r) for r in records}
        for depth in args.depths:  # shallow first: a partial sweep still has whole depths
            for style in args.styles:
                for lr in args.lrs:
                    for seed in args.seeds:
                        if (style, depth, lr, seed, steps) in done:
                            continue
                        r = run_one(args.config, style, depth, lr, seed, args.runs_dir, args.overrides, args.keep_runs)
                        logging.info("%-8s depth %3d lr %-6g seed %d: initial %.3f final %.3f%s (%.0f s cpu)", style, depth, lr, seed,
                                     r["initial_loss"], r["final_loss"], "  DIVERGED" if r["diverged"] else "", r["cpu_s"])
                        with open(runs_path, "a") as f:
                            f.write(json.dumps(r) + "\n")
                        records.append(r)
    rows = summarise([r for r in records if r["steps"] == steps], args.margin)  # one budget per table
    commands = commands_path.read_text().splitlines() if commands_path.is_file() else [command]
    text = table(rows)
    (args.out / "table.md").write_text(text + f"\n\nmargin {args.margin:g} nats; {steps} steps; commands:\n\n"
                                       + "".join(f"    {c}\n" for c in commands))
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, "margin": args.margin, "steps": steps, "commands": commands}, indent=2))
    with open(args.out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in ("lrs", "loss_by_lr")] if rows else [])
        w.writeheader()
        for r in rows:
            w.writerow({k: v for k, v in r.items() if k not in ("lrs", "loss_by_lr")})
    print(text)
    for p in plot(rows, args.out, args.margin) if rows else []:
        print("wrote", p)


if __name__ == "__main__":
    main()

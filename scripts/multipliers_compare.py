"""Learnable multipliers vs baseline, under AdamW and under Muon, several seeds, same budget.

    nice -n 10 .venv/bin/python scripts/multipliers_compare.py            # runs + table + plots
    .venv/bin/python scripts/multipliers_compare.py --report-only          # table + plots from saved JSON

Each run trains ``configs/multipliers_tiny.yaml`` with ``optim.name`` and ``model.multipliers`` overridden and
writes ``results/multipliers/runs/<arm>-s<seed>.json`` (final val loss, loss curve, learned multipliers).
Finished runs are skipped, so the script can be re-started. Then it writes ``summary.json`` and ``table.md``
(mean ± sample std over seeds of the final val loss) and two figures: the learned row-multiplier
distributions per layer (violins, seeds pooled) and the training-loss curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from archlab.config import load_config
from archlab.train import read_metrics, train

ROOT = Path(__file__).resolve().parents[1]


def arm_name(opt: str, mult: str) -> str:
    return f"{opt}-{mult}"


def run_one(config: Path, opt: str, mult: str, seed: int, runs_dir: Path, out: Path, extra: list[str]) -> dict:
    name = f"{arm_name(opt, mult)}-s{seed}"
    path = out / "runs" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    overrides = [f"optim.name={opt}", f"model.multipliers={mult}", f"seed={seed}", f"out_dir={runs_dir}", f"name={name}", *extra]
    cfg = load_config(config, overrides)
    t0 = time.time()
    res = train(cfg, resume="auto")
    ckpt = res.run_dir / f"step_{res.steps}" / "model.safetensors"
    mults: dict[str, dict[str, list[float]]] = {}
    for key, value in load_file(ckpt).items():
        if ".parametrizations.weight.0." in key:
            layer, kind = key.split(".parametrizations.weight.0.")
            mults.setdefault(layer, {})[kind] = value.float().reshape(-1).tolist()
    record = {
        "name": name, "optim": opt, "multipliers": mult, "seed": seed, "overrides": overrides,
        "config": cfg.to_dict(), "val_loss": res.eval["loss"], "final_train_loss": res.final_loss,
        "steps": res.steps, "wall_s": time.time() - t0,
        "curve": [(m["step"], m["loss"]) for m in read_metrics(res.run_dir)],
        "multipliers_learned": mults,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def summarise(records: list[dict], arms: list[tuple[str, str]], out: Path, command: str) -> str:
    rows, summary = [], {}
    for opt, mult in arms:
        vals = [r["val_loss"] for r in records if r["optim"] == opt and r["multipliers"] == mult]
        if not vals:
            continue
        mean, std = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary[arm_name(opt, mult)] = {"optim": opt, "multipliers": mult, "val_loss_mean": mean, "val_loss_std": std,
                                       "val_losses": vals, "seeds": len(vals)}
        rows.append(f"| {opt} | {mult} | {mean:.4f} ± {std:.4f} | {', '.join(f'{v:.4f}' for v in vals)} |")
    for opt in sorted({o for o, _ in arms}):  # paired (same seed) difference, multipliers - baseline
        base = {r["seed"]: r["val_loss"] for r in records if r["optim"] == opt and r["multipliers"] == "none"}
        for mult in sorted({m for o, m in arms if o == opt and m != "none"}):
            other = {r["seed"]: r["val_loss"] for r in records if r["optim"] == opt and r["multipliers"] == mult}
            diffs = [other[s] - base[s] for s in sorted(set(base) & set(other))]
            if len(diffs) > 1:
                summary[f"{opt}:{mult}-none"] = {"paired_diff_mean": statistics.fmean(diffs), "paired_diff_std": statistics.stdev(diffs), "diffs": diffs}
    table = "| optimiser | multipliers | final val loss (mean ± std) | per seed |\n|---|---|---|---|\n" + "\n".join(rows)
    paired = [f"- {k}: paired diff {v['paired_diff_mean']:+.4f} ± {v['paired_diff_std']:.4f} (per seed {', '.join(f'{d:+.4f}' for d in v['diffs'])})"
              for k, v in summary.items() if "paired_diff_mean" in v]
    text = f"{table}\n\n" + "\n".join(paired) + f"\n\ncommand: `{command}`\n"
    (out / "summary.json").write_text(json.dumps({"arms": summary, "command": command}, indent=2))
    (out / "table.md").write_text(text)
    return text


def segments(layer: str, values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Split fused rows for the plot: wqkv -> q, k, v (MHA: equal thirds), w_in -> gate, up (halves)."""
    short = layer.replace("blocks.", "L").replace(".mixer.", " ").replace(".mlp.", " ")
    if layer.endswith("wqkv") and len(values) % 3 == 0:
        return [(f"{short[:-4]}{s}", v) for s, v in zip("qkv", np.split(values, 3))]
    if layer.endswith("w_in") and len(values) % 2 == 0:
        return [(f"{short[:-4]}{s}", v) for s, v in zip(("gate", "up"), np.split(values, 2))]
    return [(short, values)]


_ORDER = ["q", "k", "v", "wo", "gate", "up", "w_in", "w_down"]


def _plot_order(label: str) -> tuple:
    """'L3 q' -> (3, 0): by block, then q, k, v, wo, gate, up, w_down; other names alphabetically after."""
    block, _, part = label.partition(" ")
    idx = int(block[1:]) if block[1:].isdigit() else 10**6
    return (idx, _ORDER.index(part) if part in _ORDER else len(_ORDER), label)


def plot(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    with_mult = [r for r in records if r["multipliers"] != "none" and r["multipliers_learned"]]
    opts = sorted({r["optim"] for r in with_mult})
    if opts:
        fig, axes = plt.subplots(len(opts), 1, figsize=(14, 3.6 * len(opts)), squeeze=False)
        for ax, opt in zip(axes[:, 0], opts):
            runs = [r for r in with_mult if r["optim"] == opt]
            pooled: dict[str, list[np.ndarray]] = {}
            for r in runs:
                for layer, kinds in r["multipliers_learned"].items():
                    if "row" in kinds:
                        for label, v in segments(layer, np.asarray(kinds["row"])):
                            pooled.setdefault(label, []).append(v)
            labels = sorted(pooled, key=_plot_order)
            data = [np.concatenate(pooled[k]) for k in labels]
            ax.violinplot(data, showmedians=True, widths=0.8)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, fontsize=8)
            ax.set_ylabel("row multiplier r_i")
            ax.set_title(f"{opt} + {runs[0]['multipliers']} multipliers: learned row multipliers per layer ({len(runs)} seeds pooled)")
        fig.tight_layout()
        p = out / "multipliers_violin.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {}
    for r in sorted(records, key=lambda r: (r["optim"], r["multipliers"], r["seed"])):
        arm = arm_name(r["optim"], r["multipliers"])
        c = colors.setdefault(arm, f"C{len(colors)}")
        steps, losses = zip(*r["curve"])
        ax.plot(steps, losses, color=c, lw=0.9, alpha=0.8, label=arm if r["seed"] == min(x["seed"] for x in records) else None)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/byte)")
    ax.set_ylim(top=3.0)
    ax.legend()
    ax.set_title("training loss, all seeds")
    fig.tight_layout()
    p = out / "loss_curves.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(p)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "multipliers_tiny.yaml")
    ap.add_argument("--optims", nargs="+", default=["adamw", "muon"])
    ap.add_argument("--multipliers", nargs="+", default=["none", "vector"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "multipliers")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "multipliers")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from saved JSON")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides applied to every run (e.g. train.steps=300)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    arms = [(o, m) for o in args.optims for m in args.multipliers]
    if args.report_only:
        records = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))]
    else:
        records = []
        for seed in args.seeds:  # seed-major: a partial sweep still has every arm
            for opt, mult in arms:
                r = run_one(args.config, opt, mult, seed, args.runs_dir, args.out, args.overrides)
                logging.info("%s: val loss %.4f (%.0f s)", r["name"], r["val_loss"], r["wall_s"])
                records.append(r)
    command = "nice -n 10 .venv/bin/python scripts/multipliers_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.report_only:  # keep the command that produced the runs
        command = "nice -n 10 .venv/bin/python scripts/multipliers_compare.py " + " ".join(records[0]["overrides"][5:]) if records else command
    print(summarise(records, arms, args.out, command.strip()))
    for p in plot(records, args.out):
        print("wrote", p)


if __name__ == "__main__":
    main()

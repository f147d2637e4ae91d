"""The demo behind ``make demo``: a small real comparison that finishes in minutes on 2 CPU cores.

Two byte-level models train on the Python standard library's sources with the same data, seed and budget:
a Llama-style Transformer (RoPE) and the same model with Canon layers A, B, C, D. It prints a table of
held-out losses, a sample from each, and writes a loss plot.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from archlab.config import load_config
from archlab.plots import plot_curves
from archlab.run_dir import load_run
from archlab.train import read_metrics, train

ARMS = {"llama (RoPE)": [], "llama + Canon-ABCD": ["model.canon=ABCD"]}
BASE = [
    "model.d_model=128", "model.n_layers=4", "model.mixer.n_heads=4",
    "train.seq_len=128", "train.batch_size=16", "train.log_every=10", "train.eval_batches=8",
    "optim.lr=3e-3", "optim.warmup_steps=20", "train.precision=fp32",
]


def run_demo(out_dir: Path, steps: int, progress_cls, out: Console) -> dict[str, float]:
    results, curves = {}, {}
    for label, extra in ARMS.items():
        slug = label.split()[0] + ("-canon" if extra else "")
        cfg = load_config(None, BASE + extra + [f"train.steps={steps}", f"out_dir={out_dir}", f"name={slug}"])
        out.print(f"[bold]{label}[/]: training {steps} steps on Python stdlib sources (byte-level)")
        res = train(cfg, progress=progress_cls(label), resume="auto")
        results[label] = res.eval["loss"]
        curves[label] = read_metrics(res.run_dir)
        out.print(f"  run dir {res.run_dir}  held-out loss {res.eval['loss']:.4f} ({res.eval['loss'] / 0.6931:.3f} bits/byte)")
        out.print(_sample(res.run_dir), highlight=False, markup=False)
    table = Table("model", "held-out loss (nats/byte)", "bits/byte", title=f"demo: {steps} steps each, same data and seed")
    for label, loss in results.items():
        table.add_row(label, f"{loss:.4f}", f"{loss / 0.6931:.3f}")
    out.print(table)
    plot = plot_curves(curves, out_dir / "loss.png", title="train loss, Python stdlib bytes")
    out.print(f"plot: {plot}")
    return results


def _sample(run_dir: Path) -> str:
    _, model, task = load_run(run_dir)
    ids = torch.tensor([task.encode("def ")])
    gen = model.generate(ids, 120, temperature=0.7, generator=torch.Generator().manual_seed(0))
    return "  sample: " + repr(task.decode(gen[0].tolist()))

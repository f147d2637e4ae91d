"""Helpers of scripts/recurrence_recipe.sh (retrofitted recurrence at CPU scale).

  export RUN HF_DIR              run's newest checkpoint (Llama-shaped LM) -> HF LlamaForCausalLM directory
  matched-steps HEAL STATIC [K=V ...]  steps of the STATIC recipe with the training FLOPs of the HEAL recipe
                                       (both YAML; overrides apply to HEAL)
  report OUT RESULTS_DIR [HEAL:STATIC ...]  evaluate every model of the recipe on the same held-out batches
                                            -> results.{json,md}, plot (default pair heal:static)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from archlab.checkpoint import latest_intact, load_model_weights
from archlab.config import load_config
from archlab.evaluate import model_metrics, recurrence_sweep
from archlab.model.lm import LM
from archlab.model.recurrence import RecurrentLM, build_lm, sample_depth
from archlab.plots import plot_recurrence_sweep
from archlab.tasks import build_task
from archlab.train import build_model

RS = [1, 2, 4, 8, 16]
EVAL_BATCHES = 6


def load_run(run: Path) -> tuple[Any, LM]:
    """(config, model at the newest checkpoint) of a run directory."""
    cfg = load_config(run / "config.yaml")
    ckpt, _ = latest_intact(run)
    if ckpt is None:
        sys.exit(f"{run}: no intact checkpoint")
    model = build_lm(cfg.model)
    load_model_weights(model, ckpt.path)
    return cfg, model.eval()


def export(run: Path, hf_dir: Path) -> None:
    from archlab.hf_llama import to_llama

    _, model = load_run(run)
    to_llama(model).save_pretrained(hf_dir)
    print(f"wrote {hf_dir}")


def training_flops(recipe: Path, overrides: list[str] | None = None) -> float:
    """Training FLOPs of a recurrent recipe, from the (n, k) draws of every micro-batch (a pure function of the step)."""
    cfg = load_config(recipe, overrides)
    model, cfg = build_model(cfg, build_task(cfg.data, cfg.train.seq_len))
    tc, rc = cfg.train, cfg.model.recurrence
    tokens = tc.batch_size // tc.grad_accum * tc.seq_len
    total = 0.0
    for step in range(tc.steps):
        for i in range(tc.grad_accum):
            n, k = sample_depth(rc, cfg.seed, step, i, tc.steps)
            total += model.flops_per_token(tc.seq_len, n + k, k) * tokens
    return total


def matched_steps(heal: Path, static_config: Path, overrides: list[str]) -> int:
    cfg = load_config(static_config)
    model, cfg = build_model(cfg, build_task(cfg.data, cfg.train.seq_len))
    per_step = model.flops_per_token(cfg.train.seq_len) * cfg.train.batch_size * cfg.train.seq_len
    return round(training_flops(heal, overrides) / per_step)


def static_point(cfg: Any, model: LM) -> dict[str, Any]:
    task = build_task(cfg.data, cfg.train.seq_len)
    m = model_metrics(model, task, cfg.seed, EVAL_BATCHES, cfg.train.batch_size)
    return {**m, "flops_per_token": model.flops_per_token(cfg.train.seq_len) / 3}  # training = 3 x forward


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """compute() once; the result is kept in ``path`` (JSON) so that evaluations can run as soon as their model exists."""
    if not path.is_file():
        path.write_text(json.dumps(compute()))
    return json.loads(path.read_text())


def sweep(out: Path, heal: str, weights: Path) -> list[dict[str, Any]]:
    """recurrence_sweep of run ``heal``'s model with the given weights (a step_N or the retrofit directory)."""
    cfg = load_config(out / heal / "config.yaml")
    model = RecurrentLM(cfg.model)
    load_model_weights(model, weights)
    task = build_task(cfg.data, cfg.train.seq_len)
    return recurrence_sweep(model.eval(), task, cfg.seed, RS, EVAL_BATCHES, cfg.train.batch_size, cfg.train.seq_len)


def report(out: Path, results: Path, pairs: list[str]) -> None:
    """pairs: 'HEAL:STATIC' run names, a healing run and its FLOPs-matched static run (default heal:static)."""
    torch.set_num_threads(1)
    pre_cfg = load_config(out / "pretrain" / "config.yaml")
    first = pairs[0].split(":")[0]
    sweeps = {"retrofit (2,2,2), not healed": cached(out / "eval_retrofit.json", lambda: sweep(out, first, out / "retrofit"))}
    statics = {f"8-layer Llama, pretrained {pre_cfg.train.steps} steps": cached(out / "eval_pretrain.json", lambda: static_point(*load_run(out / "pretrain")))}
    flops = {}
    for pair in pairs:
        heal, stat = pair.split(":")
        heal_cfg, static_cfg = load_config(out / heal / "config.yaml"), load_config(out / stat / "config.yaml")
        ckpt = latest_intact(out / heal)[0].path
        sweeps[f"retrofit (2,2,2), healed {heal_cfg.train.steps} steps"] = cached(out / f"eval_{heal}.json", lambda: sweep(out, heal, ckpt))
        label = f"8-layer Llama, +{static_cfg.train.steps} steps (FLOPs of {heal_cfg.train.steps} healing steps)"
        statics[label] = cached(out / f"eval_{stat}.json", lambda: static_point(*load_run(out / stat)))
        static = build_model(static_cfg, build_task(static_cfg.data, static_cfg.train.seq_len))[0]
        tc = static_cfg.train
        flops[heal] = {"heal_training_flops": training_flops(out / heal / "config.yaml"),
                       "static_training_flops": static.flops_per_token(tc.seq_len) * tc.steps * tc.batch_size * tc.seq_len}
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps({"sweeps": sweeps, "static": statics, "training_flops": flops}, indent=1))
    plot_recurrence_sweep(sweeps, results / "recurrence_sweep.png", "loss", statics)
    matched = "; ".join(f"{h}: healing {f['heal_training_flops']:.3e}, static {f['static_training_flops']:.3e}" for h, f in flops.items())
    lines = [f"Held-out loss (nats/byte, {EVAL_BATCHES} x {pre_cfg.train.batch_size} x {pre_cfg.train.seq_len} bytes of val) "
             f"and forward FLOPs/token. Training FLOPs ({matched}).", "",
             "| model | " + " | ".join(f"r={r}" for r in RS) + " |", "|---|" + "---|" * len(RS)]
    for label, rows in sweeps.items():
        lines.append(f"| {label} | " + " | ".join(f"{row['loss']:.4f}" for row in rows) + " |")
    lines.append("| forward FLOPs/token (recurrent) | " + " | ".join(f"{row['flops_per_token']:.3g}" for row in next(iter(sweeps.values()))) + " |")
    lines += ["", "| static model | loss | forward FLOPs/token |", "|---|---|---|"]
    lines += [f"| {label} | {p['loss']:.4f} | {p['flops_per_token']:.3g} |" for label, p in statics.items()]
    (results / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "export":
        export(Path(args[0]), Path(args[1]))
    elif cmd == "matched-steps":
        print(matched_steps(Path(args[0]), Path(args[1]), args[2:]))
    elif cmd == "report":
        report(Path(args[0]), Path(args[1]), args[2:] or ["heal:static"])
    else:
        sys.exit(f"unknown command {cmd!r}; use export | matched-steps | report")

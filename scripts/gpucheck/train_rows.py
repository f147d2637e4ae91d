"""Section 1: every mixer x Canon off / full set x residual pre / KEEL trains in bf16 on the device (loss finite
and falling), and its cached decoding equals the full forward within bf16 tolerance.

A row is a :class:`~gpucheck.rows.ConfigRow` (a name and config overrides) in ``ROWS``; to check one more
setting, append one (as the document-masking rows below: every mixer with Canon on packed DEPO instances).
Rows with ``quick=False`` are left out of ``--quick`` and ``--dry-run`` (whose rows still cover every mixer, both
Canon settings and both residual styles).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import partial

import torch

from archlab.config import RunConfig
from archlab.evaluate import autocast_context
from archlab.tasks import build_task
from gpucheck.rows import ConfigRow, Context, Outcome, RowSpec, selected
from gpucheck.runs import Shape, losses, rel, train_run, trained_model

NAME, TITLE = "train", "bf16 training + decode == forward, every mixer x Canon x residual"
BUDGET_S = {"full": 120, "quick": 40, "dry-run": 300}


@dataclass(frozen=True)
class Sizes:
    shape: Shape
    steps: int
    lr: float
    min_drop: float  # nats: mean of the first fifth of the losses minus the mean of the last fifth, at least
    prefill: int  # decode check: a prefill of this many tokens, then one token at a time up to seq_len
    decode_tol: float  # relative error of the decoded logits against the full forward's


BF16_DECODE_TOL = 3e-2  # bf16 (8 mantissa bits) through a few layers; fp32 agrees to ~1e-6
GPU = Sizes(Shape(256, 4, 256, 16), steps=30, lr=3e-3, min_drop=0.5, prefill=224, decode_tol=BF16_DECODE_TOL)
SIZES = {"full": GPU, "quick": GPU,  # --quick runs fewer rows, not smaller ones
         "dry-run": Sizes(Shape(32, 2, 64, 4), steps=8, lr=1e-2, min_drop=0.3, prefill=48, decode_tol=BF16_DECODE_TOL)}

# mixer: (its overrides, the full Canon set: every placement it has; the linear mixers' own short convs are "b")
MIXERS = {
    "attention-rope": (["model.mixer.name=attention", "model.mixer.position=rope"], "ABCD"),
    "attention-nope": (["model.mixer.name=attention", "model.mixer.position=nope"], "ABCD"),
    "gla": (["model.mixer.name=gla"], "ABbCD"),
    "mamba2": (["model.mixer.name=mamba2"], "ABbCD"),
    "gdn": (["model.mixer.name=gdn"], "ABbCD"),
}


def matrix() -> list[ConfigRow]:
    """Mixer x Canon {off, full} x residual {pre, keel}; the diagonal (off + pre, full + keel) is the quick set."""
    rows = []
    for mixer, (overrides, full) in MIXERS.items():
        for canon in ("", full):
            for residual in ("pre", "keel"):
                quick = (canon == "") == (residual == "pre")
                rows.append(ConfigRow(f"{mixer} canon={canon or 'off'} {residual}",
                                      [*overrides, f"model.canon={canon}", f"model.residual={residual}"], quick))
    return rows


DEPO_DOC_MASK = ["data.name=depo", "data.n_max=6", "data.k_max=2", "data.name_max_len=1", "data.mini_vocab=16",
                 "data.n_queries=4", "data.doc_mask=true"]  # short instances: many documents per window
ROWS = matrix() + [ConfigRow(f"{mixer} canon={full} doc-mask depo", [*overrides, f"model.canon={full}", *DEPO_DOC_MASK], True)
                   for mixer, (overrides, full) in MIXERS.items()]


def decode_error(model: torch.nn.Module, ids: torch.Tensor, prefill: int) -> float:
    """Relative error of cached decoding (a prefill, then single tokens) against the full forward, under bf16."""
    with torch.no_grad(), autocast_context(ids.device, "bf16"):
        full, _ = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, :prefill], cache)[0]]
        parts += [model(ids[:, t : t + 1], cache)[0] for t in range(prefill, ids.shape[1])]
    return rel(torch.cat(parts, dim=1).float(), full.float())


def held_out_ids(cfg: RunConfig, device: torch.device, length: int) -> torch.Tensor:
    """Held-out tokens [2, length] of the run's own task."""
    tokens = build_task(cfg.data, cfg.train.seq_len).batch("val", cfg.seed, 0, 0, 2).tokens
    return tokens[:, :length].to(device)


def run_overrides(spec: ConfigRow, s: Sizes) -> list[str]:
    return [*s.shape.overrides(), f"train.steps={s.steps}", f"optim.lr={s.lr}", "train.precision=bf16", *spec.overrides]


def check(spec: ConfigRow, ctx: Context) -> Outcome:
    s = SIZES[ctx.mode]
    result, metrics = train_run(ctx.work, spec.name, ctx.device, run_overrides(spec, s))
    loss = losses(metrics)
    k = max(2, len(loss) // 5)
    first, last = statistics.mean(loss[:k]), statistics.mean(loss[-k:])
    cfg, model = trained_model(result.run_dir, ctx.device)
    err = decode_error(model, held_out_ids(cfg, ctx.device, s.shape.seq_len), s.prefill)
    numbers = {"loss_first": first, "loss_last": last, "loss_drop": first - last, "decode_rel_err": err,
               "tok_s": statistics.median(m["tok_per_s"] for m in metrics[1:])}
    problems = [] if all(map(math.isfinite, loss)) else ["a loss is not finite"]
    problems += [f"loss fell {first - last:.3f} < {s.min_drop} nats"] if first - last < s.min_drop else []
    problems += [f"decode rel err {err:.2e} > {s.decode_tol:.0e}"] if err > s.decode_tol else []
    return Outcome(not problems, numbers, "; ".join(problems))


def specs(ctx: Context) -> list[RowSpec]:
    return [RowSpec(r.name, partial(check, r, ctx)) for r in selected(ROWS, ctx.mode)]

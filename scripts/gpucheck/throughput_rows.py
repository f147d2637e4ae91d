"""Section 5: training throughput of archlab against transformers' Llama at the same shapes in bf16 (tok/s, model
FLOP utilisation against the bf16 peak), Canon-ABCD's overhead, and the mixers alone at a long sequence.

The models, the training step and the interleaved timing are the benchmarks' own (``benchmarks/train_throughput.py``,
``benchmarks/mixer_throughput.py``); only the device differs. Without transformers the peer's columns are left out.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import partial

import torch

from common import synced, time_interleaved
from gpucheck.rows import Context, Outcome, RowSpec
from gpucheck.runs import Shape
from mixer_throughput import MIXERS, time_training
from train_throughput import VOCAB, make_models, step_fn

NAME, TITLE = "throughput", "train tok/s and MFU vs HF Llama, Canon overhead, mixers at long T"
BUDGET_S = {"full": 60, "quick": 20, "dry-run": 300}


@dataclass(frozen=True)
class Sizes:
    models: tuple[Shape, ...]
    warmup: int
    steps: int
    mixer_d: int
    mixer_len: int
    mixer_tokens: int


ISSUE = Shape(1024, 16, 2048, 8)  # the issue's shape
SIZES = {"full": Sizes((ISSUE, Shape(2048, 16, 2048, 8)), warmup=2, steps=5, mixer_d=1024, mixer_len=8192, mixer_tokens=16384),
         "quick": Sizes((ISSUE,), warmup=2, steps=3, mixer_d=1024, mixer_len=8192, mixer_tokens=16384),
         "dry-run": Sizes((Shape(64, 2, 128, 8),), warmup=0, steps=1, mixer_d=64, mixer_len=256, mixer_tokens=512)}


def has_hf() -> bool:
    return importlib.util.find_spec("transformers") is not None


def models(size: Shape, device: torch.device) -> dict[str, tuple[torch.nn.Module, bool]]:
    """{name: (model, is_hf)}: archlab, archlab + Canon-ABCD and (if importable) HF Llama with archlab's weights."""
    torch.manual_seed(0)
    with torch.device(device):
        ours, hf, canon = make_models(size.d, size.layers, with_hf=has_hf())
    return {"archlab": (ours, False), "canon": (canon, False)} | ({"hf": (hf, True)} if hf is not None else {})


def training_steps(size: Shape, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """{name: one synchronised bf16 training step}, and archlab's model (for its FLOPs per token)."""
    entrants = models(size, device)
    ids = torch.randint(0, VOCAB, (size.batch, size.seq_len + 1), device=device)
    steps = {name: synced(step_fn(m, is_hf, torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True), ids, "bf16"), device)
             for name, (m, is_hf) in entrants.items()}
    return steps, entrants["archlab"][0]


def check_train(size: Shape, ctx: Context) -> Outcome:
    s = SIZES[ctx.mode]
    steps, ours = training_steps(size, ctx.device)
    sec = time_interleaved(steps, s.warmup, s.steps)
    tokens = size.batch * size.seq_len
    tok_s = {name: tokens / t for name, t in sec.items()}
    flops = ours.flops_per_token(size.seq_len)
    numbers = {"archlab_tok_s": tok_s["archlab"], "archlab_mfu_pct": 100 * flops * tok_s["archlab"] / (ctx.peak_tflops * 1e12),
               "canon_tok_s": tok_s["canon"], "canon_overhead_pct": 100 * (tok_s["archlab"] / tok_s["canon"] - 1)}
    if "hf" in tok_s:
        numbers |= {"hf_tok_s": tok_s["hf"], "hf_mfu_pct": 100 * flops * tok_s["hf"] / (ctx.peak_tflops * 1e12),
                    "archlab_vs_hf": tok_s["archlab"] / tok_s["hf"]}
    return Outcome(True, numbers, "" if "hf" in tok_s else "HF peer skipped: transformers is not importable")


def check_mixers(ctx: Context) -> Outcome:
    s = SIZES[ctx.mode]
    batch = max(1, s.mixer_tokens // s.mixer_len)
    tok_s = time_training(list(MIXERS), batch, s.mixer_len, s.mixer_d, s.steps, "bf16", str(ctx.device))
    numbers = {f"{n}_tok_s": v for n, v in tok_s.items()} | {f"{n}_vs_attention": v / tok_s["attention"] for n, v in tok_s.items() if n != "attention"}
    return Outcome(True, numbers)


def specs(ctx: Context) -> list[RowSpec]:
    s = SIZES[ctx.mode]
    rows = [RowSpec(f"train {size.label}", partial(check_train, size, ctx)) for size in s.models]
    return rows + [RowSpec(f"mixers d={s.mixer_d} T={s.mixer_len} (pure torch)", partial(check_mixers, ctx))]

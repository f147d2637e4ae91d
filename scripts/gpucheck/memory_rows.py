"""Section 6: peak memory of one bf16 training step (activations, gradients, temporaries above the weights and
optimiser state), archlab against transformers' Llama with the same weights, and with Canon-ABCD.

CUDA: the caching allocator's peak; the dry run on CPU: peak RSS growth (``benchmarks/common.peak_growth_mib``).
"""

from __future__ import annotations

from functools import partial

from common import step_peak_mib
from gpucheck.rows import Context, Outcome, RowSpec
from gpucheck.runs import Shape
from gpucheck.throughput_rows import SIZES, training_steps

NAME, TITLE = "memory", "peak memory per training step vs HF Llama"
BUDGET_S = {"full": 30, "quick": 15, "dry-run": 120}


def check(size: Shape, ctx: Context) -> Outcome:
    steps, _ = training_steps(size, ctx.device)
    mib = {name: step_peak_mib(step, ctx.device) for name, step in steps.items()}
    numbers = {f"{name}_peak_mib": v for name, v in mib.items()}
    if "hf" in mib:
        numbers["archlab_vs_hf"] = mib["archlab"] / mib["hf"]
    ok = all(v > 0 for v in mib.values())
    return Outcome(ok, numbers, "" if ok else "a step allocated nothing: the probe did not see it")


def specs(ctx: Context) -> list[RowSpec]:
    return [RowSpec(f"train step {size.label}", partial(check, size, ctx)) for size in SIZES[ctx.mode].models]

"""Section 2: archlab's fla path (``model.mixer.backend=fla``: fla's Triton kernels) against its pure-torch path
for GLA, Gated DeltaNet and Mamba2's SSD core (``chunk_simple_gla``): the same weights and input, relative error
of the output and of every gradient (fp32), also with document masking (fla gets the batch as one row with
``cu_seqlens``), and the fwd+bwd speed ratio in bf16 at T = 2048 and 8192.

Skipped, saying why, without CUDA or without an importable ``fla``; an fla that is installed but fails is a failure.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import partial

import torch

from archlab.model.documents import Documents
from gpucheck.rows import Context, Outcome, RowSpec, Skip
from gpucheck.runs import rel
from mixer_throughput import FLA, build, time_training

NAME, TITLE = "fla", "fla kernels vs pure torch: forward, gradients, speed"
BUDGET_S = {"full": 90, "quick": 40, "dry-run": 60}
FWD_TOL, GRAD_TOL = 1e-2, 2e-2  # fp32 in, but Triton's dots round their inputs to tf32 (10 mantissa bits)
MIXERS = {"gla": "gla", "gdn": "gdn", "mamba2 (SSD core)": "mamba2"}


@dataclass(frozen=True)
class Sizes:
    d: int
    check_len: int  # T of the accuracy comparison (batch 2)
    seq_lens: tuple[int, ...]  # speed, at ``tokens`` tokens per step
    tokens: int
    reps: int


GPU = Sizes(d=1024, check_len=512, seq_lens=(2048, 8192), tokens=16384, reps=3)
SIZES = {"full": GPU, "quick": Sizes(d=1024, check_len=512, seq_lens=(2048,), tokens=16384, reps=2),
         "dry-run": Sizes(d=64, check_len=64, seq_lens=(128,), tokens=256, reps=1)}


def unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "no CUDA device: fla's kernels are Triton (GPU only)"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not importable (carry its wheels: make gpu-wheels)"
    return None


def packed_documents(T: int, device: torch.device) -> Documents:
    """Two rows of documents of 1..T/4 tokens (fixed lengths), as a packed batch holds them."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.repeat_interleave(torch.arange(T), torch.randint(1, T // 4 + 1, (T,), generator=g))[:T] for _ in range(2)]
    return Documents(torch.stack(rows).to(device))


def accuracy(mixer: str, s: Sizes, device: torch.device, docs: Documents | None = None) -> dict[str, float]:
    """Relative errors of fla against torch: the output, and the worst gradient (input and every parameter)."""
    ref, fla = build(mixer, s.d).to(device), build(mixer + FLA, s.d).to(device)  # the same seed: the same weights
    x = torch.randn(2, s.check_len, s.d, device=device, requires_grad=True)
    y_ref, y = ref(x, None, docs)[0], fla(x, None, docs)[0]
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    grads = torch.autograd.grad(y, [x, *fla.parameters()], g)
    return {"fwd_rel_err": rel(y, y_ref), "grad_rel_err_max": max(rel(a, b) for a, b in zip(grads, grads_ref))}


def check(mixer: str, ctx: Context) -> Outcome:
    why = unavailable(ctx.device)
    if why:
        raise Skip(why)
    s = SIZES[ctx.mode]
    numbers = accuracy(mixer, s, ctx.device)
    masked = accuracy(mixer, s, ctx.device, packed_documents(s.check_len, ctx.device))
    numbers |= {f"docmask_{k}": v for k, v in masked.items()}
    for T in s.seq_lens:
        tok_s = time_training([mixer, mixer + FLA], max(1, s.tokens // T), T, s.d, s.reps, "bf16", str(ctx.device))
        numbers |= {f"torch_tok_s_T{T}": tok_s[mixer], f"fla_tok_s_T{T}": tok_s[mixer + FLA],
                    f"fla_speedup_T{T}": tok_s[mixer + FLA] / tok_s[mixer]}
    problems = []
    for prefix in ("", "docmask_"):
        if numbers[f"{prefix}fwd_rel_err"] > FWD_TOL:
            problems.append(f"{prefix}forward rel err {numbers[f'{prefix}fwd_rel_err']:.1e} > {FWD_TOL:.0e}")
        if numbers[f"{prefix}grad_rel_err_max"] > GRAD_TOL:
            problems.append(f"{prefix}gradient rel err {numbers[f'{prefix}grad_rel_err_max']:.1e} > {GRAD_TOL:.0e}")
    return Outcome(not problems, numbers, "; ".join(problems))


def specs(ctx: Context) -> list[RowSpec]:
    return [RowSpec(name, partial(check, mixer, ctx)) for name, mixer in MIXERS.items()]

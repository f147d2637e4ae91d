"""Opt-in ``torch.compile`` of the blocks (``train.compile=true``), for training steps only.

Inductor fuses the element-wise work around the matmuls: norms, SiLU·gate, RoPE and above all Canon, whose K
shifted multiply-adds are memory-bound passes in eager mode (one fused loop compiled). Each block's forward is
compiled with static shapes; calls with a decoding cache or without grad (evaluation, generation) stay eager,
so they neither recompile per length nor pay compile time. Needs a C++ compiler on CPU (Triton on CUDA).
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Callable

import torch
from torch import nn

from archlab.model.mixers.attention import grow_rotary_tables


def block_list(lm: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an LM: the members of its ModuleLists (``blocks``, or prelude / core / coda)."""
    return [m for lst in lm.children() if isinstance(lst, nn.ModuleList) for m in lst]


def _training_call(eager: Callable, compiled: Callable, x: torch.Tensor, cache: dict | None = None, docs=None) -> torch.Tensor:
    if cache is None and torch.is_grad_enabled():
        return compiled(x) if docs is None else compiled(x, docs=docs)
    return eager(x, cache, docs)


def has_cpp_compiler() -> bool:
    """Whether inductor's CPU backend finds a C++ compiler ($CXX, g++, c++ or clang++ on PATH)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def compile_blocks(lm: nn.Module, seq_len: int) -> None:
    """Compile every block of ``lm`` in place (its parameters and state_dict keys are unchanged)."""
    if next(lm.parameters()).device.type == "cpu" and not has_cpp_compiler():  # fail now, not mid first step
        raise ValueError("train.compile=true on CPU needs a C++ compiler (set $CXX or put g++ / clang++ on PATH), or use train.compile=false")
    grow_rotary_tables(lm, seq_len)
    blocks = block_list(lm)
    # every block shares Block.forward's code; blocks that differ (Canon in some layers, per-layer constants)
    # each need their own graph, and the default limit of 8 would send the rest back to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(blocks) + 8)
    for block in blocks:
        eager = block.forward
        block.forward = functools.partial(_training_call, eager, torch.compile(eager, dynamic=False))

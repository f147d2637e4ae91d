"""Optimisers by parameter rule, LR schedules, and global grad-norm clipping.

Rules (applied per parameter, in order):
  * ``p._optim_group = "multiplier"`` (learnable multipliers): AdamW, own LR multiplier ``p._lr_mult`` and
    weight decay ``p._weight_decay`` (default 0), never clipped.
  * Muon (``optim.name=muon``): every 2-D parameter not flagged ``p._no_muon`` (embeddings, head and conv
    kernels are flagged by the modules that own them). ``torch.optim.Muon`` requires 2-D parameters.
  * AdamW: everything else.
  * Weight decay: only parameters with ndim >= 2 not flagged ``p._no_weight_decay``.
  * Clipping: every parameter not flagged ``p._no_clip``.
The schedule is a pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from archlab.schema import Section


class OptimConfig(Section):
    """AdamW for everything, or Muon for 2-D hidden matrices plus AdamW for the rest."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    muon_lr: float | None = Field(None, gt=0, description="None: same as lr (sensible with match_rms_adamw)")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 = off")
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of peak")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: fraction of steps spent decaying")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier on the peak LR at 0-based ``step`` of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total))
        start = total - decay_steps
        return 1.0 if step < start else 1.0 - (1.0 - lo) * (step - start + 1) / decay_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps + 1) / span)
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - lo) * progress
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


@dataclass
class Optimizers:
    """One or two torch optimisers stepped together, plus the parameters that the clip sees."""

    optimizers: list[torch.optim.Optimizer]
    clip_params: list[nn.Parameter]
    grad_clip: float
    summary: dict[str, int] = field(default_factory=dict)

    def set_lr(self, factor: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def clip(self) -> float:
        """Global grad norm over the clipped parameters (clipped in place if grad_clip > 0)."""
        params = [p for p in self.clip_params if p.grad is not None]
        if self.grad_clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True))
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"optimiser state has {len(states)} optimisers, this run builds {len(self.optimizers)}")
        for opt, st in zip(self.optimizers, states):
            opt.load_state_dict(st)


def _wants_decay(p: nn.Parameter) -> bool:
    return p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)


def adamw_kernel(groups: list[dict]) -> dict[str, bool]:
    """AdamW's fused kernel (one pass per parameter: 7x faster than foreach on a d=512 model's 25M parameters on
    CPU) for plain CPU / CUDA tensors; foreach for FSDP2's DTensors and other devices."""
    params = [p for g in groups for p in g["params"]]
    plain = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if plain else {"foreach": True}


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> Optimizers:
    """Split parameters by the rules above into AdamW (+ Muon) parameter groups."""
    groups: dict[str, dict[str, Any]] = {}

    def add(key: str, p: nn.Parameter, **opts: Any) -> None:
        groups.setdefault(key, {"params": [], "name": key, **opts})["params"].append(p)

    clip_params: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_optim_group", None) == "multiplier":
            lr_mult, wd = getattr(p, "_lr_mult", 1.0), getattr(p, "_weight_decay", 0.0)
            add(f"multiplier/{lr_mult}/{wd}", p, kind="adamw", base_lr=cfg.lr * lr_mult, weight_decay=wd)
            continue
        if not getattr(p, "_no_clip", False):
            clip_params.append(p)
        if cfg.name == "muon" and p.ndim == 2 and not getattr(p, "_no_muon", False):
            add("muon", p, kind="muon", base_lr=cfg.muon_lr or cfg.lr, weight_decay=cfg.weight_decay)
        elif _wants_decay(p):
            add("adamw_decay", p, kind="adamw", base_lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            add("adamw_no_decay", p, kind="adamw", base_lr=cfg.lr, weight_decay=0.0)

    adam_groups = [dict(g, lr=g["base_lr"]) for g in groups.values() if g["kind"] == "adamw"]
    muon_groups = [dict(g, lr=g["base_lr"]) for g in groups.values() if g["kind"] == "muon"]
    opts: list[torch.optim.Optimizer] = []
    if adam_groups:
        opts.append(torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **adamw_kernel(adam_groups)))
    if muon_groups:
        opts.append(
            torch.optim.Muon(
                muon_groups,
                lr=cfg.muon_lr or cfg.lr,
                momentum=cfg.muon_momentum,
                adjust_lr_fn=cfg.muon_adjust_lr,
            )
        )
    summary = {k: sum(p.numel() for p in g["params"]) for k, g in groups.items()}
    return Optimizers(opts, clip_params, cfg.grad_clip, summary)

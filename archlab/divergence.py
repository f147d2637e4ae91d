"""Divergence guard (``train.nonfinite``): what a step with a NaN/Inf loss or gradient does.

``stop`` raises :class:`TrainingDiverged`; ``skip`` drops that step's update (weights and optimiser state
untouched) up to ``train.max_skipped_steps`` times per run, then stops. Either way the message names the
step and the parameters (with their optimiser group) whose gradients are not finite. The check runs before
clipping, because clipping by a NaN norm would turn every gradient into NaN and hide the culprit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from archlab.optim import Optimizers

log = logging.getLogger("archlab.train")


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/Inf; the message names the step and the offending parameters."""


def nonfinite_grads(model: nn.Module, opt: Optimizers) -> list[str]:
    """'name (group)' for every parameter whose gradient holds NaN or Inf, in model order."""
    group_of = {id(p): g.get("name", f"{type(o).__name__}[{i}]") for o in opt.optimizers for i, g in enumerate(o.param_groups) for p in g["params"]}
    return [
        f"{name} (group {group_of.get(id(p), '-')})"
        for name, p in model.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]


@dataclass
class DivergenceGuard:
    policy: str  # "stop" | "skip"
    max_skipped: int
    skipped: int = 0  # steps skipped so far in this run (saved in checkpoints)

    def should_skip(self, step: int, loss: float, model: nn.Module, opt: Optimizers) -> bool:
        """False for a finite step; True if this step's update must be dropped; raises TrainingDiverged to stop."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        total = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if math.isfinite(loss) and math.isfinite(total):
            return False
        bad = nonfinite_grads(model, opt)
        culprits = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") if bad else "none (the norm overflows)"
        what = f"step {step}: loss={loss} grad_norm={total} is not finite; NaN/Inf gradients in {culprits}"
        if self.policy == "skip" and self.skipped < self.max_skipped:
            self.skipped += 1
            log.warning("%s; update skipped (%d of at most %d)", what, self.skipped, self.max_skipped)
            return True
        limit = f" after {self.skipped} skipped steps (train.max_skipped_steps={self.max_skipped})" if self.policy == "skip" else ""
        raise TrainingDiverged(f"{what}; training stopped{limit}; earlier checkpoints are kept, none is written of this state")

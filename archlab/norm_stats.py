"""Per-block activation and gradient norms, for watching depth pathologies (``train.log_norms``).

* ``act_rms[i]``: RMS of block i's output on the last training forward, sqrt(mean(x^2)) over [B, T, D].
* ``grad_norm[i]``: L2 norm of the gradient of all of block i's parameters after the last backward (the full
  accumulated gradient, before clipping).

Blocks are found as every ``archlab.model.block.Block`` inside the model, in module order, so wrappers
(DDP, recurrence) work unchanged. Forward hooks skip eval-mode forwards; gradient hooks
(``register_post_accumulate_grad_hook``) fire after every accumulation, so the last value is the full gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archlab.model.block import Block


class NormStats:
    def __init__(self, model: nn.Module):
        self.blocks = [m for m in model.modules() if isinstance(m, Block)]
        self.act_rms: list[float | None] = [None] * len(self.blocks)
        self._act: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._grad_sq: dict[int, torch.Tensor] = {}  # id(param) -> squared grad norm
        self._param_ids = [[id(p) for p in b.parameters() if p.requires_grad] for b in self.blocks]
        self._handles = []
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._forward_hook(i)))
            for p in block.parameters():
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook))

    def _forward_hook(self, i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training:
                out = output[0] if isinstance(output, tuple) else output
                self._act[i] = out.detach().float().pow(2).mean().sqrt()

        return hook

    def _grad_hook(self, p: torch.Tensor) -> None:
        self._grad_sq[id(p)] = p.grad.detach().float().pow(2).sum()

    def collect(self) -> dict[str, list[float | None]]:
        """{"act_rms": [per block], "grad_norm": [per block]}; None where nothing was recorded yet."""
        act = [None if a is None else float(a) for a in self._act]
        grads: list[float | None] = []
        for ids in self._param_ids:
            sq = [self._grad_sq[k] for k in ids if k in self._grad_sq]
            grads.append(float(torch.stack(sq).sum().sqrt()) if sq else None)
        return {"act_rms": act, "grad_norm": grads}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

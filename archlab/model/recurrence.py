"""Depth recurrence: prelude (P blocks, once) -> core (R blocks, r times) -> coda (C blocks) -> norm -> head.

Spec: shared/specs/recurrence.md (retrofitted recurrence, McLeish et al. 2025, on the Huginn design).
  e = prelude(embed(ids));  s_0 ~ TruncNormal(0, std^2, +-3 std), fresh on every forward call
  s_i = core(adapter([s_{i-1} ; e]))  for i = 1..r,  adapter = Linear(2d -> d, no bias)
  logits = head(norm(coda(s_r)))      (no norm between the loop and the coda, as the retrofit code, spec §1.2)
Training runs the first n = r - k iterations without gradient and the last k with it (truncated backprop);
(n, k) is drawn per micro-batch as a pure function of (seed, step, micro-batch), see :func:`sample_depth`.
The KV cache keeps one slot per unrolled block: prelude 0..P-1, core P + i*R + j, coda -1..-C (spec §1.6).
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archlab.model.block import Block
from archlab.model.cpu_bf16 import linear
from archlab.model.documents import as_documents
from archlab.model.lm import LM
from archlab.model.multipliers import attach_multipliers
from archlab.model.norms import make_norm

if TYPE_CHECKING:
    from archlab.config import ModelConfig, RecurrenceConfig


@dataclass
class RecurrentCache:
    """Decoding state: one dict per unrolled block index; ``r`` is fixed by the first call that fills it."""

    slots: defaultdict[int, dict] = field(default_factory=lambda: defaultdict(dict))
    r: int | None = None


def mean_recurrence_at(rc: "RecurrenceConfig", step: int, total: int) -> int:
    """Curriculum mean m_t at 0-based ``step`` of ``total``: ceil(M * f(t / W)), f = x or 1 - sqrt(1 - x), >= 1."""
    if rc.curriculum == "none":
        return rc.mean_recurrence
    x = min(step / (rc.curriculum_fraction * total), 1.0)
    f = x if rc.curriculum == "linear" else 1.0 - math.sqrt(1.0 - x)
    return max(1, math.ceil(rc.mean_recurrence * f))


def sample_depth(rc: "RecurrenceConfig", seed: int, step: int, micro: int, total: int) -> tuple[int, int]:
    """(n without grad, k with grad) for one micro-batch; a pure function of its arguments (spec §1.4).

    lambda ~ LogNormal(ln m - sigma^2 / 2, sigma) so E[lambda] = m; r = Poisson(lambda) + 1 (E[r] = m + 1);
    k = min(r, b) with b = min(backprop_depth, m); n = r - k.
    """
    m = mean_recurrence_at(rc, step, total)
    b = min(rc.backprop_depth, m)
    rng = np.random.default_rng([514229, seed % 2**63, step, micro])
    sigma = rc.lognormal_sigma
    lam = rng.lognormal(math.log(m) - sigma**2 / 2, sigma)
    r = int(rng.poisson(lam)) + 1
    k = min(r, b)
    return r - k, k


class RecurrentLM(LM):
    """LM with a recurrent core; same interface, plus ``r`` (iterations) and ``n_grad`` where they matter."""

    def __init__(self, cfg: "ModelConfig"):
        nn.Module.__init__(self)  # LM's own stack is replaced by prelude / core / coda
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set (it is normally taken from the task)")
        if cfg.recurrence is None:
            raise ValueError("RecurrentLM needs model.recurrence")
        self.cfg, self.rc = cfg, cfg.recurrence
        d, p, c = cfg.d_model, cfg.recurrence.prelude, cfg.recurrence.core
        blocks = [Block(cfg, i) for i in range(cfg.n_layers)]
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.prelude = nn.ModuleList(blocks[:p])
        self.adapter = nn.Linear(2 * d, d, bias=False)
        self.core = nn.ModuleList(blocks[p : p + c])
        self.coda = nn.ModuleList(blocks[p + c :])
        self.norm = make_norm(cfg.norm, d, cfg.norm_eps) if blocks[0].mixer_residual.needs_final_norm else None
        self.head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.embed.weight._no_muon = True
        if self.head is not None:
            self.head.weight._no_muon = True
        self._depth: tuple[int | None, int | None] = (None, None)
        self.reset_parameters()
        attach_multipliers(self, cfg)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.rc.adapter_init == "identity":  # [0 | I]: adapter([s; e]) = e (a variant, not the paper's init)
            d = self.cfg.d_model
            with torch.no_grad():
                self.adapter.weight.zero_()
                self.adapter.weight[:, d:].copy_(torch.eye(d))

    @contextmanager
    def depth(self, r: int | None = None, n_grad: int | None = None) -> Iterator[None]:
        """Default ``r`` / ``n_grad`` for calls inside the block (used by loss / generate, which call ``hidden``).

        None keeps the enclosing block's value."""
        old = self._depth
        self._depth = (old[0] if r is None else r, old[1] if n_grad is None else n_grad)
        try:
            yield
        finally:
            self._depth = old

    def resolve_depth(self, r: int | None = None, n_grad: int | None = None) -> tuple[int, int]:
        """(r, k): r defaults to mean_recurrence, k (iterations with grad) to all r."""
        r = r if r is not None else self._depth[0] if self._depth[0] is not None else self.rc.mean_recurrence
        k = n_grad if n_grad is not None else self._depth[1] if self._depth[1] is not None else r
        if r < 1 or not 0 <= k <= r:
            raise ValueError(f"need r >= 1 and 0 <= n_grad <= r, got r={r}, n_grad={k}")
        return r, k

    def new_cache(self) -> RecurrentCache:  # type: ignore[override]
        return RecurrentCache()

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        """Fresh TruncNormal(0, std^2) clipped at +-3 std, shaped like e [B, T, D] (zeros if std = 0)."""
        std = self.rc.state_init_std
        s = torch.zeros_like(e)
        return s if std == 0 else nn.init.trunc_normal_(s, 0.0, std, -3 * std, 3 * std)

    def hidden(self, ids: torch.Tensor, cache: RecurrentCache | None = None, doc_ids: torch.Tensor | None = None,  # type: ignore[override]
               r: int | None = None, n_grad: int | None = None) -> torch.Tensor:
        """ids: [B, T] -> final hidden states [B, T, D]; the first r - n_grad core iterations run without grad.
        ``doc_ids`` [B, T]: document masking in every block (the adapter and the state are per token)."""
        r, k = self.resolve_depth(r, n_grad)
        docs = as_documents(doc_ids, ids)
        if cache is not None:
            if cache.r is not None and cache.r != r:
                raise ValueError(f"this cache was filled at r={cache.r}; decoding at r={r} needs a new cache")
            cache.r = r
        slot = (lambda i: None) if cache is None else (lambda i: cache.slots[i])
        x = self.embed(ids)
        for i, block in enumerate(self.prelude):
            x = block(x, slot(i), docs)
        e, s = x, self.initial_state(x)
        first = len(self.prelude)
        for it in range(r):
            with torch.set_grad_enabled(torch.is_grad_enabled() and it >= r - k):
                s = linear(torch.cat([s, e], dim=-1), self.adapter.weight)  # [B, T, 2D] -> [B, T, D]
                for j, block in enumerate(self.core):
                    s = block(s, slot(first + it * len(self.core) + j), docs)
        for j, block in enumerate(self.coda):
            s = block(s, slot(-1 - j), docs)
        return s if self.norm is None else self.norm(s)

    def forward(self, ids: torch.Tensor, cache: RecurrentCache | None = None, doc_ids: torch.Tensor | None = None,  # type: ignore[override]
                r: int | None = None) -> tuple[torch.Tensor, RecurrentCache | None]:
        """ids: [B, T] -> logits [B, T, V] at r iterations; with a cache, continues from it (same r)."""
        return F.linear(self.hidden(ids, cache, doc_ids, r), self.head_weight), cache

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, normaliser: float | None = None,  # type: ignore[override]
             doc_ids: torch.Tensor | None = None, r: int | None = None, n_grad: int | None = None) -> torch.Tensor:
        """LM.loss at r iterations, the last ``n_grad`` with gradient."""
        with self.depth(r, n_grad):
            return super().loss(ids, targets, mask, normaliser, doc_ids)

    def generate(self, ids: torch.Tensor, max_new_tokens: int, *args, r: int | None = None, **kwargs) -> torch.Tensor:  # type: ignore[override]
        """LM.generate at a fixed r (every token runs P + r*R + C blocks)."""
        with self.depth(r):
            return super().generate(ids, max_new_tokens, *args, **kwargs)

    def micro_batch_args(self, seed: int, step: int, micro: int, total: int) -> dict[str, int]:
        """Training hook: this micro-batch's ``r`` and ``n_grad`` for :meth:`loss`."""
        n, k = sample_depth(self.rc, seed, step, micro, total)
        return {"r": n + k, "n_grad": k}

    def _part_flops(self, seq_len: int) -> tuple[float, float]:
        """Forward FLOPs per token of (prelude + coda + head, one core iteration incl. adapter)."""
        mix = self.cfg.mixer.flops_per_token(self.cfg.d_model, seq_len)

        def cost(modules: list[nn.Module]) -> float:
            return sum(2 * p.numel() for m in modules for p in m.parameters()) + mix * sum(isinstance(m, Block) for m in modules)

        head = [self.head if self.head is not None else self.embed]
        return cost([*self.prelude, *self.coda, *head, *([self.norm] if self.norm else [])]), cost([self.adapter, *self.core])

    def flops_per_token(self, seq_len: int, r: int | None = None, n_grad: int | None = None) -> float:  # type: ignore[override]
        """Training FLOPs per token at r iterations, k with grad (default min(r, backprop_depth)): 3x fwd, fwd only for the rest."""
        r = r if r is not None else self.rc.mean_recurrence
        k = n_grad if n_grad is not None else min(r, self.rc.backprop_depth)
        once, it = self._part_flops(seq_len)
        return 3 * (once + k * it) + (r - k) * it

    def inference_flops_per_token(self, seq_len: int, r: int | None = None) -> float:
        """Forward FLOPs per token at r iterations: prelude + r * (adapter + core) + coda + head."""
        once, it = self._part_flops(seq_len)
        return once + (r if r is not None else self.rc.mean_recurrence) * it


def build_lm(cfg: "ModelConfig") -> LM:
    """LM, or RecurrentLM when ``model.recurrence`` is set."""
    return LM(cfg) if cfg.recurrence is None else RecurrentLM(cfg)

"""LM = token embedding -> blocks -> final norm -> LM head, with a cache for decoding and ``generate()``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from archlab.model.block import Block
from archlab.model.cpu_bf16 import linear
from archlab.model.decode_layout import decode_weights
from archlab.model.documents import as_documents
from archlab.model.mixers.attention import grow_rotary_tables
from archlab.model.multipliers import attach_multipliers
from archlab.model.norms import make_norm

if TYPE_CHECKING:
    from archlab.config import ModelConfig

Cache = list[dict]


class LM(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set (it is normally taken from the task)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if self.blocks[0].mixer_residual.needs_final_norm else None
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.embed.weight._no_muon = True
        if self.head is not None:
            self.head.weight._no_muon = True
        self.reset_parameters()
        attach_multipliers(self, cfg)  # learnable multipliers (model.multipliers); last, after all init

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=self.cfg.init_std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=self.cfg.init_std)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def new_cache(self) -> Cache:
        return [{} for _ in self.blocks]

    def hidden(self, ids: torch.Tensor, cache: Cache | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids: [B, T] -> final hidden states [B, T, D] (after the final norm, if any). ``doc_ids`` [B, T]
        (training / evaluation): document masking, no token sees another document (archlab/model/documents.py)."""
        docs = as_documents(doc_ids, ids)
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], docs)
        return x if self.norm is None else self.norm(x)

    def forward(self, ids: torch.Tensor, cache: Cache | None = None, doc_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, Cache | None]:
        """ids: [B, T] -> logits [B, T, V]; with a cache (from ``new_cache()``), continues from it."""
        return linear(self.hidden(ids, cache, doc_ids), self.head_weight), cache

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, normaliser: float | None = None,
             doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Masked next-token cross-entropy: sum(CE * mask) / normaliser (default: mask.sum()).

        ids, targets, mask: [B, T]. Passing the token count of the whole optimiser step as ``normaliser``
        makes gradient accumulation exactly equal to one big batch. ``doc_ids`` [B, T]: document masking.
        """
        h = self.hidden(ids, doc_ids=doc_ids)
        logits = linear(h, self.head_weight).float()  # [B, T, V]
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        m = mask.reshape(-1).to(ce.dtype)
        return (ce * m).sum() / (m.sum().clamp_min(1) if normaliser is None else normaliser)

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """ids: [B, T] -> [B, T + max_new_tokens]. Greedy at temperature 0; rows that emitted eos keep emitting it.

        Decoding is bound by per-op overhead and by reading every weight per token, so the loop runs under
        ``torch.inference_mode`` with the matrix weights laid out for the batch size
        (:mod:`archlab.model.decode_layout`); the model is left exactly as it was found, and the result is a
        normal tensor.
        """
        grow_rotary_tables(self, ids.shape[1] + max_new_tokens)  # not inside inference mode
        with decode_weights(self, ids.shape[0]), torch.inference_mode():
            cache = self.new_cache()
            logits, _ = self(ids, cache)
            out, done = [ids], torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            for _ in range(max_new_tokens):
                nxt = sample_next(logits[:, -1].float(), temperature, top_k, generator)  # [B]
                if eos_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                    done |= nxt == eos_id
                out.append(nxt[:, None])
                if eos_id is not None and bool(done.all()):
                    pad = max_new_tokens - (len(out) - 1)
                    out.append(torch.full((ids.shape[0], pad), eos_id, dtype=ids.dtype, device=ids.device))
                    break
                logits, _ = self(nxt[:, None], cache)
            tokens = torch.cat(out, dim=1)
        return tokens.clone()  # outside inference mode: usable as input to autograd later

    def num_params(self, include_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embedding else n - self.embed.weight.numel()

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 6 * matmul params + attention terms."""
        matmul_params = self.num_params() - self.embed.weight.numel() * (self.head is not None)
        mix = sum(self.cfg.mixer.flops_per_token(self.cfg.d_model, seq_len) for _ in self.blocks)
        return 6 * matmul_params + 3 * mix


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """logits: [B, V] -> token ids [B]."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)

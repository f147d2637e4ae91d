"""Causal self-attention: MHA / GQA, RoPE / NoPE / partial RoPE, optional QK-norm, Canon-B, SDPA, KV cache.

Layout follows transformers' Llama (so weights map 1:1): q, k, v projections (fused into one ``wqkv``
matrix here), RoPE in the rotate-half convention on the first ``rope_dim`` dims of each head, softmax scale
head_dim^-1/2, output projection ``wo``.

Document masking (:mod:`archlab.model.documents`): block-diagonal causal attention per document, one SDPA
call with a boolean mask shared by all layers of a forward; RoPE positions restart at every document
(``doc_positions: restart``, the default: each document then sees exactly what it would see alone) or count
from the window start (``window``). RoPE scores depend only on relative positions, so the two agree up to
rounding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from archlab.model.canon import apply_canon, maybe_canon
from archlab.model.cpu_bf16 import linear, sdpa
from archlab.model.documents import Documents
from archlab.model.mixers import MIXERS, Mixer, MixerConfig
from archlab.model.norms import RMSNorm

if TYPE_CHECKING:
    from archlab.config import ModelConfig


class AttentionConfig(MixerConfig):
    name: Literal["attention"] = "attention"
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="None: = n_heads (MHA); fewer = GQA")
    head_dim: int | None = Field(None, gt=0, description="None: d_model // n_heads")
    position: Literal["rope", "nope"] = "rope"
    rope_dim: int | None = Field(None, gt=0, description="partial RoPE: rotate only the first rope_dim dims per head")
    rope_theta: float = Field(10000.0, gt=0)
    qk_norm: bool = False
    doc_positions: Literal["restart", "window"] = Field(
        "restart", description="with data.doc_mask: RoPE positions restart at every document, or count from the window start"
    )

    @model_validator(mode="after")
    def _kv(self) -> "AttentionConfig":
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}")
        return self

    def check(self, d_model: int) -> None:
        if self.head_dim is None and d_model % self.n_heads:
            raise ValueError(f"mixer.n_heads={self.n_heads} does not divide model.d_model={d_model}")
        hd = self.resolved_head_dim(d_model)
        if self.rope_dim is not None:
            if self.rope_dim % 2 or self.rope_dim > hd:
                raise ValueError(f"mixer.rope_dim={self.rope_dim} must be even and <= head_dim={hd}")
            if self.position == "nope":
                raise ValueError("mixer.rope_dim is set but mixer.position='nope'")
        elif hd % 2 and self.position == "rope":
            raise ValueError(f"RoPE needs an even head_dim, got {hd}")

    def resolved_head_dim(self, d_model: int) -> int:
        return self.head_dim or d_model // self.n_heads

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        # QK^T and AV, causal average context seq_len/2, 2 FLOPs per MAC.
        return 2 * 2 * self.n_heads * self.resolved_head_dim(d_model) * seq_len / 2


class RotaryTable(nn.Module):
    """cos and signed-sin tables for positions 0..n-1, grown on demand (non-persistent buffers).

    ``signed_sin`` is sin with its first half negated: rotate_half(x) * sin = swap_halves(x) * signed_sin,
    which lets :func:`apply_rope` rotate with one copy instead of rotate_half's neg + cat.
    """

    def __init__(self, rope_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.int64).float() / rope_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos", torch.empty(0, 1, rope_dim), persistent=False)  # [n, 1, rope_dim]
        self.register_buffer("signed_sin", torch.empty(0, 1, rope_dim), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed_sin: [length, 1, rope_dim] (fp32) for positions start..start+length-1 (the 1 broadcasts
        over heads in the [B, T, heads, head_dim] layout)."""
        end = start + length
        if self.cos.shape[0] < end or self.cos.device != self.inv_freq.device:
            n = max(end, 2 * self.cos.shape[0], 256)
            pos = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)[:, None]  # [n, 1, rope_dim / 2]
            self.cos = torch.cat([freqs, freqs], dim=-1).cos()
            self.signed_sin = torch.cat([-freqs, freqs], dim=-1).sin()
        return self.cos[start:end], self.signed_sin[start:end]


def grow_rotary_tables(module: nn.Module, seq_len: int) -> None:
    """Fill every RoPE table in ``module`` up to ``seq_len`` now: growing one inside a compiled graph forces a
    recompile, and inside ``torch.inference_mode`` it would leave inference tensors that training cannot use."""
    for m in module.modules():
        if isinstance(m, RotaryTable):
            m(0, seq_len)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, heads, hd]; rotate the first r = cos.shape[-1] dims of each head (rotate-half convention:
    x * cos + rotate_half(x) * sin), leave the rest. cos, signed_sin: [T, 1, r] from :class:`RotaryTable`."""
    r = cos.shape[-1]
    if cos.dtype != x.dtype:  # bf16 autocast
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    xr = x if r == x.shape[-1] else x[..., :r]
    swapped = xr.unflatten(-1, (2, r // 2)).flip(-2).flatten(-2)  # [x2, x1]
    rotated = torch.addcmul(xr * cos, swapped, signed_sin)
    return rotated if r == x.shape[-1] else torch.cat([rotated, x[..., r:]], dim=-1)


def append_kv(state: dict, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k, v [B, Hkv, T, hd] at positions start.. of a preallocated cache; state["k"], state["v"] become
    views [B, Hkv, start+T, hd] of it. The buffer doubles when full, so a decoding step copies its own token,
    not the whole cache (torch.cat per step made archlab's generate slower than transformers')."""
    end = start + k.shape[2]
    buf = state.get("kv_buf")  # [2, B, Hkv, capacity, hd]
    if buf is None or buf.shape[3] < end or buf.dtype != k.dtype:
        grown = k.new_empty(2, *k.shape[:2], max(2 * end, 64), k.shape[3])
        if start:
            grown[:, :, :, :start] = buf[:, :, :, :start]
        buf = state["kv_buf"] = grown
    new = buf.narrow(3, start, end - start)  # [2, B, Hkv, T, hd] (narrow: cheaper than tuple indexing per token)
    new[0].copy_(k)
    new[1].copy_(v)
    state["k"], state["v"] = buf.narrow(3, 0, end).unbind(0)
    return state["k"], state["v"]


# Query block of the block-sparse document attention (a tile of the CPU flash kernel's size or a few of them).
DOC_BLOCK = 128


def attend_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents, gqa: bool) -> torch.Tensor:
    """Block-diagonal causal attention: q [B, H, T, hd], k, v [B, Hkv, T, hd] -> [B, H, T, hd].

    Long windows of short documents take the block-sparse form (:meth:`Documents.attention_blocks`): every query
    block against only the W keys its documents can reach, all blocks in one SDPA call, so the cost is T·W instead
    of T². Otherwise (or under torch.compile, which cannot trace the data-dependent plan) one SDPA with the
    [B, 1, T, T] mask."""
    plan = None if torch.compiler.is_compiling() else docs.attention_blocks(DOC_BLOCK)
    if plan is None:
        return sdpa(q, k, v, attn_mask=docs.attention_mask(), enable_gqa=gqa)
    keys, mask = plan  # [N, W], [B·N, 1, c, W]
    (B, H, T, hd), (N, W), c = q.shape, keys.shape, DOC_BLOCK

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, h, T, hd] -> [B·N, h, W, hd]: the keys of every block
        h = x.shape[1]
        return x.index_select(2, keys.flatten()).view(B, h, N, W, hd).transpose(1, 2).reshape(B * N, h, W, hd)

    qb = q.view(B, H, N, c, hd).transpose(1, 2).reshape(B * N, H, c, hd)
    y = sdpa(qb, blocks(k), blocks(v), attn_mask=mask, enable_gqa=gqa)  # [B·N, H, c, hd]
    return y.view(B, N, H, c, hd).transpose(1, 2).reshape(B, H, T, hd)


@MIXERS.register("attention", AttentionConfig)
class Attention(Mixer):
    def __init__(self, cfg: AttentionConfig, model_cfg: "ModelConfig", layer_idx: int):
        super().__init__(cfg, model_cfg, layer_idx)
        d = model_cfg.d_model
        self.n_heads = cfg.n_heads
        self.n_kv = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.resolved_head_dim(d)
        self.q_dim, self.kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.init_std, self.out_std = model_cfg.init_std, model_cfg.init_std / math.sqrt(2 * model_cfg.n_layers)
        self.wqkv = nn.Linear(d, self.q_dim + 2 * self.kv_dim, bias=False)
        self.wo = nn.Linear(self.q_dim, d, bias=False)
        self.q_norm = RMSNorm(self.q_dim, model_cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.kv_dim, model_cfg.norm_eps) if cfg.qk_norm else None
        self.canon_b = maybe_canon("B", self.q_dim + 2 * self.kv_dim, model_cfg)
        self.rotary = (
            RotaryTable(cfg.rope_dim or self.head_dim, cfg.rope_theta) if cfg.position == "rope" else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.wqkv.weight, std=self.init_std)
        nn.init.normal_(self.wo.weight, std=self.out_std)

    def forward(self, x: torch.Tensor, state: dict | None = None, docs: Documents | None = None) -> tuple[torch.Tensor, dict | None]:
        B, T, _ = x.shape
        if docs is not None and state is not None:
            raise ValueError("document masking applies to training / evaluation forwards, not to decoding with a cache")
        docs = None if docs is None or docs.single else docs  # one document per row: plain causal attention
        qkv = linear(x, self.wqkv.weight)  # [B, T, q_dim + 2 kv_dim]
        if self.q_norm is not None:
            q, k, v = qkv.split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
            qkv = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=-1)
        qkv = apply_canon(self.canon_b, qkv, state, "canon_b", docs)
        qk, v = qkv.view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim).split([self.n_heads + self.n_kv, self.n_kv], dim=2)
        start = 0 if state is None or "k" not in state else state["k"].shape[2]
        if self.rotary is not None:  # q and k rotated together: [B, T, H + Hkv, hd]
            qk = apply_rope(qk, *self._rope_tables(start, T, docs))
        q, k = qk.transpose(1, 2).split([self.n_heads, self.n_kv], dim=1)  # [B, H, T, hd], [B, Hkv, T, hd]
        v = v.transpose(1, 2)  # [B, Hkv, T, hd]
        if torch.is_grad_enabled():  # attention saves v for backward; a view would keep all of qkv alive
            v = v.contiguous()
        if state is not None and (torch.is_grad_enabled() and k.requires_grad):
            if start:  # decoding with autograd on: keep the new keys' graph
                k = torch.cat([state["k"], k], dim=2)
                v = torch.cat([state["v"], v], dim=2)
            state["k"], state["v"] = k.detach(), v.detach()
        elif state is not None:
            k, v = append_kv(state, start, k, v)
        y = self._attend(q, k, v, start, docs)  # [B, H, T, hd]
        y = y.transpose(1, 2).reshape(B, T, self.q_dim)
        return linear(y, self.wo.weight), state

    def _rope_tables(self, start: int, T: int, docs: Documents | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed_sin: [T, 1, r] for positions start.., or [B, T, 1, r] at positions inside each document."""
        cos, sin = self.rotary(start, T)
        if docs is None or self.cfg.doc_positions == "window":
            return cos, sin
        pos = docs.positions()  # [B, T]
        return cos[pos], sin[pos]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, docs: Documents | None) -> torch.Tensor:
        gqa = self.n_kv != self.n_heads
        if docs is not None:  # block-diagonal causal, its masks shared by every layer of this forward
            return attend_documents(q, k, v, docs, gqa)
        if start == 0:
            return sdpa(q, k, v, is_causal=True, enable_gqa=gqa)
        T, S = q.shape[2], k.shape[2]
        if T == 1:  # one new token sees the whole cache
            return sdpa(q, k, v, enable_gqa=gqa)
        # chunked prefill: query i sits at position start + i and sees keys 0..start+i
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return sdpa(q, k, v, attn_mask=mask, enable_gqa=gqa)

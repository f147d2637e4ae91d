"""Gated Linear Attention (Yang et al. 2023), pure PyTorch; layer layout as fla's ``GatedLinearAttention``.

Recurrence per head (state S ∈ ℝ^{dk×dv}, per-channel decay α_t = exp(gk_t) ∈ (0, 1)^{dk}):

    S_t = Diag(α_t) S_{t-1} + k_t v_tᵀ,        o_t = scale · S_tᵀ q_t

``chunk_gla`` (training, prefill) and ``fused_recurrent_gla`` (decoding) compute it with fla's names and
conventions: inputs [B, T, H, K|V], ``gk`` the log-decay, returns ``(o, final_state)`` with the state in fp32.

Layer (fla defaults, the paper's synthetic-playground config): q, k: d -> expand_k·d; v, output gate g: d ->
expand_v·d; gk = logsigmoid(Linear(16→key_dim, bias)(Linear(d→16)(x))) / 16; per-head RMSNorm(o)·swish(g);
o_proj. Canon-b = SiLU short convs on q, k, v; Canon-B = Canon(res) on concat(q, k, v).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from archlab.model.canon import apply_canon, maybe_canon
from archlab.model.cpu_bf16 import linear
from archlab.model.documents import Documents, chunk_doc_masks, masked
from archlab.model.mixers import MIXERS, Mixer, MixerConfig
from archlab.model.mixers.short_conv import (
    ShortConvs,
    chunk_states,
    fla_op,
    fp32_core,
    from_chunks,
    norm_gate,
    recurrent_core_inputs,
    reset_state,
    run_core,
    to_chunks,
)
from archlab.model.norms import RMSNorm

if TYPE_CHECKING:
    from archlab.config import ModelConfig


# ----------------------------------------------------------------------------------------------- core math


@fp32_core
def fused_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token GLA. q, k, gk: [B, T, H, K]; v: [B, T, H, V]; state [B, H, K, V] (fp32); doc_ids [B, T]:
    the state restarts from zero at every document start (:mod:`archlab.model.documents`)."""
    T = q.shape[1]
    (q, k, v, gk), S, out_dtype, keep = recurrent_core_inputs(q, k, v, gk, scale=scale, initial_state=initial_state, doc_ids=doc_ids)
    out = []
    for t in range(T):
        S = gk[:, t, :, :, None].exp() * reset_state(S, keep, t) + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, None, :] @ S)[:, :, 0])
    return torch.stack(out, dim=1).to(out_dtype), (S if output_final_state else None)


# Largest log-decay a factorised block may span: every factor exp(·) then lies in [e^-30, e^30], far from fp32
# overflow and underflow, and each product q_ik e^{G_ik - G_rk} · k_jk e^{G_rk - G_jk} is exact to a few ulp.
MAX_FACTORISED_SPAN = 30.0


def intra_chunk_plan(G: torch.Tensor, sub_chunk_size: int) -> tuple[int, bool]:
    """(row-block size c, exact_diagonal) for chunk_gla, from the within-chunk cumulative log-decays G [.., C, K].

    * c = C: the decay accumulated over every chunk is ≤ 30 nats — one factorised matmul per chunk;
    * c = sub_chunk_size, exact_diagonal False: every sub-chunk spans ≤ 30 nats;
    * c = sub_chunk_size, exact_diagonal True: some sub-chunk decays faster — its relative decays are formed
      explicitly. Always exact; only the cost differs.
    """
    C = G.shape[-2]
    if G.numel() == 0:
        return C, False
    G = G.detach()
    if float(-G[..., -1, :].min()) <= MAX_FACTORISED_SPAN:
        return C, False
    c = math.gcd(C, sub_chunk_size)
    Gs = G.unflatten(-2, (C // c, c))
    start = torch.cat([torch.zeros_like(Gs[..., :1, -1, :]), Gs[..., :-1, -1, :]], dim=-2)
    return c, float((start - Gs[..., -1, :]).max()) > MAX_FACTORISED_SPAN


@fp32_core
def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk_size: int = 16,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked GLA, equal to :func:`fused_recurrent_gla`. Memory O(T·(C + K)) (O(T·c·K) on the exact path).

    Within a chunk, G = cumsum(gk) (fp32). The score of query i on key j ≤ i is Σ_k q_ik k_jk exp(G_ik − G_jk).
    Rows are taken in blocks of c steps (:func:`intra_chunk_plan`); for the block starting at s, with
    G_r = G_{s-1} (0 for s = 0), the scores are (q_i ⊙ exp(G_i − G_r)) · (k_j ⊙ exp(G_r − G_j)):
      * keys before the block: both exponents ≤ 0, always safe;
      * keys inside the block: exp(G_r − G_j) ≤ exp(span of the block) ≤ e^30 by the plan's choice of c, or,
        when even a sub-chunk decays faster, the exact relative decays exp(G_i − G_j) ([c, c, K]) are used.
    Nothing is ever formed as exp(−G) over an unbounded span, which is what overflows for vector gates.
    Between chunks: o_i += scale (q_i ⊙ exp(G_i)) S_n, with the states S_n entering each chunk from
    :func:`chunk_states` and S ← exp(G_C) ⊙ S + Σ_j (k_j ⊙ exp(G_C − G_j)) v_jᵀ.
    With doc_ids [B, T], every decay that spans a document start is multiplied by 0
    (:func:`~archlab.model.documents.chunk_doc_masks`): the state restarts at each document.
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    out_dtype = v.dtype
    q, k, v, gk = (to_chunks(t, C) for t in (q, k, v, gk))  # [B, H, N, C, K|V]
    q = q * scale
    G = gk.cumsum(dim=-2)  # [B, H, N, C, K], ≤ 0 and decreasing along C
    c, exact_diagonal = intra_chunk_plan(G, sub_chunk_size)
    docs = None if doc_ids is None else chunk_doc_masks(doc_ids, T, C)  # visible, carry_in, to_end, keep

    # -- intra-chunk scores A [B, H, N, C, C], one block of c rows at a time
    rows = []
    for s in range(0, C, c):
        G_r = G[..., s - 1 : s, :] if s else torch.zeros_like(G[..., :1, :])  # [.., 1, K]
        n_keys = s if exact_diagonal else s + c
        q_r = q[..., s : s + c, :] * (G[..., s : s + c, :] - G_r).exp()
        k_r = k[..., :n_keys, :] * (G_r - G[..., :n_keys, :]).exp()
        block = q_r @ k_r.transpose(-1, -2)  # [.., c, n_keys]
        if exact_diagonal:
            Gb = G[..., s : s + c, :]
            tril = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
            rel = (Gb[..., :, None, :] - Gb[..., None, :, :]).masked_fill(~tril[:, :, None], -math.inf).exp()
            diag = ((q[..., s : s + c, None, :] * k[..., None, s : s + c, :]) * rel).sum(-1)  # [.., c, c]
            block = torch.cat([block, diag], dim=-1)
        rows.append(F.pad(block, (0, C - block.shape[-1])) if block.shape[-1] < C else block)
    visible, carry_in, to_end, keep = (torch.ones(C, C, dtype=torch.bool, device=q.device).tril(), None, None, None) \
        if docs is None else (docs[0][:, None], docs[1][:, None, ..., None], docs[2][:, None, ..., None], docs[3])
    A = (torch.cat(rows, dim=-2) if len(rows) > 1 else rows[0]).masked_fill(~visible, 0.0)  # causal (same document)
    o = A @ v  # [B, H, N, C, V]

    # -- inter-chunk
    final = None
    if initial_state is not None or output_final_state or G.shape[2] > 1:
        G_last = G[..., -1, :]  # [B, H, N, K]
        dS = masked(k * (G_last[..., None, :] - G).exp(), to_end).transpose(-1, -2) @ v  # [B, H, N, K, V]
        states, final = chunk_states(G_last, dS, initial_state, keep)
        o = o + masked(q * G.exp(), carry_in) @ states
    return from_chunks(o, T).to(out_dtype), (final if output_final_state else None)


# ----------------------------------------------------------------------------------------------- layer


class GLAConfig(MixerConfig):
    name: Literal["gla"] = "gla"
    n_heads: int = Field(4, gt=0)
    expand_k: float = Field(0.5, gt=0, description="key width = expand_k * d_model (split over heads)")
    expand_v: float = Field(1.0, gt=0, description="value width = expand_v * d_model (split over heads)")
    use_output_gate: bool = True
    gate_low_rank_dim: int = Field(16, gt=0)
    gate_logit_normalizer: float = Field(16.0, gt=0)
    clamp_min: float | None = Field(None, lt=0, description="lower bound on the per-step log-decay gk")
    chunk_size: int = Field(64, gt=0)
    backend: Literal["torch", "fla"] = "torch"

    def dims(self, d_model: int) -> tuple[int, int]:
        """(key_dim, value_dim) over all heads."""
        return int(d_model * self.expand_k), int(d_model * self.expand_v)

    def check(self, d_model: int) -> None:
        kd, vd = self.dims(d_model)
        for field, width in (("expand_k", kd), ("expand_v", vd)):
            if width <= 0 or width % self.n_heads or width != d_model * getattr(self, field):
                raise ValueError(f"mixer.{field}={getattr(self, field)} gives width {d_model * getattr(self, field)}, "
                                 f"which must be a positive integer divisible by mixer.n_heads={self.n_heads}")

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        # intra-chunk scores and their product with v (causal average C/2), plus the state read/write
        kd, vd = self.dims(d_model)
        C = min(self.chunk_size, seq_len)
        return 2 * (kd * C / 2 + vd * C / 2 + 2 * kd * vd / self.n_heads)


@MIXERS.register("gla", GLAConfig)
class GatedLinearAttention(Mixer):
    def __init__(self, cfg: GLAConfig, model_cfg: "ModelConfig", layer_idx: int):
        super().__init__(cfg, model_cfg, layer_idx)
        d = model_cfg.d_model
        self.n_heads = cfg.n_heads
        self.key_dim, self.value_dim = cfg.dims(d)
        self.head_k, self.head_v = self.key_dim // cfg.n_heads, self.value_dim // cfg.n_heads
        self.init_std, self.out_std = model_cfg.init_std, model_cfg.init_std / math.sqrt(2 * model_cfg.n_layers)
        self.wqkv = nn.Linear(d, 2 * self.key_dim + self.value_dim, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if cfg.use_output_gate else None
        self.gk_down = nn.Linear(d, cfg.gate_low_rank_dim, bias=False)
        self.gk_up = nn.Linear(cfg.gate_low_rank_dim, self.key_dim, bias=True)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        self.norm = RMSNorm(self.head_v, model_cfg.norm_eps)
        self.canon_b = maybe_canon("B", 2 * self.key_dim + self.value_dim, model_cfg)
        self.short_conv = None
        if "b" in model_cfg.canon:  # fla's models re-initialise these convs with N(0, init_std)
            dims = {"q": self.key_dim, "k": self.key_dim, "v": self.value_dim}
            self.short_conv = ShortConvs(dims, model_cfg.canon_kernel, model_cfg.init_std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.wqkv, self.g_proj, self.gk_down, self.gk_up):
            if lin is not None:
                nn.init.normal_(lin.weight, std=self.init_std)
        nn.init.zeros_(self.gk_up.bias)
        nn.init.normal_(self.o_proj.weight, std=self.out_std)
        self.norm.reset_parameters()
        if self.short_conv is not None:
            self.short_conv.reset_parameters()

    def deepnorm_weights(self) -> list[tuple[torch.Tensor, slice]]:
        """(weight, rows) that residual='deepnorm' scales by beta at init: the value rows and the output projection."""
        return [(self.wqkv.weight, slice(2 * self.key_dim, None)), (self.o_proj.weight, slice(None))]

    def forward(self, x: torch.Tensor, state: dict | None = None, docs: Documents | None = None) -> tuple[torch.Tensor, dict | None]:
        B, T, _ = x.shape
        qkv = apply_canon(self.canon_b, linear(x, self.wqkv.weight), state, "canon_b", docs)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        if self.short_conv is not None:
            q, k, v = (self.short_conv(n, t, state, docs) for n, t in (("q", q), ("k", k), ("v", v)))
        gk = F.logsigmoid(linear(linear(x, self.gk_down.weight), self.gk_up.weight, self.gk_up.bias)) / self.cfg.gate_logit_normalizer
        if self.cfg.clamp_min is not None:
            gk = gk.clamp_min(self.cfg.clamp_min)
        H = self.n_heads
        q, k, gk = (t.reshape(B, T, H, self.head_k) for t in (q, k, gk))
        v = v.reshape(B, T, H, self.head_v)
        if self.cfg.backend == "fla":
            chunk, rec, kw = fla_op("gla", "chunk_gla", x), fla_op("gla", "fused_recurrent_gla", x), {}
        else:
            chunk, rec, kw = chunk_gla, fused_recurrent_gla, {"chunk_size": self.cfg.chunk_size}
        o = run_core(chunk, rec, (q, k, v, gk), state, None, kw, docs, self.cfg.backend == "fla")  # [B, T, H, head_v]
        gate = None if self.g_proj is None else linear(x, self.g_proj.weight).view(B, T, H, self.head_v)
        o = norm_gate(o, self.norm.weight, self.norm.eps, gate)
        return linear(o.reshape(B, T, self.value_dim), self.o_proj.weight), state

"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024) in pure PyTorch; layer layout as fla's ``GatedDeltaNet``.

Recurrence per head (state S ∈ ℝ^{dk×dv}, α_t = exp(g_t) ∈ (0, 1), β_t ∈ (0, 1), k_t unit-norm):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,        o_t = scale · S_tᵀ q_t

computed as S' = α_t S_{t-1}; u_t = β_t (v_t − S'ᵀ k_t); S_t = S' + k_t u_tᵀ. ``chunk_gated_delta_rule``
(training, prefill) and ``fused_recurrent_gated_delta_rule`` (decoding) use fla's names and argument order;
q, k: [B, T, H, K], v: [B, T, H, V], g, beta: [B, T, H]; returns ``(o, final_state)``. Like fla's naive
references they take g and β as given (no L2 norm, sigmoid or gate transform inside): the layer does those.

Layer: q, k: d -> H·head_dim, v: d -> H·head_dim·expand_v; q, k, v through SiLU short convs (Canon-b) or a
plain SiLU; q, k L2-normalised; β = sigmoid(b_proj x); g = −exp(A_log)·softplus(a_proj x + dt_bias);
per-head RMSNorm(o)·swish(g_proj x); o_proj. Canon-B = Canon(res) on concat(q, k, v) after the projection.
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
    acc,
    causal_decay,
    fla_op,
    fp32_core,
    from_chunks,
    init_dt_bias,
    no_decay,
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
def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token gated delta rule; state [B, H, K, V] in fp32; doc_ids [B, T]: the state restarts at every
    document start."""
    T = q.shape[1]
    (q, k, v, g, beta), S, out_dtype, keep = recurrent_core_inputs(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, doc_ids=doc_ids)
    out = []
    for t in range(T):
        S = g[:, t, :, None, None].exp() * reset_state(S, keep, t)
        u = beta[:, t, :, None] * (v[:, t] - (k[:, t, :, None, :] @ S)[:, :, 0])  # [B, H, V]
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        out.append((q[:, t, :, None, :] @ S)[:, :, 0])
    return torch.stack(out, dim=1).to(out_dtype), (S if output_final_state else None)


@fp32_core
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule (WY form), equal to :func:`fused_recurrent_gated_delta_rule`. Memory O(T·C).

    In a chunk entered with state S, with G = cumsum(g), γ_t = exp(G_t), Γ_ij = exp(G_i − G_j) (j ≤ i, else 0):
      u_t = β_t (v_t − γ_t Sᵀ k_t − Σ_{j<t} Γ_tj (k_t·k_j) u_j)  ⇔  (I + L) U = diag(β) V − diag(β γ) K S,
    L = StrictTril(diag(β) (K Kᵀ ⊙ Γ)). One triangular solve per chunk gives Ũ = (I+L)⁻¹ diag(β) V and
    W = (I+L)⁻¹ diag(βγ) K, independent of S; then sequentially over chunks U = Ũ − W S,
    o = scale [(γ ⊙ Q) S + (Q Kᵀ ⊙ Γ) U],  S ← γ_C S + (K ⊙ exp(G_C − G))ᵀ U.
    With doc_ids [B, T], the decays Γ, γ, exp(G_C − G) and γ_C are multiplied by 0 where they span a document
    start (:func:`~archlab.model.documents.chunk_doc_masks`): the state restarts at each document.
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    out_dtype = v.dtype
    V = v.shape[-1]
    q, k, v = (to_chunks(t, C) for t in (q, k, v))  # [B, H, N, C, K|V]
    G = to_chunks(g, C).cumsum(dim=-1)  # [B, H, N, C]
    beta = to_chunks(beta, C)  # [B, H, N, C]
    docs = None if doc_ids is None else chunk_doc_masks(doc_ids, T, C)  # visible, carry_in, to_end, keep
    visible, carry_in, to_end, keep = (None,) * 4 if docs is None else tuple(m[:, None] for m in docs)  # [B, 1, N, ...]
    Gamma = causal_decay(G, visible)  # [B, H, N, C, C]
    L = (beta[..., None] * (k @ k.transpose(-1, -2)) * Gamma).tril(-1)
    rhs = torch.cat([beta[..., None] * v, (beta * masked(G.exp(), carry_in))[..., None] * k], dim=-1)  # [B, H, N, C, V+K]
    U_tilde, W = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True).split([V, K], dim=-1)
    A = (q @ k.transpose(-1, -2)) * Gamma  # [B, H, N, C, C], includes the diagonal
    G_last = G[..., -1]  # [B, H, N]
    k_dec = k * masked((G_last[..., None] - G).exp(), to_end)[..., None]  # [B, H, N, C, K]
    S = q.new_zeros(B, H, K, V) if initial_state is None else acc(initial_state)
    states, us = [], []
    # unbind once: indexing chunk n inside the loop would make backward build a full-size gradient per chunk
    per_chunk = zip(U_tilde.unbind(2), W.unbind(2), k_dec.transpose(-1, -2).unbind(2), masked(G_last.exp(), keep).unbind(2))
    for u_tilde, w, k_dec_t, decay in per_chunk:
        states.append(S)
        u = u_tilde - w @ S  # [B, H, C, V]
        us.append(u)
        S = decay[:, :, None, None] * S + k_dec_t @ u
    U = torch.stack(us, dim=2)  # [B, H, N, C, V]
    o = (A @ U + (q * masked(G.exp(), carry_in)[..., None]) @ torch.stack(states, dim=2)) * scale
    return from_chunks(o, T).to(out_dtype), (S if output_final_state else None)


# ----------------------------------------------------------------------------------------------- layer


class GatedDeltaNetConfig(MixerConfig):
    name: Literal["gdn"] = "gdn"
    n_heads: int = Field(4, gt=0)
    head_dim: int | None = Field(None, gt=0, description="key head dim; None: 0.75 * d_model / n_heads (fla's ratio)")
    expand_v: float = Field(2.0, gt=0, description="value head dim = expand_v * head_dim")
    use_output_gate: bool = True
    allow_neg_eigval: bool = Field(False, description="beta = 2 sigmoid(.) so the transition can flip sign")
    A_init_range: tuple[float, float] = (0.0, 16.0)
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(0.1, gt=0)
    dt_init_floor: float = Field(1e-4, gt=0)
    chunk_size: int = Field(64, gt=0)
    backend: Literal["torch", "fla"] = "torch"

    def dims(self, d_model: int) -> tuple[int, int]:
        """(head_k, head_v)."""
        hk = self.head_dim if self.head_dim is not None else int(0.75 * d_model / self.n_heads)
        return hk, int(hk * self.expand_v)

    def check(self, d_model: int) -> None:
        hk, hv = self.dims(d_model)
        if self.head_dim is None and (hk <= 0 or hk * self.n_heads * 4 != 3 * d_model):
            raise ValueError(f"0.75*model.d_model={0.75 * d_model} is not divisible by mixer.n_heads={self.n_heads}; "
                             "set mixer.head_dim")
        if hv <= 0 or hv != hk * self.expand_v:
            raise ValueError(f"mixer.expand_v={self.expand_v} times head_dim={hk} is not a positive integer")
        if not 0 <= self.A_init_range[0] < self.A_init_range[1]:
            raise ValueError(f"mixer.A_init_range must satisfy 0 <= low < high, got {self.A_init_range}")

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        hk, hv = self.dims(d_model)
        C = min(self.chunk_size, seq_len)
        # K Kᵀ, Q Kᵀ, the triangular solve, A U, and the state read/update terms (W S, Q S, Kᵀ U)
        return 2 * self.n_heads * (2 * hk * C / 2 + C * (hv + hk) / 2 + hv * C / 2 + 3 * hk * hv)


@MIXERS.register("gdn", GatedDeltaNetConfig)
class GatedDeltaNet(Mixer):
    def __init__(self, cfg: GatedDeltaNetConfig, model_cfg: "ModelConfig", layer_idx: int):
        super().__init__(cfg, model_cfg, layer_idx)
        d = model_cfg.d_model
        H = self.n_heads = cfg.n_heads
        self.head_k, self.head_v = cfg.dims(d)
        self.key_dim, self.value_dim = H * self.head_k, H * self.head_v
        self.init_std, self.out_std = model_cfg.init_std, model_cfg.init_std / math.sqrt(2 * model_cfg.n_layers)
        self.wqkv = nn.Linear(d, 2 * self.key_dim + self.value_dim, bias=False)
        self.a_proj = nn.Linear(d, H, bias=False)
        self.b_proj = nn.Linear(d, H, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if cfg.use_output_gate else None
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        no_decay(self.A_log, self.dt_bias)
        self.norm = RMSNorm(self.head_v, model_cfg.norm_eps)
        self.canon_b = maybe_canon("B", 2 * self.key_dim + self.value_dim, model_cfg)
        self.short_conv = None
        if "b" in model_cfg.canon:  # fla's models re-initialise these convs with N(0, init_std)
            dims = {"q": self.key_dim, "k": self.key_dim, "v": self.value_dim}
            self.short_conv = ShortConvs(dims, model_cfg.canon_kernel, model_cfg.init_std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.wqkv, self.a_proj, self.b_proj, self.g_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=self.init_std)
        nn.init.normal_(self.o_proj.weight, std=self.out_std)
        lo, hi = self.cfg.A_init_range
        with torch.no_grad():  # A = U(lo, hi) as fla; clamped away from 0 so that log stays finite
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(lo, hi).clamp_min(1e-4).log())
        init_dt_bias(self.dt_bias, self.cfg.dt_min, self.cfg.dt_max, self.cfg.dt_init_floor)
        self.norm.reset_parameters()
        if self.short_conv is not None:
            self.short_conv.reset_parameters()

    def deepnorm_weights(self) -> list[tuple[torch.Tensor, slice]]:
        """(weight, rows) that residual='deepnorm' scales by beta at init: the value rows and the output projection."""
        return [(self.wqkv.weight, slice(2 * self.key_dim, None)), (self.o_proj.weight, slice(None))]

    def forward(self, x: torch.Tensor, state: dict | None = None, docs: Documents | None = None) -> tuple[torch.Tensor, dict | None]:
        B, T, _ = x.shape
        H = self.n_heads
        qkv = apply_canon(self.canon_b, linear(x, self.wqkv.weight), state, "canon_b", docs)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        if self.short_conv is not None:
            q, k, v = (self.short_conv(n, t, state, docs) for n, t in (("q", q), ("k", k), ("v", v)))
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = F.normalize(q.reshape(B, T, H, self.head_k), dim=-1, eps=1e-6)
        k = F.normalize(k.reshape(B, T, H, self.head_k), dim=-1, eps=1e-6)
        v = v.reshape(B, T, H, self.head_v)
        beta = torch.sigmoid(acc(linear(x, self.b_proj.weight)))  # [B, T, H]
        if self.cfg.allow_neg_eigval:
            beta = 2 * beta
        g = -acc(self.A_log).exp() * F.softplus(acc(linear(x, self.a_proj.weight)) + self.dt_bias)
        if self.cfg.backend == "fla":
            ops = "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"
            chunk, rec, kw = fla_op("gated_delta_rule", ops[0], x), fla_op("gated_delta_rule", ops[1], x), {}
        else:
            chunk, rec = chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
            kw = {"chunk_size": self.cfg.chunk_size}
        o = run_core(chunk, rec, (q, k, v, g, beta), state, None, kw, docs, self.cfg.backend == "fla")  # [B, T, H, head_v]
        gate = None if self.g_proj is None else linear(x, self.g_proj.weight).view(B, T, H, self.head_v)
        o = norm_gate(o, self.norm.weight, self.norm.eps, gate)
        return linear(o.reshape(B, T, self.value_dim), self.o_proj.weight), state

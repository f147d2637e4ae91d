"""Mamba2 (SSD, Dao & Gu 2024) in pure PyTorch; layer layout as HF/fla ``Mamba2Mixer``.

SSD per head (state h ∈ ℝ^{N×P}, scalar A < 0 per head, Δ_t = softplus(dt_t + dt_bias)):

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_tᵀ,        y_t = h_tᵀ C_t + D x_t

is scalar-decay linear attention (simple GLA) with q = C, k = B, v = Δ·x, log-decay g = Δ·A and scale 1.
That core is exposed with fla's names: ``chunk_simple_gla`` / ``fused_recurrent_simple_gla`` (q, k: [B, T, H, K],
v: [B, T, H, V], g: [B, T, H]) -> ``(o, final_state)``; the D skip, the SiLU gate and the norm live in the layer.

Layer: in_proj d -> [z (d_inner) | xBC (d_inner + 2·G·N) | dt (H)]; Canon-b = causal depthwise conv (with bias)
+ SiLU on xBC (without ``b`` in model.canon: identity, no SiLU, as PhysicsLM4's ``noconv1d``); Canon-B =
Canon(res) on the whole in_proj output; y = SSD(x, B, C) + D·x; out = out_proj(RMSNorm_group(y · silu(z))).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from archlab.model.canon import Canon, apply_canon, maybe_canon
from archlab.model.cpu_bf16 import linear
from archlab.model.fused import silu_mul
from archlab.model.documents import Documents, chunk_doc_masks, masked
from archlab.model.mixers import MIXERS, Mixer, MixerConfig
from archlab.model.mixers.short_conv import (
    acc,
    causal_decay,
    chunk_states,
    fla_op,
    fp32_core,
    from_chunks,
    init_dt_bias,
    no_decay,
    recurrent_core_inputs,
    reset_state,
    run_core,
    to_chunks,
)

if TYPE_CHECKING:
    from archlab.config import ModelConfig


# ----------------------------------------------------------------------------------------------- core math


@fp32_core
def fused_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = scale·S_tᵀ q_t. g: [B, T, H]; state [B, H, K, V];
    doc_ids [B, T]: the state restarts at every document start.

    q, k may have fewer heads than v (see :func:`chunk_simple_gla`)."""
    T, Hq, H = q.shape[1], q.shape[2], v.shape[2]
    q, k = (t.repeat_interleave(H // Hq, dim=2) if H != Hq else t for t in (q, k))  # grouped q/k, as chunk_simple_gla
    (q, k, v, g), S, out_dtype, keep = recurrent_core_inputs(q, k, v, g, scale=scale, initial_state=initial_state, doc_ids=doc_ids)
    out = []
    for t in range(T):
        S = g[:, t, :, None, None].exp() * reset_state(S, keep, t) + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, None, :] @ S)[:, :, 0])
    return torch.stack(out, dim=1).to(out_dtype), (S if output_final_state else None)


@fp32_core
def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    doc_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked scalar-decay linear attention, equal to :func:`fused_recurrent_simple_gla`. Memory O(T·C).

    G = cumsum(g) within a chunk (fp32). Intra-chunk: o_i = scale Σ_{j≤i} (q_i·k_j) exp(G_i − G_j) v_j. Between
    chunks: o_i += scale·exp(G_i) q_iᵀ S_n with S_n the state entering the chunk (:func:`chunk_states`),
    S ← exp(G_C) S + Σ_j k_j (exp(G_C − G_j) v_j)ᵀ.

    The decay is a scalar per (head, step), so it factors out of the causal mask: with a reference r per chunk,
    Σ_{j≤i} (q_i·k_j) e^{G_i−G_j} v_j = e^{G_i−r} Σ_{j≤i} (q_i·k_j) (e^{r−G_j} v_j) — one masked QKᵀ per q/k head
    times the rescaled values of all its heads in one matmul, with no [C, C] decay matrix per head. With r the
    chunk's mid-decay every factor lies in [e^{-S/2}, e^{S/2}] for a chunk spanning S nats; when some chunk
    spans more than :data:`MAX_FACTORISED_SPAN` the relative decays are formed explicitly instead (masked to −∞
    before exp, every exponent ≤ 0). Both are exact to a few ulp; only the cost differs.

    Beyond fla: q and k may have fewer heads Hq than v and g (H a multiple of Hq); q/k head i then serves
    heads i·H/Hq … (i+1)·H/Hq − 1 — Mamba2's n_groups — and QKᵀ is computed once per group.

    doc_ids [B, T]: decays spanning a document start are multiplied by 0
    (:func:`~archlab.model.documents.chunk_doc_masks`), so the state restarts at each document.
    """
    B, T, Hq, K = q.shape
    H, V = v.shape[2], v.shape[3]
    if H % Hq:
        raise ValueError(f"v has {H} heads, not a multiple of q/k's {Hq}")
    R = H // Hq
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    out_dtype = v.dtype
    q, k, v = (to_chunks(t, C) for t in (q, k, v))  # q, k: [B, Hq, N, C, K]; v: [B, H, N, C, V]
    N = q.shape[2]
    G = to_chunks(g, C).cumsum(dim=-1)  # [B, H, N, C], decreasing from ≤ 0
    G_last = G[..., -1]  # [B, H, N]: minus each chunk's span

    def heads_to_columns(x: torch.Tensor) -> torch.Tensor:  # [B, H, N, X, V] -> [B, Hq, N, X, R*V]
        return x.view(B, Hq, R, N, x.shape[-2], V).permute(0, 1, 3, 4, 2, 5).reshape(B, Hq, N, x.shape[-2], R * V)

    def columns_to_heads(x: torch.Tensor) -> torch.Tensor:  # inverse of heads_to_columns
        return x.view(B, Hq, N, x.shape[-2], R, V).permute(0, 1, 4, 2, 3, 5).reshape(B, H, N, x.shape[-2], V)

    q = q * scale
    qk = q @ k.transpose(-1, -2)  # [B, Hq, N, C, C]
    docs = None if doc_ids is None else chunk_doc_masks(doc_ids, T, C)  # visible, carry_in, to_end, keep
    visible, carry_in, to_end, keep = (None,) * 4 if docs is None else (
        docs[0][:, None], docs[1][:, None], docs[2][:, None, :, :, None], docs[3])  # [B, 1, N, C, C|-|1], [B, N]
    carry = initial_state is not None or output_final_state or N > 1  # any state between chunks
    if N == 0 or float(-G_last.detach().min()) <= MAX_FACTORISED_SPAN:
        ref = G_last[..., None] / 2  # [B, H, N, 1]
        v_cols = heads_to_columns(v * (ref - G).exp()[..., None])  # e^{r−G_j} v_j: [B, Hq, N, C, R*V]
        o = (G - ref).exp()[..., None] * columns_to_heads((qk.tril() if visible is None else qk.masked_fill(~visible, 0.0)) @ v_cols)  # [B, H, N, C, V]
        state_factor = (G_last / 2).exp()[..., None, None]  # e^{G_C−r}: turns e^{r−G_j} v_j into e^{G_C−G_j} v_j
    else:
        A = qk[:, :, None] * causal_decay(G, visible).view(B, Hq, R, N, C, C)  # [B, Hq, R, N, C, C]
        o = (A @ v.view(B, Hq, R, N, C, V)).view(B, H, N, C, V)
        v_cols = heads_to_columns(v * (G_last[..., None] - G).exp()[..., None]) if carry else None
        state_factor = 1.0
    final = None
    if carry:
        dS = columns_to_heads(k.transpose(-1, -2) @ masked(v_cols, to_end)) * state_factor  # [B, H, N, K, V]
        states, final = chunk_states(G_last, dS, initial_state, keep)
        o = o + masked(G.exp(), carry_in)[..., None] * columns_to_heads(q @ heads_to_columns(states))
    return from_chunks(o, T).to(out_dtype), (final if output_final_state else None)


# Largest span (nats of decay within one chunk) for the factorised intra-chunk form: its factors then lie in
# [e^-30, e^30], far from fp32 overflow and underflow (as GLA's MAX_FACTORISED_SPAN bounds its factors).
MAX_FACTORISED_SPAN = 60.0


# ----------------------------------------------------------------------------------------------- layer


class Mamba2Config(MixerConfig):
    name: Literal["mamba2"] = "mamba2"
    d_state: int = Field(64, gt=0, description="N: state size per head (the B and C width per group)")
    n_heads: int = Field(16, gt=0)
    head_dim: int | None = Field(None, gt=0, description="if set, n_heads = expand * d_model / head_dim")
    expand: int = Field(2, gt=0)
    n_groups: int = Field(1, gt=0, description="B/C groups shared by n_heads / n_groups heads each")
    conv_bias: bool = True
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(0.1, gt=0)
    dt_init_floor: float = Field(1e-4, gt=0)
    chunk_size: int = Field(64, gt=0)
    backend: Literal["torch", "fla"] = "torch"

    @field_validator("A_init_range")
    @classmethod
    def _a_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {v}")
        return v

    def heads(self, d_model: int) -> tuple[int, int]:
        """(n_heads, head_dim)."""
        d_inner = self.expand * d_model
        if self.head_dim is not None:
            return d_inner // self.head_dim, self.head_dim
        return self.n_heads, d_inner // self.n_heads

    def check(self, d_model: int) -> None:
        d_inner = self.expand * d_model
        if self.head_dim is not None and d_inner % self.head_dim:
            raise ValueError(f"mixer.head_dim={self.head_dim} does not divide expand*d_model={d_inner}")
        if self.head_dim is None and d_inner % self.n_heads:
            raise ValueError(f"mixer.n_heads={self.n_heads} does not divide expand*d_model={d_inner}")
        H, _ = self.heads(d_model)
        if H % self.n_groups:
            raise ValueError(f"mixer.n_groups={self.n_groups} does not divide the number of heads ({H})")
        if self.dt_min > self.dt_max:
            raise ValueError(f"mixer.dt_min={self.dt_min} exceeds mixer.dt_max={self.dt_max}")

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        H, P = self.heads(d_model)
        C = min(self.chunk_size, seq_len)
        return 2 * H * (self.d_state * C / 2 + P * C / 2 + 2 * self.d_state * P)


@MIXERS.register("mamba2", Mamba2Config)
class Mamba2(Mixer):
    def __init__(self, cfg: Mamba2Config, model_cfg: "ModelConfig", layer_idx: int):
        super().__init__(cfg, model_cfg, layer_idx)
        d = model_cfg.d_model
        self.n_heads, self.head_dim = cfg.heads(d)
        self.d_inner, self.N, self.G = cfg.expand * d, cfg.d_state, cfg.n_groups
        self.conv_dim = self.d_inner + 2 * self.G * self.N
        self.eps = model_cfg.norm_eps
        self.init_std, self.out_std = model_cfg.init_std, model_cfg.init_std / math.sqrt(2 * model_cfg.n_layers)
        proj = 2 * self.d_inner + 2 * self.G * self.N + self.n_heads
        self.in_proj = nn.Linear(d, proj, bias=False)
        self.canon_b = maybe_canon("B", proj, model_cfg)
        if "b" in model_cfg.canon:
            self.conv = Canon(self.conv_dim, model_cfg.canon_kernel, residual=False, activation=False)
            self.conv_bias = nn.Parameter(torch.empty(self.conv_dim)) if cfg.conv_bias else None
        else:
            self.conv, self.conv_bias = None, None
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        no_decay(self.dt_bias, self.A_log, self.D)
        self.norm_weight = nn.Parameter(torch.empty(self.d_inner))  # gated RMSNorm, normalised per group
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.in_proj.weight, std=self.init_std)
        nn.init.normal_(self.out_proj.weight, std=self.out_std)
        if self.conv is not None:
            self.conv.reset_parameters()  # PyTorch's default Conv1d init, as HF Mamba2
            if self.conv_bias is not None:
                bound = 1.0 / math.sqrt(self.conv.kernel)
                nn.init.uniform_(self.conv_bias, -bound, bound)
        lo, hi = self.cfg.A_init_range
        with torch.no_grad():
            self.A_log.copy_(torch.empty(self.n_heads).uniform_(lo, hi).log())
        init_dt_bias(self.dt_bias, self.cfg.dt_min, self.cfg.dt_max, self.cfg.dt_init_floor)
        nn.init.ones_(self.D)
        nn.init.ones_(self.norm_weight)

    def deepnorm_weights(self) -> list[tuple[torch.Tensor, slice]]:
        """(weight, rows) that residual='deepnorm' scales by beta at init: the value rows and the output projection."""
        return [(self.in_proj.weight, slice(self.d_inner, 2 * self.d_inner)), (self.out_proj.weight, slice(None))]

    def forward(self, x: torch.Tensor, state: dict | None = None, docs: Documents | None = None) -> tuple[torch.Tensor, dict | None]:
        B, T, _ = x.shape
        H, P, N, G = self.n_heads, self.head_dim, self.N, self.G
        zxbcdt = apply_canon(self.canon_b, linear(x, self.in_proj.weight), state, "canon_b", docs)
        z, xbc, dt = zxbcdt.split([self.d_inner, self.conv_dim, H], dim=-1)
        if self.conv is not None:
            xbc = self.conv(xbc, state, "conv_xbc", docs)
            xbc = F.silu(xbc if self.conv_bias is None else xbc + self.conv_bias)
        xs, Bm, Cm = xbc.split([self.d_inner, G * N, G * N], dim=-1)
        xs = xs.reshape(B, T, H, P)
        Bm, Cm = Bm.reshape(B, T, G, N), Cm.reshape(B, T, G, N)  # one B, C per group of H / G heads
        dt = F.softplus(acc(dt) + self.dt_bias)  # Δ: [B, T, H]
        g = -torch.exp(acc(self.A_log)) * dt  # log-decay Δ·A
        v = xs * dt[..., None].to(xs.dtype)
        if self.cfg.backend == "fla":
            ops = ("simple_gla", "chunk_simple_gla"), ("simple_gla", "fused_recurrent_simple_gla")
            chunk, rec, kw = fla_op(*ops[0], x), fla_op(*ops[1], x), {}
            Bm, Cm = Bm.repeat_interleave(H // G, dim=2), Cm.repeat_interleave(H // G, dim=2)  # fla wants H heads
            v = v.to(Cm.dtype)  # Δ is fp32; the kernels want q, k, v in one dtype
        else:
            chunk, rec, kw = chunk_simple_gla, fused_recurrent_simple_gla, {"chunk_size": self.cfg.chunk_size}
        y = run_core(chunk, rec, (Cm, Bm, v, g), state, 1.0, kw, docs, self.cfg.backend == "fla")  # [B, T, H, P]
        y = y + xs * self.D[:, None].to(xs.dtype)
        y = self._gated_norm(y.reshape(B, T, self.d_inner), z)
        return linear(y, self.out_proj.weight), state

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """RMSNorm(y · silu(z)) over groups of d_inner / n_groups channels (norm_before_gate=False), fp32 stats."""
        h = acc(silu_mul(z, y))
        if self.G == 1:  # one group: the weight goes into the fused kernel
            return F.rms_norm(h, (h.shape[-1],), self.norm_weight.to(h.dtype), self.eps).to(y.dtype)
        h = F.rms_norm(h.unflatten(-1, (self.G, -1)), (h.shape[-1] // self.G,), eps=self.eps).flatten(-2)
        return self.norm_weight * h.to(y.dtype)

"""Pieces shared by the linear mixers (GLA, Mamba2, Gated DeltaNet).

* :class:`ShortConvs` — Canon-b: the architectures' own SiLU short convolutions (fla ``ShortConvolution``),
  one :class:`~archlab.model.canon.Canon` (no residual, SiLU) per named input, decode states in the mixer's
  state dict under ``conv_<name>``.
* :func:`norm_gate` — the per-head output RMSNorm times the swish output gate (GLA, GDN).
* :func:`init_dt_bias` — Mamba's Δ parametrisation: dt log-uniform in [dt_min, dt_max], stored as softplus⁻¹.
* :func:`no_decay` — flag 1-D dynamics parameters (A_log, dt_bias, D) for AdamW without weight decay, no Muon.
* :func:`fla_op` — lazy import of an fla kernel for ``backend: fla`` with a clear error when it cannot run.
* :func:`run_core` — the decode/training dispatch every linear mixer shares: chunked form in training and
  prefill (continuing from ``state["ssm"]``), recurrent form for single-token steps; with document masking,
  the chunked form resets the state at every document start (fla kernels get the batch as one row with
  ``cu_seqlens``).
* :func:`to_chunks`, :func:`from_chunks`, :func:`chunk_states` — chunking helpers of the pure-torch
  chunked recurrences (zero padding of the tail, the states entering every chunk).
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archlab.model.canon import Canon
from archlab.model.documents import cu_seqlens, step_keep

if TYPE_CHECKING:
    from archlab.model.documents import Documents


class ShortConvs(nn.Module):
    """Separate causal depthwise SiLU convolutions (kernel K, no bias, no residual) on several inputs."""

    def __init__(self, dims: dict[str, int], kernel: int, init_std: float | None = None):
        super().__init__()
        self.convs = nn.ModuleDict({n: Canon(d, kernel, residual=False, activation=True) for n, d in dims.items()})
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs.values():
            if self.init_std is None:
                conv.reset_parameters()  # PyTorch's default Conv1d init
            else:  # fla models re-initialise every nn.Conv1d with N(0, initializer_range)
                nn.init.normal_(conv.weight, std=self.init_std)

    def forward(self, name: str, x: torch.Tensor, state: dict | None, docs: "Documents | None" = None) -> torch.Tensor:
        """x: [B, T, C] -> SiLU(causal conv(x)), reading/updating ``state['conv_<name>']`` when decoding."""
        return self.convs[name](x, state, f"conv_{name}", docs)


def init_dt_bias(p: torch.Tensor, dt_min: float, dt_max: float, dt_floor: float) -> None:
    """In place: p = softplus⁻¹(dt), dt = exp(U(log dt_min, log dt_max)) clamped at dt_floor."""
    with torch.no_grad():
        dt = torch.exp(torch.rand_like(p) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp_min(dt_floor)
        p.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt) = dt + log(1 - exp(-dt))


def no_decay(*params: nn.Parameter) -> None:
    for p in params:
        p._no_weight_decay = True
        p._no_muon = True


def fla_op(package: str, name: str, x: torch.Tensor) -> Callable:
    """``fla.ops.<package>.<name>``, imported on first use; raises if fla or CUDA is missing."""
    if not x.is_cuda:
        raise RuntimeError(f"mixer.backend='fla' runs Triton kernels and needs CUDA tensors, got device {x.device}; "
                           "use mixer.backend=torch on this device")
    try:
        module = importlib.import_module(f"fla.ops.{package}")
    except ImportError as err:
        raise RuntimeError(
            f"mixer.backend='fla' needs flash-linear-attention (pip install flash-linear-attention): {err}"
        ) from err
    return getattr(module, name)


def run_core(
    chunk: Callable,
    recurrent: Callable,
    args: tuple[torch.Tensor, ...],
    state: dict | None,
    scale: float | None,
    chunk_kwargs: dict,
    docs: "Documents | None" = None,
    fla: bool = False,
) -> torch.Tensor:
    """o from ``chunk(*args, ...)`` or (one decoding step) ``recurrent(*args, ...)``; keeps ``state['ssm']``.

    With ``docs`` (training / evaluation only) the state restarts at every document: the pure-torch forms take
    ``doc_ids``; fla's kernels (``fla=True``) take the batch flattened to one row of B·T tokens and its
    ``cu_seqlens``, every row starting a new sequence.
    """
    if state is None:
        if docs is None or docs.single:
            o, _ = chunk(*args, scale=scale, **chunk_kwargs)
        elif fla:
            B, T = args[0].shape[:2]
            flat = [a.reshape(1, B * T, *a.shape[2:]) for a in args]
            o, _ = chunk(*flat, scale=scale, cu_seqlens=cu_seqlens(docs.ids).long(), **chunk_kwargs)
            o = o.view(B, T, *o.shape[2:])
        else:
            o, _ = chunk(*args, scale=scale, doc_ids=docs.ids, **chunk_kwargs)
        return o
    if docs is not None:
        raise ValueError("document masking applies to training / evaluation forwards, not to decoding with a cache")
    init = state.get("ssm")
    T = args[0].shape[1]
    if T == 1:
        o, final = recurrent(*args, scale=scale, initial_state=init, output_final_state=True)
    else:
        o, final = chunk(*args, scale=scale, initial_state=init, output_final_state=True, **chunk_kwargs)
    state["ssm"] = final.detach()
    return o


def norm_gate(o: torch.Tensor, weight: torch.Tensor, eps: float, g: torch.Tensor | None) -> torch.Tensor:
    """RMSNorm(o) · weight · swish(g) over the last dim (fla's FusedRMSNormGated), statistics in fp32."""
    o = F.rms_norm(acc(o), (o.shape[-1],), eps=eps).to(o.dtype) * weight
    return o if g is None else o * F.silu(g)


def fp32_core(fn: Callable) -> Callable:
    """Run a recurrence with autocast off: its inputs are cast to fp32 (see :func:`acc`), and its matmuls
    (chunk states, scores, the triangular solve) stay in fp32 under bf16 training too."""

    @functools.wraps(fn)
    def wrapper(q: torch.Tensor, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


def acc(x: torch.Tensor) -> torch.Tensor:
    """x in the accumulation dtype of the recurrences: fp32, or fp64 if it already is."""
    return x if x.dtype == torch.float64 else x.float()


def recurrent_core_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *gates: torch.Tensor,
    scale: float | None, initial_state: torch.Tensor | None, doc_ids: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.dtype, torch.Tensor | None]:
    """The shared start of the token-by-token cores: ((q·scale, k, v, *gates) in :func:`acc` dtype,
    state S [B, H, K, V] (zeros or ``initial_state``), output dtype = v's, keep [B, T] or None: 0 where a
    document starts, see :func:`reset_state`). scale defaults to K^-0.5."""
    B, _, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, *gates = (acc(t) for t in (q, k, v, *gates))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else acc(initial_state)
    keep = None if doc_ids is None else step_keep(doc_ids).to(S.dtype)
    return (q * scale, k, v, *gates), S, out_dtype, keep


def reset_state(S: torch.Tensor, keep: torch.Tensor | None, t: int) -> torch.Tensor:
    """S [B, H, K, V] before step t, zeroed in the rows where step t starts a document (keep [B, T])."""
    return S if keep is None else S * keep[:, t, None, None, None]


def to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, *rest] -> [B, H, N, C, *rest] in fp32 (fp64 stays), the tail zero-padded to N*C steps.

    Zero padding is exact for every recurrence here: a padded step has k = 0 (or β = 0) and log-decay 0, so it
    leaves the state unchanged, and its outputs are cut off by :func:`from_chunks`.
    """
    B, T, H = x.shape[:3]
    pad = (-T) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    x = acc(x).reshape(B, (T + pad) // C, C, H, *x.shape[3:])
    return x.movedim(3, 1).contiguous()


def from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, T, H, D]."""
    B, H, N, C, D = x.shape
    return x.movedim(1, 3).reshape(B, N * C, H, D)[:, :T]


def causal_decay(G: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Relative decays within a chunk: exp(G_i − G_j) for j ≤ i, 0 above the diagonal. G: [..., C] (cumulative
    log-decay) -> [..., C, C]. Masked to −∞ before exp, so every exponent taken is ≤ 0. The mask and exp run in
    place (neither the difference nor the masked copy is needed for backward): two [..., C, C] allocations
    fewer, which on CPU is page-fault time as much as arithmetic. ``visible`` (document masking, broadcastable
    bool [..., C, C] from :func:`~archlab.model.documents.chunk_doc_masks`) replaces the causal mask."""
    C = G.shape[-1]
    if visible is None:
        visible = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    return (G[..., :, None] - G[..., None, :]).masked_fill_(~visible, -math.inf).exp_()


def chunk_states(
    log_decay: torch.Tensor, dS: torch.Tensor, S0: torch.Tensor | None, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """States entering every chunk and the state after the last one, for S_{n+1} = exp(a_n) ⊙ S_n + dS_n.

    log_decay a: [B, H, N] (scalar per head) or [B, H, N, K] (per key channel); dS: [B, H, N, K, V]; keep [B, N]
    (document masking, :func:`~archlab.model.documents.chunk_doc_masks`): 0 where a document starts inside
    chunk n, so that the entering state does not survive it.
    A sequential pass over the N = T / chunk_size chunks (measured faster on CPU than the closed form
    Σ_m exp(Σ_{m<l≤n} a_l) dS_m as one [N, N] matmul, and free of its N² cost). The inputs are unbound once:
    indexing chunk n inside the loop would make backward build a full-size gradient per chunk.
    Returns ([B, H, N, K, V], [B, H, K, V]).
    """
    S = dS.new_zeros(dS[:, :, 0].shape) if S0 is None else S0.to(dS.dtype)
    decay = log_decay.exp()
    if keep is not None:
        decay = decay * (keep[:, None] if log_decay.dim() == 3 else keep[:, None, :, None])
    decay = decay[..., None, None] if log_decay.dim() == 3 else decay[..., None]  # broadcast over [K, V] / [V]
    states = []
    for d, ds in zip(decay.unbind(2), dS.unbind(2)):
        states.append(S)
        S = d * S + ds
    return torch.stack(states, dim=2), S

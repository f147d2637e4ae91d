"""Learnable multipliers (LRM; Velikanov et al. 2026, arXiv 2601.04890): free the scale of matrix layers.

With decoupled weight decay a matrix's norm settles at an equilibrium ~sqrt(lr / wd) set by hyperparameters,
not by the data. A learnable multiplier, trained by AdamW, takes that scale over (spec
``keel_lrm_muon.md`` §B)::

    scalar:  W_eff = s * W
    vector:  W_eff = diag(r) W diag(c),   (W_eff)_ij = r_i W_ij c_j    (r: per output row, c: per input column)
    both:    W_eff = s * diag(r) W diag(c)

All multipliers start at 1, so attaching them does not change the model's function at init.

Mechanism: ``torch.nn.utils.parametrize`` on the ``weight`` of each selected ``nn.Linear`` / ``nn.Embedding``.
The module keeps its class (a parametrized subclass of it) and every read of ``module.weight`` -- its own
forward, a mixer that calls ``F.linear(x, self.proj.weight)``, or the LM's tied head ``F.linear(h, embed.weight)``
-- sees W_eff. The raw matrix stays the same ``nn.Parameter`` object (now at
``<module>.parametrizations.weight.original``), so flags such as ``_no_muon`` survive. ``merge_multipliers``
writes W_eff into that parameter and removes the parametrization: the merged model has the plain
architecture's modules and state_dict keys, and costs nothing extra at inference.

Which layers (``model.multiplier_targets``; selected by module *name*, never by mixer class, so every mixer
built from ``nn.Linear`` layers is covered):
  * ``mixer``:     every ``nn.Linear`` below a module named ``mixer`` (attention wqkv/wo; GLA, Mamba2, GDN
                   projections).
  * ``mlp``:       every ``nn.Linear`` below a module named ``mlp`` (w_in = [gate; up], w_down).
  * ``head``:      the untied LM head (``head``). With tied embeddings there is no head module: use ``embedding``.
  * ``embedding``: the ``nn.Embedding`` named ``embed``. With tied embeddings its multipliers act on the one
                   shared matrix, i.e. on both the lookup and the head (the only placement that stays mergeable).

Placement of the vectors, and the symmetries (degenerate directions) that decide it (§B.6). A row multiplier
goes on every selected matrix; a column multiplier only where it is not redundant with something already
in the model:
  * In-projections (a mixer/MLP matrix reading the block input, in_features == d_model): no columns under
    ``pre``, ``keel`` and ``sandwich`` residuals, where the input is N_in(x) = gamma * n(x) and (gamma * a, c / a)
    is an exact symmetry. Under ``post`` and ``deepnorm`` the input is the previous norm's output, which also
    feeds the skip path, so there a column is a genuine per-sub-layer input scale and is kept.
  * Out-projections (``wo``, ``o_proj``, ``out_proj``, ``w_down``, ...): no columns. Their input channel is
    reached linearly from a row of the preceding in-projection (attention: softmax(qk^T) v is linear in v, so
    c_o == r_v; SwiGLU: silu(g) * up is linear in up, so c_down == r_up) or sits behind a gated norm gain
    (GLA / GDN / Mamba2 output norms). Exception: the GELU MLP's w_down, behind a nonlinearity, keeps columns.
  * Other internal matrices (e.g. the second factor of a low-rank gate) have their input reached linearly
    from the previous matrix's rows: no columns.
  * LM head: rows (a per-token logit scale; softmax is not scale-invariant) but no columns, which would
    duplicate the gain of the norm in front of the head (final norm, or the last N_out under post/keel).
  * Embedding: rows (per-token scale) and columns (per-channel scale): neither is redundant. The r.c outer
    product keeps its one flat direction (r * a, c / a), pinned by the multiplier weight decay. With
    ``model.embed_norm`` (and untied) the norm erases a per-token scale: no rows.
  * Scalars (``scalar`` / ``both``) go on every selected matrix. Behind a norm a scalar duplicates a common
    scale of that norm's gain (one flat direction per norm), and in ``both`` it duplicates a common scale of
    the row vector (s * a, r / a): kept deliberately, since the scalar takes Adam steps of its own size (the
    paper's scalar diagnostic / scalar+vector variant); the small multiplier weight decay pins these.
Flat directions that remain and are left to the multiplier weight decay (the paper's remedy):
  * q and k rows inside the fused ``wqkv`` enter the logits only as r_q * r_k per rotary pair and kv-head
    (a per-dimension scale before RoPE is still an exact re-parametrisation of W_q; it is just not identifiable);
  * behind a per-head norm (qk_norm, L2-normalised q/k in GDN, per-head output norms) only a per-head common
    scale of the rows is flat;
  * under ``pre``, a common scale of every residual write (out-projection rows and, if targeted, the embedding)
    is flat up to the final norm, so those rows can drift together (§B.6.3). ``multiplier_stats`` reports
    min/max per layer to watch for it.

Optimiser treatment (``archlab.optim``): every multiplier carries ``_optim_group = "multiplier"``,
``_lr_mult`` (model.multiplier_lr_mult), ``_weight_decay`` (model.multiplier_weight_decay, 2e-3 by default) and
``_no_muon``: it goes to its own AdamW group (also under ``optim.name=muon``), never gets the model's weight
decay, and is left out of the global grad-norm clip (its gradient sums a whole row or column of W and would
dominate the norm, throttling every matrix update).

Caveats: a module's ``reset_parameters`` called *after* ``attach_multipliers`` writes into a temporary W_eff
(a no-op on the raw weight): re-initialise before attaching. Weights shared by two modules (other than the
LM's own embed/head tying) are refused.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from archlab.model.config import ModelConfig


MULTIPLIER_MODES = ("none", "scalar", "vector", "both")
TARGETS = ("mixer", "mlp", "head", "embedding")

# Module-name patterns (dotted names from model.named_modules()) per target, and the module type each selects.
TARGET_PATTERNS: dict[str, tuple[re.Pattern[str], type[nn.Module]]] = {
    "mixer": (re.compile(r"(^|\.)mixer\."), nn.Linear),
    "mlp": (re.compile(r"(^|\.)mlp\."), nn.Linear),
    "head": (re.compile(r"(^|\.)head$"), nn.Linear),
    "embedding": (re.compile(r"(^|\.)embed$"), nn.Embedding),
}
# Last name component of the projections that write back to the residual stream.
OUT_PROJ = re.compile(r"(^|\.)(wo|w_o|o_proj|out_proj|proj_out|w_out|w_down|down_proj|fc2)$")
# Residual styles whose sub-layer reads the stream directly (no N_in gain in front of its in-projections).
RAW_INPUT_RESIDUALS = ("post", "deepnorm")


class Multipliers(nn.Module):
    """Parametrization W -> s * diag(r) W diag(c) of a weight [out, in] (nn.Embedding: [vocab, dim]).

    ``scale`` (0-d), ``row`` [out] and ``col`` [in] are each optional and start at 1.
    """

    def __init__(self, out_features: int, in_features: int, scalar: bool, row: bool, col: bool,
                 lr_mult: float = 1.0, weight_decay: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(())) if scalar else None
        self.row = nn.Parameter(torch.ones(out_features)) if row else None
        self.col = nn.Parameter(torch.ones(in_features)) if col else None
        for p in self.parameters():
            p._optim_group = "multiplier"
            p._lr_mult = lr_mult
            p._weight_decay = weight_decay
            p._no_muon = True
            p._no_weight_decay = True  # the model's weight decay; the multiplier group has its own

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # w: [out, in]
        if self.col is not None:
            w = w * self.col.to(w.dtype)
        if self.row is not None:
            w = w * self.row.to(w.dtype)[:, None]
        if self.scale is not None:
            w = w * self.scale.to(w.dtype)
        return w

    def extra_repr(self) -> str:
        return ", ".join(k for k in ("scale", "row", "col") if getattr(self, k) is not None)


def _role(name: str, module: nn.Module, target: str, d_model: int) -> str:
    if target in ("head", "embedding"):
        return target
    if OUT_PROJ.search(name):
        return "out"
    return "in" if module.in_features == d_model else "internal"


def placement(name: str, module: nn.Module, target: str, cfg: ModelConfig) -> tuple[bool, bool, bool]:
    """(scalar, row, col) for one selected module under cfg.multipliers -- the rules in the module docstring."""
    mode = cfg.multipliers
    scalar = mode in ("scalar", "both")
    vector = mode in ("vector", "both")
    role = _role(name, module, target, cfg.d_model)
    row = vector
    if role == "embedding":
        col = True
        # model.embed_norm (Peri-LN) normalises each token's vector: a per-token scale is then invisible,
        # unless the matrix is also the (tied) head.
        row = vector and not (getattr(cfg, "embed_norm", False) and not cfg.tie_embeddings)
    elif role == "in":
        col = cfg.residual in RAW_INPUT_RESIDUALS
    elif role == "out":
        col = target == "mlp" and cfg.mlp == "gelu"
    else:  # head, internal
        col = False
    return scalar, row, vector and col


def select_modules(model: nn.Module, targets: list[str] | tuple[str, ...]) -> list[tuple[str, str, nn.Module]]:
    """(name, target, module) for every module the targets select, in module order."""
    found = []
    for name, module in model.named_modules():
        for target in targets:
            pattern, kind = TARGET_PATTERNS[target]
            if isinstance(module, kind) and pattern.search(name):
                found.append((name, target, module))
                break
    return found


def attach_multipliers(model: nn.Module, cfg: ModelConfig) -> list[str]:
    """Re-parametrise the selected layers of ``model`` per ``cfg.multipliers``; returns their names.

    Called at the end of ``LM.__init__`` (after all initialisation). A no-op for ``multipliers="none"``.
    """
    if cfg.multipliers == "none":
        return []
    unknown = sorted(set(cfg.multiplier_targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"model.multiplier_targets: unknown {unknown}; known: {', '.join(TARGETS)}")
    if "head" in cfg.multiplier_targets and cfg.tie_embeddings:
        raise ValueError("model.multiplier_targets: 'head' with tie_embeddings=true; the tied head is the embedding matrix, use 'embedding'")
    selected = select_modules(model, cfg.multiplier_targets)
    seen: set[int] = set()
    names = []
    for name, target, module in selected:
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name}.weight is already parametrized (attach_multipliers called twice?)")
        w = module.weight
        if id(w) in seen:
            raise ValueError(f"{name}.weight is shared with another selected module; multipliers cannot be merged")
        seen.add(id(w))
        scalar, row, col = placement(name, module, target, cfg)
        if not (scalar or row or col):
            continue
        mult = Multipliers(w.shape[0], w.shape[1], scalar, row, col, cfg.multiplier_lr_mult, cfg.multiplier_weight_decay)
        mult.to(device=w.device)
        parametrize.register_parametrization(module, "weight", mult)
        names.append(name)
    return names


def _multiplier_modules(model: nn.Module) -> list[tuple[str, nn.Module, Multipliers]]:
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            plist = module.parametrizations.weight
            mults = [p for p in plist if isinstance(p, Multipliers)]
            if mults:
                if len(mults) != len(plist):
                    raise ValueError(f"{name}.weight has other parametrizations besides multipliers")
                out.append((name, module, mults[0]))
    return out


@torch.no_grad()
def merge_multipliers(model: nn.Module) -> nn.Module:
    """Fold every multiplier into its weight (W <- s diag(r) W diag(c)) and restore the plain modules.

    In place; returns ``model``. The raw weight Parameter objects are kept (their flags too), the multiplier
    parameters disappear, and ``model.cfg.multipliers`` (if the model has a cfg) becomes ``"none"``, so the
    state_dict loads into a plain model built from that cfg. Build optimisers after merging, not before.
    """
    for _, module, _ in _multiplier_modules(model):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        params = module._parameters  # removal re-registers weight last: restore nn.Linear's (weight, bias) order
        rest = {k: v for k, v in params.items() if k != "weight"}
        weight = params["weight"]
        params.clear()
        params["weight"] = weight
        params.update(rest)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "multipliers", "none") != "none":
        model.cfg = cfg.model_copy(update={"multipliers": "none"})
    return model


@torch.no_grad()
def multiplier_values(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {"scale"|"row"|"col": values (cpu, fp32)}} for every layer with multipliers."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, _, mult in _multiplier_modules(model):
        out[name] = {k: getattr(mult, k).detach().float().cpu() for k in ("scale", "row", "col") if getattr(mult, k) is not None}
    return out


def multiplier_stats(model: nn.Module) -> dict[str, Any]:
    """Min / max / mean of each multiplier vector, for watching drift along symmetry directions (§B.6.4)."""
    stats: dict[str, Any] = {}
    for name, parts in multiplier_values(model).items():
        for kind, v in parts.items():
            stats[f"{name}.{kind}"] = {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}
    return stats

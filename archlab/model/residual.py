"""Residual styles: how a sub-layer F and its norms wrap the stream x. Same interface for every style::

    x = style(x, f)            # f: [B, T, D] -> [B, T, D]; x: [B, T, D]
    style.needs_final_norm     # does the LM need a norm before the head?
    style.scale_init(module)   # init hook, called once by Block on the sub-layer it wraps (DeepNorm's beta)

Notation: N = the model's norm (``model.norm``: RMSNorm by default), F = one sub-layer (the mixer or the MLP),
L = number of sub-layers in the stack (2 * n_layers with an MLP, n_layers without), Nb = number of blocks
(= n_layers). Spec: shared/specs/keel_lrm_muon.md §A.5.

| style      | per sub-layer update                 | final norm | constants / init                                  |
|------------|--------------------------------------|------------|---------------------------------------------------|
| ``pre``      | x <- x + F(N(x))                      | yes        | none                                              |
| ``post``     | x <- N(x + F(x))                      | no         | none                                              |
| ``keel``     | x <- N_out(a * x + F(N_in(x)))        | no         | a = L (``model.residual_alpha`` overrides)        |
| ``deepnorm`` | x <- N(a * x + F(x))                  | no         | a = (2 Nb)^(1/4); v/out/fc1/fc2 init * (8 Nb)^(-1/4) |
| ``sandwich`` | x <- x + N_out(F(N_in(x)))            | yes        | none (Gemma 2/3, Peri-LN)                          |

Every style forms its skip sum in fp32 (``_skip_sum``) and returns the stream in the input's dtype: under
bf16 autocast the stream (fp32 from the embedding) stays fp32, and KEEL's branch contribution, about 1/a of
the stream, is not rounded away (§A.3: at L = 2048 it is ~5e-4, below bf16's 2^-8).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from archlab.model.config import ModelConfig
from archlab.model.norms import make_norm


SubLayer = Callable[[torch.Tensor], torch.Tensor]


def num_sublayers(cfg: ModelConfig) -> int:
    """L: every mixer and every MLP counts as one sub-layer."""
    return cfg.n_layers * (2 if cfg.mlp != "none" else 1)


def _skip_sum(alpha: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """alpha * x + y accumulated in fp32 (whatever autocast or the parameters' dtype)."""
    if x.dtype == y.dtype == torch.float32 and alpha == 1.0:  # the common case in one op (decoding is op-bound)
        return x + y
    x32 = x.float()
    return (x32 if alpha == 1.0 else alpha * x32) + y.float()


class Residual(nn.Module):
    """Base: subclasses implement ``forward(x, f)``; ``alpha`` is the skip-path scale (1 where none)."""

    needs_final_norm: bool = True
    alpha: float = 1.0

    def __init__(self, cfg: ModelConfig):
        super().__init__()

    def scale_init(self, module: nn.Module) -> None:
        """Adjust the init of the sub-layer this residual wraps. Default: nothing."""

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}" if self.alpha != 1.0 else ""


class PreLN(Residual):
    """x <- x + F(N(x)) — GPT-2 / Llama. The stream is never normalised, so the LM adds a final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return _skip_sum(1.0, x, f(self.norm(x))).to(x.dtype)


class PostLN(Residual):
    """x <- N(x + F(x)) — the original Transformer. The stream is already normalised: no final norm."""

    needs_final_norm = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return self.norm(_skip_sum(1.0, x, f(x))).to(x.dtype)


class KEEL(Residual):
    """KEEL highway post-LN (Chen & Wei 2026, arXiv 2601.19895): x <- N_out(a * x + F(N_in(x))).

    a scales the skip path, not F, and is a fixed constant: a = L, the total number of sub-layers (attention
    and MLP each count; ``model.residual_alpha`` overrides it). N_in keeps F's input normalised (as pre-LN),
    N_out normalises the sum (as post-LN), so no final norm is needed. Init: the standard one (the paper
    needs no special init). Since N_out is scale-invariant, this equals post-LN with each branch weighted
    1/a plus a pre-norm on the branch input: the skip-path gain per sub-layer is ~1 - rho^2/(2 a^2), so the
    product over L sub-layers stays ~1 with a = L, where plain post-LN's is ~(1/sqrt 2)^L.
    """

    needs_final_norm = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.alpha = float(cfg.residual_alpha) if cfg.residual_alpha is not None else float(num_sublayers(cfg))
        self.norm_in = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.norm_out = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return self.norm_out(_skip_sum(self.alpha, x, f(self.norm_in(x)))).to(x.dtype)


class DeepNorm(Residual):
    """DeepNet (Wang et al. 2022) for a decoder-only model: x <- N(a * x + F(x)), a = (2 Nb)^(1/4).

    Init: the weights of the value projection, the output projection and both MLP matrices (fc1, fc2; for
    SwiGLU the fused gate/up matrix) are multiplied by beta = (8 Nb)^(-1/4); Q and K are untouched
    (torchscale ``architecture/decoder.py``). Nb counts blocks, not sub-layers. beta multiplies archlab's own
    init (normal(init_std), output projections init_std / sqrt(2 n_layers)), not torchscale's xavier init.
    ``model.residual_alpha`` overrides a (beta stays). No final norm.
    """

    needs_final_norm = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        nb = cfg.n_layers
        self.alpha = float(cfg.residual_alpha) if cfg.residual_alpha is not None else (2 * nb) ** 0.25
        self.beta = (8 * nb) ** -0.25
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return self.norm(_skip_sum(self.alpha, x, f(x))).to(x.dtype)

    @torch.no_grad()
    def scale_init(self, module: nn.Module) -> None:
        for weight, rows in value_output_weights(module):
            weight[rows].mul_(self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}"


class Sandwich(Residual):
    """Sandwich / Peri-LN (Gemma 2/3): x <- x + N_out(F(N_in(x))), with the LM's final norm.

    Gemma's RMSNorm computes (1 + w) with w = 0 at init; archlab's computes w with w = 1 at init: the same
    function at init and the same family. Peri-LN also normalises the embedding: ``model.embed_norm``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.norm_in = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.norm_out = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return _skip_sum(1.0, x, self.norm_out(f(self.norm_in(x)))).to(x.dtype)


# Names (last attribute name) of the value / output projections in mixers that do not declare their own.
_VALUE_OUTPUT_NAMES = {"v_proj", "o_proj", "out_proj", "wv", "wo", "w_v", "w_o", "w_in", "w_down", "fc1", "fc2"}


def value_output_weights(module: nn.Module) -> list[tuple[torch.Tensor, slice]]:
    """The (weight, row slice) pairs that DeepNorm's beta scales in ``module`` (a mixer or an MLP).

    A module may declare them with ``deepnorm_weights() -> list[(weight, slice)]``. Otherwise: the v rows
    (the last ``value_dim`` or ``kv_dim`` rows) of a fused ``wqkv`` (attention, GLA, GatedDeltaNet), plus every
    ``nn.Linear`` whose attribute name is a value / output / MLP projection name (``_VALUE_OUTPUT_NAMES``:
    ``wo``, ``o_proj``, ``out_proj``, ``w_in``, ``w_down``, ...). Mamba2's fused ``in_proj`` (z, x, B, C, dt) is
    left alone: only its ``out_proj`` is scaled. Raises if nothing matches, rather than silently running
    DeepNorm without its init.
    """
    if hasattr(module, "deepnorm_weights"):
        return list(module.deepnorm_weights())
    found: list[tuple[torch.Tensor, slice]] = []
    wqkv = getattr(module, "wqkv", None)
    if isinstance(wqkv, nn.Linear):  # fused [q; k; v] rows (attention, GLA, GatedDeltaNet): v rows are last
        v_rows = getattr(module, "value_dim", None) or getattr(module, "kv_dim", None)
        if not isinstance(v_rows, int):
            raise ValueError(f"residual='deepnorm': {type(module).__name__}.wqkv has no value_dim / kv_dim to find its v rows")
        found.append((wqkv.weight, slice(wqkv.weight.shape[0] - v_rows, None)))
    found += [
        (m.weight, slice(None))
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in _VALUE_OUTPUT_NAMES
    ]
    if not found:
        raise ValueError(
            f"residual='deepnorm': cannot tell the value/output projections of {type(module).__name__}; "
            "give it a deepnorm_weights() method"
        )
    return found


# One class per name of archlab.model.config.RESIDUAL_STYLES (the names a config may use).
RESIDUALS: dict[str, type[Residual]] = {
    "pre": PreLN,
    "post": PostLN,
    "keel": KEEL,
    "deepnorm": DeepNorm,
    "sandwich": Sandwich,
}


def make_residual(cfg: ModelConfig) -> Residual:
    return RESIDUALS[cfg.residual](cfg)

"""The model's config: ``ModelConfig`` (sizes, norms, residual style, Canon, multipliers, recurrence) and the
base of the mixer configs, which the mixers register by name in ``MIXERS`` (``archlab/model/mixers/``).

Model code imports this module; it imports no model code. The mixers register themselves when
``archlab.model`` is imported, so ``model.mixer`` (default: attention) always finds the built-in ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from archlab.registry import Registry
from archlab.schema import Section

CANON_LETTERS = "ABCDb"
RESIDUAL_STYLES = ("pre", "post", "keel", "deepnorm", "sandwich")  # implemented in archlab/model/residual.py
ALPHA_STYLES = ("keel", "deepnorm")  # styles with a skip-path scale alpha (model.residual_alpha is an error for the others)
STATE_STD_HUGINN = 0.008703882797784892  # sqrt(2 / (5 * 5280)): Huginn's value, kept by the retrofit code (spec §1.3)


class MixerConfig(BaseModel):
    """Base of every mixer's config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str

    def check(self, d_model: int) -> None:
        """Raise ValueError (naming the field) if this mixer cannot be built at width d_model."""

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        """Forward FLOPs per token spent in sequence mixing beyond the projections (e.g. QK^T and AV)."""
        return 0.0


# name -> (config class, mixer class); filled by @MIXERS.register in archlab/model/mixers/*.py
MIXERS: Registry[type[nn.Module]] = Registry("mixer", default="attention")


class RecurrenceConfig(Section):
    """Depth recurrence (model/recurrence.py): prelude once -> core r times -> coda. Spec: shared/specs/recurrence.md."""

    prelude: int = Field(2, ge=0, description="blocks run once before the loop")
    core: int = Field(2, gt=0, description="blocks of the recurrent core, applied r times")
    coda: int = Field(2, ge=0, description="blocks run once after the loop")
    mean_recurrence: int = Field(4, gt=0, description="training mean M of r (r = Poisson(lambda) + 1); also the eval r")
    backprop_depth: int = Field(8, gt=0, description="gradient flows through at most the last k iterations")
    lognormal_sigma: float = Field(0.5, ge=0, description="sigma of lambda ~ LogNormal(ln M - sigma^2 / 2, sigma)")
    curriculum: Literal["none", "linear", "1-sqrt"] = Field("none", description="ramp of the mean recurrence")
    curriculum_fraction: float = Field(0.75, gt=0, le=1, description="fraction of train.steps the ramp lasts")
    state_init_std: float = Field(STATE_STD_HUGINN, ge=0, description="std of the truncated-normal initial state")
    adapter_init: Literal["default", "identity"] = Field(
        "default", description="default: nn.Linear's init (as the paper); identity: [0 | I], adapter(s, e) = e"
    )

    @property
    def n_layers(self) -> int:
        return self.prelude + self.core + self.coda


class ModelConfig(Section):
    """The decoder: embedding -> n_layers blocks -> final norm -> head."""

    vocab_size: int | None = Field(None, gt=0, description="None: taken from the task")
    d_model: int = Field(256, gt=0)
    n_layers: int = Field(4, gt=0)
    mixer: MixerConfig = Field(default_factory=lambda: MIXERS.validate({"name": "attention"}))
    mlp: Literal["swiglu", "gelu", "none"] = "swiglu"
    ffn_dim: int | None = Field(None, gt=0, description="None: 8d/3 (swiglu) or 4d (gelu), rounded up to multiple_of")
    multiple_of: int = Field(64, gt=0)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    residual: str = Field("pre", description="residual style: " + " | ".join(RESIDUAL_STYLES))
    residual_alpha: float | None = Field(
        None, gt=0, description="skip-path scale of keel / deepnorm; None: keel L (sub-layers), deepnorm (2*n_layers)^(1/4)"
    )
    embed_norm: bool = Field(False, description="normalise the embedding output before the first block (Peri-LN)")
    canon: str = Field("", description="Canon placements: any subset of A, B, C, D ('' = off)")
    canon_kernel: int = Field(4, ge=2)
    canon_residual: bool = True
    canon_activation: bool = False
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)
    max_seq_len: int = Field(4096, gt=0)
    multipliers: Literal["none", "scalar", "vector", "both"] = Field(
        "none",
        description="learnable multipliers on matrix layers (archlab/model/multipliers.py): scalar s*W, "
        "vector diag(r) W diag(c) (rows everywhere, columns only where not redundant), both s*diag(r) W diag(c)",
    )
    multiplier_targets: list[Literal["mixer", "mlp", "head", "embedding"]] = Field(
        default_factory=lambda: ["mixer", "mlp"],
        description="layers that get multipliers: every nn.Linear in a mixer / MLP, the untied head, the embedding",
    )
    multiplier_lr_mult: float = Field(1.0, gt=0, description="multiplier LR = optim.lr * this (AdamW, also under Muon)")
    multiplier_weight_decay: float = Field(2e-3, ge=0, description="the multipliers' own small decoupled weight decay")
    recurrence: RecurrenceConfig | None = Field(None, description="depth recurrence; None = a plain stack of n_layers blocks")
    init_from: str | None = Field(None, description="directory with model.safetensors (retrofit output or step_N) to start from")

    @field_validator("mixer", mode="before")
    @classmethod
    def _mixer(cls, v: Any) -> MixerConfig:
        return MIXERS.validate(v)

    @field_validator("residual")
    @classmethod
    def _residual(cls, v: str) -> str:
        if v not in RESIDUAL_STYLES:
            raise ValueError(f"unknown residual style {v!r}; known: {', '.join(RESIDUAL_STYLES)}")
        return v

    @field_validator("canon")
    @classmethod
    def _canon(cls, v: str) -> str:
        bad = sorted(set(v) - set(CANON_LETTERS))
        if bad:
            raise ValueError(f"invalid Canon letter(s) {bad}; use a subset of {CANON_LETTERS!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"repeated Canon letter in {v!r}")
        return "".join(sorted(v, key=CANON_LETTERS.index))

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        self.mixer.check(self.d_model)
        if self.residual_alpha is not None and self.residual not in ALPHA_STYLES:
            raise ValueError(f"residual_alpha is set but residual={self.residual!r} has no alpha (only {', '.join(ALPHA_STYLES)})")
        rec = self.recurrence
        if rec is not None and rec.n_layers != self.n_layers:
            raise ValueError(f"model.recurrence: prelude + core + coda = {rec.n_layers} must equal model.n_layers={self.n_layers}")
        return self

    @property
    def resolved_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        raw = 8 * self.d_model // 3 if self.mlp == "swiglu" else 4 * self.d_model
        return -(-raw // self.multiple_of) * self.multiple_of

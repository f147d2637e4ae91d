"""Run configuration: nested pydantic models, YAML recipes, dotted command-line overrides.

Precedence: defaults in code < YAML recipe < ``a.b.c=value`` overrides. Unknown keys, wrong types and
impossible combinations raise :class:`ConfigError` naming the key, before any work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from archlab.model.mixers import MIXERS, MixerConfig
from archlab.model.residual import ALPHA_STYLES, RESIDUALS
from archlab.tasks import TASKS, TaskConfig


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no inf/nan sizes or rates


CANON_LETTERS = "ABCDb"


STATE_STD_HUGINN = 0.008703882797784892  # sqrt(2 / (5 * 5280)): Huginn's value, kept by the retrofit code (spec §1.3)


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
    residual: str = Field("pre", description="residual style: " + " | ".join(RESIDUALS))
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
        if v not in RESIDUALS:
            raise ValueError(f"unknown residual style {v!r}; known: {', '.join(RESIDUALS)}")
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


class OptimConfig(Section):
    """AdamW for everything, or Muon for 2-D hidden matrices plus AdamW for the rest."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    muon_lr: float | None = Field(None, gt=0, description="None: same as lr (sensible with match_rms_adamw)")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 = off")
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of peak")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: fraction of steps spent decaying")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v


class WandbConfig(Section):
    """Weights & Biases settings, used when ``train.loggers`` has ``wandb``."""

    project: str = Field("archlab", min_length=1)
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: the run is written under RUN/wandb/ only (upload later with `wandb sync`)"
    )


class TrainConfig(Section):
    steps: int = Field(200, gt=0)
    batch_size: int = Field(16, gt=0, description="sequences per optimiser step (across accumulation)")
    grad_accum: int = Field(1, gt=0)
    seq_len: int = Field(256, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N | mps")
    eval_every: int = Field(0, ge=0, description="0 = only at the end")
    eval_task: bool = Field(False, description="at every eval_every, also record the task's own metrics (e.g. accuracy per hop) under 'task'")
    eval_batches: int = Field(4, gt=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_last: int = Field(2, gt=0)
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None = torch default")
    deterministic: bool = False
    log_norms: bool = Field(False, description="add per-block activation RMS and grad norms to the metrics on log steps")
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="under torchrun: DDP or FSDP2 (fully_shard per block); ddp/fsdp also write DCP checkpoints"
    )
    compile: bool = Field(False, description="torch.compile each block for training steps (static shapes; needs a C++ compiler "
                          "on CPU); the first step pays the compile time")
    nonfinite: Literal["stop", "skip"] = Field("stop", description="a step with NaN/Inf loss or gradients: stop, or skip its update")
    max_skipped_steps: int = Field(10, ge=0, description="nonfinite=skip: stop once this many steps of the run were skipped")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="trackers besides metrics.jsonl (always written): tensorboard, wandb (archlab[track])"
    )
    group: str | None = Field(None, description="run group (W&B group, TensorBoard hparams session group); sweeps set "
                              "SWEEP/ARM so that the seeds of one arm appear together")
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("loggers", mode="before")
    @classmethod
    def _one_logger(cls, v: Any) -> Any:
        if isinstance(v, str):  # train.loggers=tensorboard,wandb (no brackets for the shell to glob); '' = none
            return [name.strip() for name in v.split(",")] if v else []
        return v

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{v} names a logger twice")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        return self


class RunConfig(Section):
    """Everything that defines a run. Saved resolved into the run directory."""

    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: TaskConfig = Field(default_factory=lambda: TASKS.validate({"name": "text"}))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: str = "runs"
    name: str | None = Field(None, description="run directory name; None = derived from time")

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v: Any) -> TaskConfig:
        return TASKS.validate(v)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.train.seq_len > self.model.max_seq_len:
            raise ValueError(f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", serialize_as_any=True)


NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """'3e-3' -> 3e-3, 'true' -> True, '[1,2]' -> [1, 2], 'ABCD' -> 'ABCD', '' -> ''."""
    if text == "":
        return ""
    if NUMBER.match(text):  # YAML 1.1 would read '1e-3' as a string
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return yaml.safe_load(text)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-3)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} is malformed")
        node = tree
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: a config tree by its dotted keys."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc or '<root>'}: {msg}")
    return "; ".join(lines)


def build_config(tree: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_describe(err)}") from None
    except ValueError as err:  # raised by registries / nested validators outside pydantic's wrapping
        raise ConfigError(f"invalid config: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML recipe (optional) + dotted overrides -> validated RunConfig."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not valid UTF-8 text (byte {err.start})") from None
        except yaml.YAMLError as err:  # one line: the problem and where, not PyYAML's multi-line report
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(tree).__name__}")
    return build_config(apply_overrides(tree, overrides or []))

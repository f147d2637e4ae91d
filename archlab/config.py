"""Run configuration: the top of the config layers, YAML recipes, dotted command-line overrides.

``RunConfig`` composes the components' own config classes (``ModelConfig`` from :mod:`archlab.model.config`,
the task configs registered in :mod:`archlab.tasks`, ``OptimConfig`` from :mod:`archlab.optim`) with the run's
own sections (``train``, ``train.wandb``); ``from archlab.config import ModelConfig, OptimConfig`` also works.
Precedence: defaults in code < YAML recipe < ``a.b.c=value`` overrides. Unknown keys, wrong types and
impossible combinations raise :class:`ConfigError` naming the key, before any work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from archlab.model.config import ModelConfig, RecurrenceConfig
from archlab.optim import OptimConfig
from archlab.schema import Section
from archlab.tasks import TASKS, TaskConfig

__all__ = ["ConfigError", "ModelConfig", "OptimConfig", "RecurrenceConfig", "RunConfig", "TrainConfig", "WandbConfig",
           "apply_overrides", "build_config", "flatten", "load_config", "parse_value"]


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


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
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each block for training steps (static shapes; needs a C++ compiler on CPU); the "
        "first step pays the compile time. auto: on when a compiler is present and the run is long enough to repay it")
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

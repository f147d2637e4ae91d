"""``archlab import``: a published checkpoint directory -> an archlab run directory at step 0.

Dotted overrides set the rest of the run (``data.*``, ``train.*``, ``optim.*``), e.g. the task or tokenizer that
matches the imported vocabulary. The run directory holds ``config.yaml`` and ``step_0/`` (weights, a fresh optimiser state, state.json naming the
source), so ``archlab eval/generate RUN`` work on it and ``archlab train RUN/config.yaml`` continues training
from the imported weights in place.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from archlab.checkpoint import list_checkpoints, save_checkpoint
from archlab.config import ConfigError, ModelConfig, RunConfig, TrainConfig, apply_overrides, build_config
from archlab.formats import get_format
from archlab.formats.hf_dir import FormatError, read_config
from archlab.optim import build_optimizers


def detect(path: Path) -> str:
    """Format name of a checkpoint directory, from its config.json."""
    raw = read_config(path)
    if raw.get("model_type") == "huginn_raven" or "n_layers_in_recurrent_block" in raw:
        return "raven"
    if raw.get("model_type") in ("LlamaCanon", "llama"):
        return "llama-canon"
    raise FormatError(f"{path / 'config.json'}: model_type={raw.get('model_type')!r} is neither LlamaCanon/llama nor huginn_raven; pass --format")


def run_config(model_cfg: ModelConfig, run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's config: the imported model section, defaults elsewhere, then dotted ``overrides`` (not model.*)."""
    tree = RunConfig(model=model_cfg, train={"seq_len": min(TrainConfig().seq_len, model_cfg.max_seq_len)},
                     out_dir=str(run_dir.parent), name=run_dir.name).to_dict()
    cfg = build_config(apply_overrides(tree, overrides))
    if cfg.model != model_cfg:
        raise ConfigError("overrides may not change the model section: the imported weights define it")
    return cfg


def import_checkpoint(src: Path, run_dir: Path, fmt: str | None = None, overrides: list[str] | None = None) -> tuple[str, nn.Module]:
    """Load ``src`` (format ``fmt`` or detected) and write it as run directory ``run_dir``; (format, model)."""
    name = fmt or detect(src)
    model = get_format(name).load(src)
    if list_checkpoints(run_dir):
        raise FormatError(f"{run_dir}: already holds checkpoints; choose a new --out")
    cfg = run_config(model.cfg, run_dir, overrides or [])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    optim_state = build_optimizers(model, cfg.optim).state_dict()
    save_checkpoint(run_dir, 0, model, optim_state, {"config": cfg.to_dict(), "imported_from": str(src), "format": name}, keep_last=1)
    return name, model

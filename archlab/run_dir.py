"""A run directory as ``eval``, ``generate`` and ``export`` read it: its config, the newest intact (or a chosen)
checkpoint, and the model and task built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from archlab.checkpoint import CheckpointError, latest_intact, list_checkpoints, load_model_weights, read_checkpoint
from archlab.config import ConfigError, RunConfig, load_config
from archlab.model.lm import LM
from archlab.model.recurrence import build_lm
from archlab.tasks import Task, build_task


def load_run(run: Path, step: int | None = None, on_skip: Callable[[str], None] = lambda msg: None) -> tuple[RunConfig, LM, Task]:
    """(config, model in eval mode, task) from checkpoint ``step_N`` of a run directory, by default the newest
    intact one (``on_skip`` hears about each damaged one passed over). ConfigError / CheckpointError otherwise."""
    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {str(run)!r} a run directory?")
    cfg = load_config(path)
    if step is not None:
        if not (run / f"step_{step}").is_dir():
            found = ", ".join(p.name for p in list_checkpoints(run)) or "none"
            raise CheckpointError(f"{run}: no checkpoint step_{step} (found: {found})")
        ckpt = read_checkpoint(run / f"step_{step}")
    else:
        ckpt, skipped = latest_intact(run)
        for msg in skipped:
            on_skip(msg)
        if ckpt is None:
            raise CheckpointError(f"{run}: no intact checkpoint")
    model = build_lm(cfg.model)
    load_model_weights(model, ckpt.path)
    return cfg, model.eval(), build_task(cfg.data, cfg.train.seq_len)

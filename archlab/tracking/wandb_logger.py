"""Weights & Biases: one W&B run per run directory, written under RUN/wandb/ (offline by default: nothing leaves
the machine until ``wandb sync RUN/wandb/offline-run-*``). Group = ``train.group``, name = the directory's name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import wandb

from archlab.tracking.base import Tracker

if TYPE_CHECKING:
    from archlab.config import RunConfig


def run_id(run_dir: Path) -> str:
    """The W&B id of a run directory: the same for every process that trains it, so a resumed run continues its
    W&B run (steps it logs again after resuming from a checkpoint are the ones W&B already has; it keeps those)."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


class WandbLogger(Tracker):
    def __init__(self, cfg: "RunConfig", run_dir: Path, start_step: int):
        w = cfg.train.wandb
        self.run = wandb.init(project=w.project, mode=w.mode, dir=run_dir, id=run_id(run_dir), resume="allow",
                              name=run_dir.name, group=cfg.train.group, config=cfg.to_dict())

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

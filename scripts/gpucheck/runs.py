"""Training runs for the checks: ``archlab.train.train`` on bytes of this checkout's own sources (on every
machine, no download), the per-step metrics, the trained model back from its checkpoint, and relative errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from archlab.checkpoint import latest_intact, load_model_weights
from archlab.config import RunConfig, load_config
from archlab.model.lm import LM
from archlab.model.recurrence import build_lm
from archlab.train import TrainResult, read_metrics, train

ROOT = Path(__file__).resolve().parents[2]
DATA = [f"data.paths=[{ROOT / 'archlab'}]", "data.max_bytes=400000"]  # byte-level text, ~300 kB of Python


@dataclass(frozen=True)
class Shape:
    """Model width and depth, sequence length and batch size of a run."""

    d: int
    layers: int
    seq_len: int
    batch: int

    @property
    def label(self) -> str:
        return f"d={self.d} L={self.layers} T={self.seq_len} B={self.batch}"

    def overrides(self) -> list[str]:
        return [f"model.d_model={self.d}", f"model.n_layers={self.layers}", f"train.seq_len={self.seq_len}",
                f"train.batch_size={self.batch}"]


def run_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def config(work: Path, label: str, device: torch.device, overrides: list[str]) -> RunConfig:
    """A run of ``overrides`` on the checks' data (unless they name a task), logging every step, in ``work/<label>``."""
    data = [] if any(o.startswith("data.name=") for o in overrides) else DATA
    return load_config(None, [*data, "train.log_every=1", "train.eval_batches=1", f"train.device={device.type}",
                              *overrides, f"out_dir={work}", f"name={run_name(label)}"])


def train_run(work: Path, label: str, device: torch.device, overrides: list[str]) -> tuple[TrainResult, list[dict]]:
    """Train from scratch; (result, one metrics record per step)."""
    result = train(config(work, label, device, overrides), resume="never")
    return result, read_metrics(result.run_dir)


def trained_model(run_dir: Path, device: torch.device) -> tuple[RunConfig, LM]:
    """The run's resolved config and its model with the newest checkpoint's weights, in eval mode."""
    cfg = load_config(run_dir / "config.yaml")
    ckpt, _ = latest_intact(run_dir)
    if ckpt is None:
        raise RuntimeError(f"{run_dir}: no intact checkpoint")
    model = build_lm(cfg.model)
    load_model_weights(model, ckpt.path)
    return cfg, model.to(device).eval()


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ in fp64."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def losses(metrics: list[dict]) -> list[float]:
    return [m["loss"] for m in metrics]

"""Shared pieces of the fault tests: a tiny run config, the kill-at-a-point child process, exact comparisons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from archlab.checkpoint import MODEL_FILE, list_checkpoints
from archlab.config import RunConfig, load_config
from archlab.train import read_metrics

DRIVER = Path(__file__).with_name("driver.py")
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=4",
    "train.log_every=1", "optim.lr=3e-3", "optim.warmup_steps=2", "train.eval_batches=1", "train.threads=1",
]


def tiny_overrides(out_dir: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, f"out_dir={out_dir}", f"name={name}", *extra]


def tiny(out_dir: Path, name: str, *extra: str) -> RunConfig:
    return load_config(None, tiny_overrides(out_dir, name, *extra))


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir)]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run_dir)[-1] / MODEL_FILE)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "1", "COLUMNS": "400", **extra}


def kill_at(pause: str, overrides: list[str], marker: Path, timeout: float = 120.0) -> None:
    """Start ``archlab train`` (driver.py) frozen at ``pause`` ('state:2', ...), wait until it is there, kill -9."""
    env = child_env(ARCHLAB_FAULT_PAUSE=pause, ARCHLAB_FAULT_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, str(DRIVER), "train", *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended (rc {proc.returncode}) before reaching {pause}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child did not reach {pause} within {timeout} s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()

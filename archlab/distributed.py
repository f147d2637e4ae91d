"""Multi-process training under ``torchrun``: process group, DDP / FSDP2 wrapping, DCP checkpoints, rank-aware logs.

The model code stays single-device; everything here is applied from outside by ``train.py``:

* :func:`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts a process
  group, gloo on CPU and nccl on CUDA, also for a single process when ``train.parallel`` asks for DDP / FSDP2
  (one GPU then runs the same wrapped code on nccl as many). Without torchrun it is a no-op (world size 1).
* Every rank builds the *global* batch of a step (a pure function of (seed, step)) and trains on its rows
  (:func:`rank_rows`); the loss normaliser is the global target count / world size, so the averaged gradient
  equals the single-process gradient of the same global batch for any world size.
* :func:`wrap_model`: DDP around a module whose forward is ``LM.loss``, or FSDP2 ``fully_shard`` per block
  (every member of the model's top-level ``nn.ModuleList``s) plus the root (``LM.loss`` registered as a forward method).
* :func:`save_sharded` / :func:`load_sharded`: ``step_N/dcp/`` holds model + optimiser state as a DCP
  checkpoint (re-sharded on load, so a run can resume on a different number of processes, 1 included), and
  ``step_N/model.safetensors`` the full weights for eval / generate / export.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from archlab.checkpoint import MODEL_FILE, SCHEMA_VERSION, STATE_FILE, list_checkpoints, rng_state, sha256, write_json_atomic
from archlab.model.compile import block_list

DCP_DIR = "dcp"


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; world == 1 means no process group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False
    grouped: bool = False  # a process group is in use (always when world > 1; by request with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.grouped or self.world > 1


def init_distributed(device: torch.device, parallel: str = "none") -> tuple[Dist, torch.device]:
    """Start the process group if launched by torchrun (gloo on CPU, nccl on CUDA); pick this rank's GPU.

    A one-process torchrun job gets a group only when ``parallel`` is ddp / fsdp (a plain run stays plain).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "MASTER_ADDR" in os.environ  # what torchrun sets and env:// needs
    if world == 1 and not (launched and parallel != "none"):
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _rank_logging(rank)
    return Dist(rank, world, owns, grouped=True), device


def backend(d: Dist) -> str | None:
    """The process group's backend (gloo, nccl), or None without one."""
    return dist.get_backend() if d.active else None


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (from the environment; no process group needed)."""
    return int(os.environ.get("RANK", "0")) == 0


def close_distributed(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _rank_logging(rank: int) -> None:
    """Prefix archlab's log records with the rank; ranks other than 0 report only warnings and errors."""
    logger = logging.getLogger("archlab")
    if rank:
        logger.setLevel(logging.WARNING)

    def add_rank(record: logging.LogRecord) -> bool:
        record.msg = f"[rank {rank}] {record.msg}"
        return True

    logger.addFilter(add_rank)


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def rank_rows(batch_size: int, d: Dist) -> slice:
    """This rank's rows of a global batch."""
    if batch_size % d.world:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the {d.world} processes")
    local = batch_size // d.world
    return slice(d.rank * local, (d.rank + 1) * local)


def global_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean over ranks of a scalar (the training loss of the global batch)."""
    if d.active:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= d.world
    return value


class LossModule(nn.Module):
    """``forward = LM.loss``, so that DDP's hooks wrap the training computation."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, normaliser: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """kwargs: the model's per-micro-batch arguments (e.g. depth recurrence's r, n_grad), passed to its loss."""
        return self.lm.loss(ids, targets, mask, normaliser=normaliser, **kwargs)


def wrap_model(lm: nn.Module, parallel: str, d: Dist, device: torch.device) -> nn.Module:
    """The module that computes the training loss: DDP / FSDP2 around ``lm`` when the job has > 1 process.

    FSDP2 replaces parameters by sharded ones in place, so build the optimiser after this call; the
    ``_no_muon`` / ``_no_weight_decay`` / ... flags that optim.py reads are carried over by name.
    """
    if not d.active or parallel == "none":
        return LossModule(lm)
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(LossModule(lm), device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    flags = {n: {k: v for k, v in vars(p).items() if k.startswith("_") and not k.startswith("__")} for n, p in lm.named_parameters()}
    for block in block_list(lm):  # blocks / prelude, core, coda
        fully_shard(block)
    fully_shard(lm)
    register_fsdp_forward_method(lm, "loss")
    for n, p in lm.named_parameters():
        for k, v in flags[n].items():
            setattr(p, k, v)
    return LossModule(lm)


def save_sharded(run_dir: Path, step: int, lm: nn.Module, optimizers: list[torch.optim.Optimizer],
                 extra: dict[str, Any], keep_last: int, d: Dist) -> Path:
    """Write ``step_N/{dcp/, model.safetensors, state.json}`` (all ranks call this); rank 0 renames it into place."""
    from safetensors.torch import save_file
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    final, tmp = run_dir / f"step_{step}", run_dir / f".tmp_step_{step}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    model_sd, optim_sd = get_state_dict(lm, optimizers)
    with _single_process_dcp_ok():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
    full = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) if d.active else lm.state_dict()
    if d.is_main:
        save_file({k: v.detach().contiguous().cpu() for k, v in full.items()}, tmp / MODEL_FILE)
        names = [MODEL_FILE] + sorted(f"{DCP_DIR}/{p.name}" for p in (tmp / DCP_DIR).iterdir())
        state = {"schema_version": SCHEMA_VERSION, "step": step, "rng": rng_state(), "world_size": d.world,
                 "files": {n: {"sha256": sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in names}, **extra}
        write_json_atomic(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


@contextmanager
def _single_process_dcp_ok() -> Iterator[None]:
    """DCP warns when used without a process group; a 1-process run saving / loading DCP does so on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded(ckpt_path: Path) -> bool:
    return (ckpt_path / DCP_DIR).is_dir()


def load_sharded(ckpt_path: Path, lm: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Load a DCP checkpoint into ``lm`` and its optimisers, re-sharding to this job's layout."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(lm, optimizers)  # templates (initialises empty optimiser state)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_dcp_ok():
        dcp.load(state, checkpoint_id=ckpt_path / DCP_DIR)
    set_state_dict(lm, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])

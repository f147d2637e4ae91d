"""The training loop, top to bottom: config -> run dir -> data -> model -> optimiser -> resume -> loop.

Data batches are a pure function of (seed, rank, step) and the LR schedule a pure function of step, so a
checkpoint (weights, optimiser, RNG, step) is all that exact resume needs: N steps straight equal
k steps + kill + resume + N-k steps, bit for bit on CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from archlab.checkpoint import (
    CheckpointError,
    latest_intact,
    list_checkpoints,
    load_model_weights,
    load_optim_state,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
    write_text_atomic,
)
from archlab.config import RunConfig, flatten
from archlab.distributed import (
    Dist,
    backend,
    barrier,
    close_distributed,
    global_mean,
    init_distributed,
    is_sharded,
    load_sharded,
    rank_rows,
    save_sharded,
    wrap_model,
)
from archlab.divergence import DivergenceGuard, TrainingDiverged
from archlab.evaluate import autocast_context, masked_loss_eval
from archlab.model.compile import auto_compile, compile_blocks
from archlab.model.lm import LM
from archlab.model.recurrence import build_lm
from archlab.norm_stats import NormStats
from archlab.optim import build_optimizers, lr_factor
from archlab.runinfo import run_info
from archlab.tasks import build_task
from archlab.tasks.base import Task
from archlab.tracking import METRICS_FILE, Loggers, open_loggers, require_loggers

log = logging.getLogger("archlab.train")


class Progress(Protocol):
    def start(self, total: int, done: int) -> None: ...
    def update(self, step: int, metrics: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    eval: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    tokens: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.data.name}-s{cfg.seed}"
    return Path(cfg.out_dir) / name


def build_model(cfg: RunConfig, task: Task) -> tuple[LM, RunConfig]:
    """Fill model.vocab_size from the task if unset, check it, and build the model under the run's seed."""
    if cfg.model.vocab_size is None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": task.vocab_size})})
    elif cfg.model.vocab_size < task.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than task {cfg.data.name!r}'s vocabulary ({task.vocab_size})")
    torch.manual_seed(cfg.seed)
    return build_lm(cfg.model), cfg


# Settings that may change between a run and its resumption without changing what is computed.
RESUME_FREE_KEYS = {"out_dir": None, "name": None, "train": ("steps", "threads", "log_every", "ckpt_every", "keep_last", "parallel", "nonfinite", "max_skipped_steps", "compile",
                                                              "loggers", "group", "wandb")}


def _comparable(tree: dict[str, Any]) -> dict[str, Any]:
    tree = json.loads(json.dumps(tree))
    for key, sub in RESUME_FREE_KEYS.items():
        if sub is None:
            tree.pop(key, None)
        else:
            for k in sub:
                tree.get(key, {}).pop(k, None)
    return tree


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: saved -> now' for every setting that changes the computation."""
    a, b = flatten(_comparable(saved)), flatten(_comparable(now))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k] != b[k]]


def _refuse_if_different(path: Path, saved: Any, cfg: RunConfig, what: str) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: does not hold a config mapping")
    diffs = config_diff(saved, cfg.to_dict())
    if diffs:
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise CheckpointError(f"{path}: {what} a different config ({'; '.join(diffs[:4])}{more}); use a new run name")


def check_resumable(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to resume a run directory whose saved config differs in anything that changes the computation."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{saved_path}: unreadable ({type(err).__name__}); use a new run name") from None
    _refuse_if_different(saved_path, saved, cfg, "run directory holds")


def train(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: str = "auto",
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train per ``cfg``. resume: 'auto' (newest intact checkpoint, if any), 'never', or a checkpoint path.

    ``stop_after`` ends the process's work after that many total steps (checkpointing there), as if killed.
    Under torchrun, every process calls this; see archlab/distributed.py.
    """
    d, device = init_distributed(resolve_device(cfg.train.device), cfg.train.parallel)
    try:
        return _train(cfg, run_dir, resume, progress if d.is_main else None, stop_after, d, device)
    finally:
        close_distributed(d)


def _train(cfg: RunConfig, run_dir: str | Path | None, resume: str, progress: Progress | None, stop_after: int | None,
           d: Dist, device: torch.device) -> TrainResult:
    t_start = time.time()
    tc = cfg.train
    if d.active and tc.parallel == "none":
        raise ValueError(f"launched with {d.world} processes but train.parallel=none; set train.parallel=ddp or fsdp")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    require_loggers(tc.loggers)  # a missing tracker package stops the run before any work

    # ---- data and model
    task = build_task(cfg.data, tc.seq_len)
    model, cfg = build_model(cfg, task)
    model.to(device)
    compiled, why = (auto_compile(model, device, tc.steps, tc.batch_size * tc.seq_len, tc.seq_len) if tc.compile == "auto"
                     else (tc.compile, f"train.compile={str(tc.compile).lower()}"))
    if compiled:
        compile_blocks(model, tc.seq_len)
    loss_fn = wrap_model(model, tc.parallel, d, device)  # model.loss, wrapped by DDP / FSDP2 under torchrun
    opt = build_optimizers(model, cfg.optim)

    # ---- run directory and resume
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    start_step = 0
    if resume == "never" and list_checkpoints(run_dir):
        raise CheckpointError(f"{run_dir}: already holds checkpoints; resume it or choose a new run name")
    guard = DivergenceGuard(tc.nonfinite, tc.max_skipped_steps)
    if resume != "never":
        if resume == "auto":
            if run_dir.exists():
                check_resumable(run_dir, cfg)
            ckpt, skipped = latest_intact(run_dir)
            for msg in skipped:
                log.warning("skipping damaged checkpoint: %s", msg)
            if skipped:
                log.warning("falling back to %s", ckpt.path if ckpt else "a fresh start (no intact checkpoint left)")
        else:
            ckpt = read_checkpoint(Path(resume))
        if ckpt is not None:
            if "config" in ckpt.state:
                _refuse_if_different(ckpt.path / "state.json", ckpt.state["config"], cfg, "checkpoint was trained with")
            if is_sharded(ckpt.path):  # DCP: re-sharded to this job's process count
                load_sharded(ckpt.path, model, opt.optimizers)
            elif d.active:
                raise CheckpointError(f"{ckpt.path}: not a DCP checkpoint; a torchrun job resumes only from runs with train.parallel=ddp|fsdp")
            else:
                load_model_weights(model, ckpt.path)
                opt.load_state_dict(load_optim_state(ckpt.path))
            set_rng_state(ckpt.state["rng"])
            start_step = ckpt.step
            guard.skipped = int(ckpt.state.get("skipped_steps", 0))
            log.info("resumed from %s (step %d)", ckpt.path, start_step)
    if start_step == 0 and cfg.model.init_from:  # start from given weights (e.g. `archlab retrofit` output)
        load_model_weights(model, Path(cfg.model.init_from))
    barrier(d)  # every rank has read the run directory before rank 0 writes into it
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json_atomic(run_dir / "run.json", run_info(device, {"n_params": model.num_params(), "resumed_from_step": start_step,
                                                                  "optimizer_groups": opt.summary, "world_size": d.world,
                                                                  "process_group": backend(d),
                                                                  "compile": {"setting": tc.compile, "enabled": compiled, "reason": why}}))

    # ---- loop
    rows = rank_rows(tc.batch_size, d)  # this rank's rows of the global batch
    micro = (rows.stop - rows.start) // tc.grad_accum
    eval_bs = tc.batch_size // tc.grad_accum  # the same eval batches on every rank, whatever the world size
    tokens_per_step = tc.batch_size * tc.seq_len
    end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    if progress:
        progress.start(tc.steps, start_step)
    model.train()
    norm_stats = NormStats(model) if tc.log_norms else None
    loss_value, record = float("nan"), {}
    with (open_loggers(cfg, run_dir, start_step) if d.is_main else Loggers()) as loggers:  # metrics.jsonl + train.loggers
        for step in range(start_step, end_step):
            t0 = time.perf_counter()
            lr_mult = lr_factor(step, tc.steps, cfg.optim)
            opt.set_lr(lr_mult)
            batch = task.batch("train", cfg.seed, 0, step, tc.batch_size)
            normaliser = batch.loss_mask[:, 1:].sum().clamp_min(1).to(device) / d.world  # DDP / FSDP average gradients over ranks
            batch = batch.rows(rows).to(device)
            loss_sum = torch.zeros((), device=device)
            draws: list[dict[str, Any]] = []  # per-micro-batch model arguments, a pure function of (seed, step, i)
            for i in range(tc.grad_accum):
                ids, targets, mk, docs = batch.rows(slice(i * micro, (i + 1) * micro)).model_inputs()
                draws.append(model.micro_batch_args(cfg.seed, step, i, tc.steps) if hasattr(model, "micro_batch_args") else {})
                doc_arg = {} if docs is None else {"doc_ids": docs}  # unmasked runs call the model exactly as before
                with autocast_context(device, tc.precision):
                    loss = loss_fn(ids, targets, mk, normaliser, **doc_arg, **draws[-1])
                loss.backward()
                loss_sum += loss.detach()
            loss_value = float(global_mean(loss_sum, d))
            if guard.should_skip(step, loss_value, model, opt):  # raises TrainingDiverged under policy stop
                grad_norm = float("nan")
            else:
                grad_norm = opt.clip()
                opt.step()
            opt.zero_grad()
            dt = time.perf_counter() - t0
            done = step + 1
            record = {"step": done, "loss": loss_value, "lr": cfg.optim.lr * lr_mult, "grad_norm": grad_norm,
                      "tok_per_s": tokens_per_step / dt, "step_time": dt, "tokens": done * tokens_per_step}
            if any(draws):  # e.g. depth recurrence: r and n_grad of each micro-batch
                record["micro_batch_args"] = draws
            if guard.skipped:
                record["skipped_steps"] = guard.skipped
            if norm_stats is not None and (done % tc.log_every == 0 or done == end_step):
                record["norms"] = norm_stats.collect()
            if tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:
                record["val_loss"] = masked_loss_eval(model, task, "val", cfg.seed, tc.eval_batches, eval_bs, tc.precision)["loss"]
                if tc.eval_task and type(task).evaluate is not Task.evaluate:  # e.g. when each hop is acquired
                    record["task"] = task.evaluate(model, cfg.seed, tc.eval_batches, eval_bs)
            if done % tc.log_every == 0 or done == end_step or "val_loss" in record:
                loggers.log(done, record)
            if progress:
                progress.update(done, record)
            if (tc.ckpt_every and done % tc.ckpt_every == 0) or done == end_step:
                extra = {"config": cfg.to_dict(), "metrics": record, "skipped_steps": guard.skipped}
                if tc.parallel != "none":  # DCP, resumable on any number of processes
                    save_sharded(run_dir, done, model, opt.optimizers, extra, tc.keep_last, d)
                else:
                    save_checkpoint(run_dir, done, model, opt.state_dict(), extra, tc.keep_last)
        if progress:
            progress.close()

        # ---- final evaluation
        eval_metrics: dict[str, Any] = {}
        if end_step == tc.steps:
            eval_metrics = masked_loss_eval(model, task, "val", cfg.seed, tc.eval_batches, eval_bs, tc.precision)
            eval_metrics.update(task.evaluate(model, cfg.seed, tc.eval_batches, eval_bs))
            if d.is_main:
                write_json_atomic(run_dir / "eval.json", eval_metrics)
            loggers.log_eval(end_step, eval_metrics)
    return TrainResult(run_dir, end_step, loss_value, eval_metrics, time.time() - t_start, end_step * tokens_per_step)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]

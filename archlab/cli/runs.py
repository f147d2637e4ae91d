"""Commands on one run: ``train``, ``eval``, ``generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from archlab.checkpoint import CheckpointError
from archlab.cli.common import RichProgress, fail, load, load_run_model, out, rounded, setup_logging
from archlab.config import RunConfig


def train(
    config: Optional[Path] = typer.Argument(None, help="YAML recipe (optional)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. optim.lr=3e-3"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default: out_dir/name)"),
    resume: str = typer.Option("auto", help="auto | never | path to a step_N checkpoint"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a model. Resumes automatically from the newest intact checkpoint of the run directory."""
    from archlab.distributed import is_main_process
    from archlab.train import TrainingDiverged, train as run_train

    setup_logging(verbose)
    cfg = load(config, overrides)
    try:
        result = run_train(cfg, run_dir, resume=resume, progress=RichProgress())
    except (CheckpointError, OSError, ValueError) as err:  # OSError: unwritable run dir, missing data files
        fail(str(err))
    except TrainingDiverged as err:
        fail(str(err), code=1)
    if is_main_process():  # under torchrun, one summary
        out.print(f"run dir: {result.run_dir}")
        out.print(f"final train loss {result.final_loss:.4f}; eval {json.dumps(rounded(result.eval))}")


def evaluate(
    run: Path = typer.Argument(..., help="run directory"),
    batches: int = typer.Option(8, help="evaluation batches"),
    recurrences: Optional[str] = typer.Option(
        None, help="recurrent models: test-time r values, e.g. 1,2,4,8; writes RUN/recurrence_sweep.{json,png}"
    ),
    lm_eval_tasks: Optional[str] = typer.Option(
        None, "--lm-eval", help="comma-separated lm-eval tasks (needs archlab[eval]); writes RUN/lm_eval.json"
    ),
    lm_eval_include: Optional[Path] = typer.Option(None, help="folder of local lm-eval task YAMLs for --lm-eval"),
    limit: Optional[int] = typer.Option(None, min=1, help="--lm-eval: at most this many documents per task"),
) -> None:
    """Evaluate a run's newest checkpoint: held-out loss and the task's own metrics, or lm-eval tasks."""
    from archlab.evaluate import model_metrics

    cfg, model, task = load_run_model(run)
    if lm_eval_tasks is not None:
        _eval_lm_eval(run, cfg, model, task, lm_eval_tasks, lm_eval_include, limit)
        return
    bs = cfg.train.batch_size // cfg.train.grad_accum
    if recurrences is not None:
        _eval_recurrences(run, cfg, model, task, recurrences, batches, bs)
        return
    metrics = model_metrics(model, task, cfg.seed, batches, bs)
    table = Table("metric", "value", title=f"{run} ({cfg.data.name})")
    for k, v in rounded(metrics).items():
        table.add_row(k, str(v))
    out.print(table)


def generate(
    run: Path = typer.Argument(..., help="run directory"),
    prompt: str = typer.Option("", help="text prompt (text tasks) or space-separated token ids"),
    max_new_tokens: int = typer.Option(128, min=1),
    temperature: float = typer.Option(0.8, min=0.0),
    top_k: Optional[int] = typer.Option(None, min=1),
    seed: int = typer.Option(0),
    recurrences: Optional[int] = typer.Option(None, "--recurrences", "-r", min=1, help="recurrent models: core iterations (default: model.recurrence.mean_recurrence)"),
) -> None:
    """Sample a continuation from a run's newest checkpoint."""
    import torch

    cfg, model, task = load_run_model(run)
    extra = {}
    if recurrences is not None:
        if cfg.model.recurrence is None:
            fail(f"{run}: --recurrences needs a recurrent model (model.recurrence is not set)")
        extra["r"] = recurrences
    encode = getattr(task, "encode", None)
    if encode is not None:
        ids = encode(prompt or "\n")
    else:
        try:
            ids = [int(t) for t in prompt.split()] or [0]
        except ValueError:
            fail(f"task {cfg.data.name!r} takes token ids as the prompt, got {prompt!r}")
    g = torch.Generator().manual_seed(seed)
    outp = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k, generator=g, **extra)
    out.print(task.decode(outp[0].tolist()), highlight=False, markup=False)


def _eval_lm_eval(run: Path, cfg: RunConfig, model: Any, task: Any, tasks: str, include: Optional[Path], limit: Optional[int]) -> None:
    """lm-eval tasks on the run's model with its tokenizer: table + RUN/lm_eval.json."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None:
        fail(f"{run}: --lm-eval needs a text model; task {cfg.data.name!r} has no tokenizer")
    if include is not None and not include.is_dir():
        fail(f"--lm-eval-include: {include} is not a directory")
    try:
        from archlab.lm_eval_adapter import ArchlabLM, run_lm_eval
    except ImportError as err:
        fail(f"--lm-eval needs lm-eval ({err}); pip install 'archlab[eval]'")
    try:
        lm = ArchlabLM(model, tokenizer, max_length=cfg.train.seq_len)  # the context length it was trained at
        results = run_lm_eval(lm, [t for t in tasks.split(",") if t], include, limit)["results"]
    except ValueError as err:
        fail(str(err))
    (run / "lm_eval.json").write_text(json.dumps(results, indent=1, default=str))
    table = Table("task", "metric", "value", title=f"{run}: lm-eval")
    for name, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, float) and "_stderr" not in key:
                table.add_row(name, key.removesuffix(",none"), f"{value:.4f}")
    out.print(table)


def _eval_recurrences(run: Path, cfg: RunConfig, model: Any, task: Any, recurrences: str, batches: int, bs: int) -> None:
    """Table + plot of the metrics at each test-time recurrence r."""
    from archlab.evaluate import recurrence_sweep
    from archlab.plots import plot_recurrence_sweep

    if cfg.model.recurrence is None:
        fail(f"{run}: --recurrences needs a recurrent model (model.recurrence is not set)")
    try:
        rs = [int(r) for r in recurrences.split(",")]
    except ValueError:
        rs = []
    if not rs or min(rs) < 1:
        fail(f"--recurrences: expected comma-separated integers >= 1, got {recurrences!r}")
    rows = recurrence_sweep(model, task, cfg.seed, rs, batches, bs, cfg.train.seq_len)
    (run / "recurrence_sweep.json").write_text(json.dumps(rows, indent=1))
    plot = plot_recurrence_sweep({run.name: rows}, run / "recurrence_sweep.png")
    keys = [k for k in rows[0] if k not in ("r", "tokens")]
    table = Table("r", *keys, title=f"{run} ({cfg.data.name}), trained at mean r = {cfg.model.recurrence.mean_recurrence}")
    for row in rows:
        table.add_row(str(row["r"]), *(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    out.print(table)
    out.print(f"plot: {plot}")

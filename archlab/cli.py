"""The ``archlab`` command: train, eval, generate, info, demo.

Bad input (config keys, checkpoints) ends with one red line naming the problem and exit code 2.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archlab.checkpoint import CheckpointError
from archlab.config import ConfigError, RunConfig, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="archlab: language-model architecture research.\n\n"
    "Examples:\n\n"
    "  archlab train configs/text_tiny.yaml optim.lr=3e-3 model.canon=ABCD\n\n"
    "  archlab info configs/text_tiny.yaml model.n_layers=8\n\n"
    "  archlab eval runs/my-run\n\n"
    "  archlab generate runs/my-run --prompt 'def main(' --max-new-tokens 80",
)
console = Console(stderr=True)
out = Console()


def fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # one line, even past the width
    raise typer.Exit(code)


class RichProgress:
    """Progress bar with ETA, loss and throughput; implements archlab.train.Progress."""

    def __init__(self, label: str = "train"):
        self.label = label
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )

    def start(self, total: int, done: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total, completed=done, loss="-", tps="-")

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        self.bar.update(self.task, completed=step, loss=f"{metrics['loss']:.4f}", tps=f"{metrics['tok_per_s']:,.0f}")

    def close(self) -> None:
        self.bar.stop()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


def _load_pair(config: Optional[Path], overrides: Optional[list[str]]) -> tuple[Optional[Path], list[str]]:
    """A first argument of the form key=value is an override, not a recipe."""
    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = None, [str(config), *overrides]
    return config, overrides


def _load(config: Optional[Path], overrides: Optional[list[str]]) -> RunConfig:
    """Validated config from recipe + overrides, or exit 2 with the message."""
    config, overrides = _load_pair(config, overrides)
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))
        raise  # unreachable; keeps type checkers happy


def _run_config(run: Path) -> RunConfig:
    path = run / "config.yaml"
    if not path.is_file():
        fail(f"{path}: not found; is {str(run)!r} a run directory?")
    return _load(path, [])


def _load_run_model(run: Path, step: Optional[int] = None):
    """(cfg, model, task) from a run directory's checkpoint ``step_N`` (default: the newest intact one)."""
    from archlab.checkpoint import latest_intact, list_checkpoints, load_model_weights, read_checkpoint
    from archlab.model.recurrence import build_lm
    from archlab.tasks import build_task

    cfg = _run_config(run)
    if step is not None:
        if not (run / f"step_{step}").is_dir():
            fail(f"{run}: no checkpoint step_{step} (found: {', '.join(p.name for p in list_checkpoints(run)) or 'none'})")
        try:
            ckpt = read_checkpoint(run / f"step_{step}")
        except CheckpointError as err:
            fail(str(err))
    else:
        ckpt, skipped = latest_intact(run)
        for msg in skipped:
            console.print(f"[yellow]skipping damaged checkpoint:[/] {msg}")
        if ckpt is None:
            fail(f"{run}: no intact checkpoint")
    model = build_lm(cfg.model)
    try:
        load_model_weights(model, ckpt.path)
    except CheckpointError as err:
        fail(str(err))
    return cfg, model.eval(), build_task(cfg.data, cfg.train.seq_len)


@app.command()
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

    _setup_logging(verbose)
    cfg = _load(config, overrides)
    try:
        result = run_train(cfg, run_dir, resume=resume, progress=RichProgress())
    except (CheckpointError, OSError, ValueError) as err:  # OSError: unwritable run dir, missing data files
        fail(str(err))
    except TrainingDiverged as err:
        fail(str(err), code=1)
    if is_main_process():  # under torchrun, one summary
        out.print(f"run dir: {result.run_dir}")
        out.print(f"final train loss {result.final_loss:.4f}; eval {json.dumps(_round(result.eval))}")


@app.command("eval")
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

    cfg, model, task = _load_run_model(run)
    if lm_eval_tasks is not None:
        _eval_lm_eval(run, cfg, model, task, lm_eval_tasks, lm_eval_include, limit)
        return
    bs = cfg.train.batch_size // cfg.train.grad_accum
    if recurrences is not None:
        _eval_recurrences(run, cfg, model, task, recurrences, batches, bs)
        return
    metrics = model_metrics(model, task, cfg.seed, batches, bs)
    table = Table("metric", "value", title=f"{run} ({cfg.data.name})")
    for k, v in _round(metrics).items():
        table.add_row(k, str(v))
    out.print(table)


@app.command()
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

    cfg, model, task = _load_run_model(run)
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


@app.command()
def export(
    run: Path = typer.Argument(..., help="run directory"),
    out_dir: Path = typer.Argument(..., help="output directory"),
    fmt: str = typer.Option("hf", "--format", help="hf, or a checkpoint format of archlab.formats (llama-canon, raven)"),
    step: Optional[int] = typer.Option(None, min=0, help="checkpoint step_N to export (default: the newest intact one)"),
) -> None:
    """Export a run's checkpoint. hf: config.json + model.safetensors + tokenizer for transformers'
    AutoModelForCausalLM (after `import archlab.hf`; Llama-shaped models as a plain LlamaForCausalLM)."""
    cfg, model, task = _load_run_model(run, step)
    if fmt != "hf":
        from archlab.formats import get_format

        try:
            get_format(fmt).save(model, out_dir)
        except (ValueError, OSError) as err:
            fail(str(err))
        out.print(f"wrote {out_dir} (format {fmt})")
        return
    try:
        from archlab.hf import export_hf
    except ImportError as err:
        fail(f"--format hf needs transformers ({err}); pip install 'archlab[hf]'")
    tokenizer = getattr(task, "tokenizer", None)
    try:
        hf = export_hf(model, out_dir, tokenizer)
    except (ValueError, OSError) as err:
        fail(str(err))
    out.print(f"wrote {out_dir}: {type(hf).__name__}" + ("" if tokenizer else f" (no tokenizer: task {cfg.data.name!r} takes token ids)"))
    loader = "" if type(hf).__name__ == "LlamaForCausalLM" else "import archlab.hf; "
    out.print(f"load: {loader}transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r})", markup=False, highlight=False, soft_wrap=True)


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


@app.command()
def retrofit(
    hf_dir: Path = typer.Argument(..., help="HF Llama directory (config.json + safetensors, as save_pretrained writes)"),
    out_dir: Path = typer.Option(..., "--out", help="output directory (model.safetensors, model.yaml, retrofit.json)"),
    layers: str = typer.Option("2,4,2", help="P,R,C: first P layers, the R before the last C, the last C (paper's rule)"),
    prelude: Optional[str] = typer.Option(None, help="explicit prelude source layers, e.g. 0,1 (overrides the rule)"),
    core: Optional[str] = typer.Option(None, help="explicit core source layers, e.g. 10-13"),
    coda: Optional[str] = typer.Option(None, help="explicit coda source layers, e.g. 14,15"),
    adapter_init: str = typer.Option("default", help="default (nn.Linear, as the paper) | identity ([0|I]: r=1 = truncated model)"),
    mean_recurrence: int = typer.Option(4, min=1, help="model.recurrence.mean_recurrence of the result"),
    seed: int = typer.Option(0, help="seed of the adapter init"),
) -> None:
    """Model surgery: turn a pretrained Llama into a prelude / recurrent core / coda model.

    Then heal it: archlab train RECIPE model.init_from=OUT (RECIPE's model section as in OUT/model.yaml).
    """
    from archlab import retrofit as rf

    try:
        sizes = [int(x) for x in layers.split(",")]
        if len(sizes) != 3 or min(sizes) < 0:
            raise ValueError
    except ValueError:
        fail(f"--layers: expected P,R,C (three integers >= 0), got {layers!r}")
    if adapter_init not in ("default", "identity"):  # checked before any weights are loaded
        fail(f"--adapter-init: expected default or identity, got {adapter_init!r}")
    try:
        explicit = {part: rf.parse_layers(text, f"--{part}") for part, text in zip(rf.PARTS, (prelude, core, coda)) if text is not None}
        model, chosen = rf.retrofit(hf_dir, tuple(sizes), explicit, adapter_init, seed, {"mean_recurrence": mean_recurrence})
    except (ValueError, OSError) as err:
        fail(str(err))
    path = rf.save(model, out_dir, hf_dir, chosen)
    out.print(f"prelude {chosen['prelude']}, core {chosen['core']}, coda {chosen['coda']}; {model.num_params():,} parameters")
    out.print(f"wrote {path}; heal it with: archlab train RECIPE model.init_from={path}")


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="checkpoint directory: config.json + model.safetensors (or shards + index)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides of the run config (data.*, train.*, optim.*)"),
    run_dir: Path = typer.Option(..., "--out", help="run directory to create (config.yaml + step_0/)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="llama-canon | raven (default: from config.json's model_type)"),
) -> None:
    """Import a published checkpoint (PhysicsLM4 LlamaCanon, plain Llama, retrofitted recurrence) as a run.

    Then: archlab eval RUN, archlab generate RUN, or archlab train RUN/config.yaml to keep training.
    """
    from archlab.formats.run_import import import_checkpoint

    try:
        name, model = import_checkpoint(path, run_dir, fmt, overrides)
    except (ValueError, OSError) as err:  # FormatError / ConfigError are ValueErrors
        fail(str(err))
    out.print(f"imported {path} ({name}, {model.num_params():,} parameters) into {run_dir}/step_0", soft_wrap=True)


@app.command()
def info(
    config: Optional[Path] = typer.Argument(None, help="YAML recipe (optional)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides"),
    dump: bool = typer.Option(False, help="print the resolved config as YAML"),
) -> None:
    """Parameter count, FLOPs per token and (optionally) the resolved config."""
    import yaml

    from archlab.tasks import build_task
    from archlab.train import build_model

    cfg = _load(config, overrides)
    try:
        model, cfg = build_model(cfg, build_task(cfg.data, cfg.train.seq_len))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    table = Table("quantity", "value")
    table.add_row("parameters", f"{model.num_params():,}")
    table.add_row("non-embedding parameters", f"{model.num_params(include_embedding=False):,}")
    canon = sum(p.numel() for n, p in model.named_parameters() if "canon" in n)
    table.add_row("Canon parameters", f"{canon:,} ({100 * canon / model.num_params():.3f}%)")
    flops = model.flops_per_token(cfg.train.seq_len)
    table.add_row(f"training FLOPs / token (T={cfg.train.seq_len})", f"{flops:.3e}")
    table.add_row("training FLOPs / step", f"{flops * cfg.train.batch_size * cfg.train.seq_len:.3e}")
    out.print(table)
    if dump:
        out.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), highlight=False, markup=False)


@app.command()
def sweep(
    config: Optional[Path] = typer.Argument(None, help="sweep file (YAML with a top-level 'grid') or run recipe (optional)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="fixed dotted overrides for every run"),
    grid: list[str] = typer.Option([], "--grid", "-g", help="key=v1,v2,... (repeatable; '' is a value: model.canon=,ABCD)"),
    seeds: Optional[int] = typer.Option(None, min=1, help="seeds 0..N-1 per grid point (default: the sweep file's, else 1)"),
    jobs: int = typer.Option(1, min=1, help="runs in parallel (CPU threads are shared fairly)"),
    backend: str = typer.Option("local", help="local (child processes) or ray (RAY_ADDRESS or a local Ray)"),
    emit_commands: bool = typer.Option(False, "--emit-commands", help="write commands.sh for a scheduler instead of running"),
    nproc: int = typer.Option(1, min=1, help="with --emit-commands: processes per run (torchrun --nproc_per_node)"),
    collect: bool = typer.Option(False, "--collect", help="add runs finished outside archlab (commands.sh) to the table"),
    sweep_out: Optional[Path] = typer.Option(None, "--out", help="sweep directory (default runs/sweep-<file stem>)"),
) -> None:
    """Run grid x seeds, resumably, into a results table (results.sqlite). Then: archlab report DIR.

    Examples:

      archlab sweep configs/depo_tiny.yaml --grid optim.lr=1e-3,3e-3 --grid model.canon=,ABCD --seeds 2 --jobs 2

      archlab sweep configs/sweeps/multipliers.yaml --jobs 2

      archlab sweep configs/sweeps/multipliers.yaml --emit-commands --nproc 4   # then: --collect
    """
    from archlab import sweep as sw

    try:
        plan = _sweep_plan(config, overrides, grid, seeds)
        sweep_dir = sweep_out or Path("runs") / f"sweep-{config.stem if config and config.is_file() else 'default'}"
        if emit_commands:
            lines = sw.emit_commands(sweep_dir, plan, nproc)
            out.print(f"{len(lines)} commands in {sweep_dir / sw.COMMANDS_FILE}; after they ran: archlab sweep ... --collect --out {sweep_dir}")
            return
        if collect:
            rows, missing = sw.collect(sweep_dir, plan)
            out.print(f"collected {len(rows)} finished runs into {sweep_dir / sw.DB_FILE}; {len(missing)} not finished yet")
            return
        total = len(plan.specs())
        bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        with bar:
            task = bar.add_task("sweep", total=total)

            def done(spec, row, i, n):
                bar.update(task, completed=total - n + i)
                status = "[green]done[/]" if row["status"] == "done" else f"[red]failed[/]: {row['error'][-200:]}"
                bar.console.print(f"{spec.name}: {status}" + (f" val_loss={row['val_loss']:.4f}" if row.get("val_loss") is not None else ""))

            rows = sw.run_plan(sweep_dir, plan, jobs, backend, on_done=done)
    except ConfigError as err:
        fail(str(err))
    n_failed = sum(r["status"] != "done" for r in rows)
    out.print(f"sweep dir: {sweep_dir}  ({len(rows)} runs this time, {n_failed} failed; earlier finished runs skipped)")
    out.print(f"next: archlab report {sweep_dir}")


def _sweep_plan(config: Optional[Path], overrides: Optional[list[str]], grid: list[str], seeds: Optional[int]):
    """A SweepPlan from a sweep file or a run recipe, plus the command line's overrides, grid and seeds."""
    from archlab.sweep import SweepPlan, is_sweep_file, load_sweep_file, parse_grid

    config, fixed = _load_pair(config, overrides)
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {str(config)!r} does not exist")
    plan = load_sweep_file(config) if config is not None and is_sweep_file(config) else SweepPlan(config)
    extra = parse_grid(grid)
    for key in extra.keys() & plan.grid.keys():
        raise ConfigError(f"--grid key {key!r} is already in the sweep file's grid")
    plan.overrides, plan.grid = [*plan.overrides, *fixed], {**plan.grid, **extra}
    plan.seeds = seeds or plan.seeds
    return plan


@app.command()
def report(
    sweep_dir: Path = typer.Argument(..., help="sweep directory"),
    metric: Optional[str] = typer.Option(None, help="column or eval.json key (default: the sweep file's, else val_loss)"),
    lr_key: Optional[str] = typer.Option(None, help="swept key treated as the LR grid (default: the first *.lr key)"),
    higher_is_better: Optional[bool] = typer.Option(None, "--higher-is-better/--lower-is-better", help="e.g. for accuracies"),
    compare: Optional[str] = typer.Option(None, help="swept key whose values are paired against its first value, other keys equal"),
) -> None:
    """Markdown report with tables and plots from a sweep's results table."""
    from archlab.report import build_report
    from archlab.sweep import SWEEP_FILE

    meta_path = sweep_dir / SWEEP_FILE
    defaults = json.loads(meta_path.read_text()).get("report", {}) if meta_path.is_file() else {}
    try:
        path = build_report(sweep_dir, metric or defaults.get("metric", "val_loss"), lr_key or defaults.get("lr_key"),
                            defaults.get("higher_is_better", False) if higher_is_better is None else higher_is_better,
                            compare or defaults.get("compare"))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    except sqlite3.DatabaseError as err:  # e.g. a file that is not SQLite at all; nothing in it is unpickled
        fail(f"{sweep_dir / 'results.sqlite'}: not a readable results table ({err})")
    out.print(path.read_text(), markup=False, highlight=False)
    out.print(f"report: {path}")


@app.command()
def scorecard(
    arch_files: Optional[list[Path]] = typer.Argument(None, metavar="[ARCH.yaml]...", help="architecture files: name + model section"),
    budget: str = typer.Option("tiny", help="tiny (2 CPU cores, ~1 h for 4 archs) | small (~1 GPU-day per arch) | paper"),
    preset: Optional[str] = typer.Option(None, help="built-in architectures, e.g. paper-4.1"),
    arch: list[str] = typer.Option([], "--arch", help="preset architectures to run (repeatable or comma-separated; default all)"),
    task: list[str] = typer.Option([], "--task", help="tasks to run (repeatable or comma-separated; default all five)"),
    jobs: int = typer.Option(1, min=1, help="parallel runs (CPU threads are shared fairly)"),
    sc_out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/scorecard-<budget>)"),
    no_run: bool = typer.Option(False, "--no-run", help="only write the scorecard from the runs finished so far"),
    settings: list[str] = typer.Option([], "--set", help="KEY=VALUE override for every cell (repeatable), e.g. data.doc_mask=true"),
) -> None:
    """Run architectures through DEPO, BREVO, CAPO, MANO, LANO at a fixed budget (LR grid x seeds, best LR per
    cell, resumable) and write scorecard.md + heatmap.png + per-task plots."""
    from archlab.presets import TASKS, preset_archs
    from archlab.scorecard import finished, load_arch, plan, run_scorecard, write_report

    split = lambda items: [x for item in items for x in item.split(",") if x]  # noqa: E731
    try:
        if arch and not preset:
            raise ConfigError("--arch picks from a preset; give --preset too (e.g. --preset paper-4.1)")
        archs = [load_arch(p) for p in arch_files or []] + (preset_archs(preset, split(arch)) if preset else [])
        if not archs:
            raise ConfigError("no architectures: give ARCH.yaml files and/or --preset paper-4.1")
        out_dir = sc_out or Path("runs") / f"scorecard-{budget}"
        cells = plan(archs, budget, split(task) or list(TASKS), out_dir, tuple(settings))
        n_runs = sum(len(c.lrs) * c.seeds for c, _ in cells)
        out.print(f"{len(cells)} cells, {n_runs} runs -> {out_dir} ({finished(cells)} already finished: skipped)")

        def done(label, spec, row):
            status = "[green]done[/]" if row["status"] == "done" else f"[red]failed[/]: {(row['error'] or '')[-200:]}"
            console.print(f"{label} {spec.name}: {status}")

        rows = [] if no_run else run_scorecard(cells, jobs, on_done=done)
        path = write_report(out_dir, f"{budget} budget", [a.name for a in archs])
    except ConfigError as err:
        fail(str(err))
    n_failed = sum(r["status"] != "done" for r in rows)
    out.print(path.read_text(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"{len(rows)} runs this time ({n_failed} failed; earlier finished runs skipped). scorecard: {path}")


@app.command()
def reproduce(
    claim: Optional[str] = typer.Argument(None, help="claim name: a file configs/reproduce/CLAIM.yaml (see --list)"),
    budget: str = typer.Option("cpu", help="cpu (sized for <= 60 min on 2 cores) | gpu (larger; the claim file's budgets)"),
    jobs: int = typer.Option(1, min=1, help="parallel runs (CPU threads are shared fairly)"),
    repro_out: Optional[Path] = typer.Option(None, "--out", help="output directory (default results/reproduce/CLAIM)"),
    no_run: bool = typer.Option(False, "--no-run", help="only write the report from the runs finished so far"),
    list_claims: bool = typer.Option(False, "--list", help="list the claims and their budgets"),
    table: bool = typer.Option(False, "--table", help="print the markdown table of every claim's committed result"),
) -> None:
    """Reproduce a paper's claim: run its sweeps (resumable: finished runs are skipped) and write report.md with
    the effect, its 95% interval, a paired test over seeds and the verdict (shown / not shown).

    Examples:

      archlab reproduce --list

      archlab reproduce keel --jobs 2

      archlab reproduce keel --no-run          # the report from what has finished

      archlab reproduce --table                # every claim's verdict (docs/reproductions.md)
    """
    from archlab.reproduce import claim_names, load_claim, run_claim
    from archlab.reproduce.index import claims_table
    from archlab.reproduce.render import VERDICT_TXT

    try:
        if table:
            out.print(claims_table(budget=budget), markup=False, highlight=False, soft_wrap=True)
            return
        if list_claims or claim is None:
            if claim is None and not list_claims:
                raise ConfigError(f"give a claim name; known claims: {', '.join(claim_names())}")
            for name in claim_names():
                c = load_claim(name)
                out.print(f"{name}: {c.title} (budgets: {', '.join(c.budgets)})", highlight=False)
            return

        def done(label, spec, row, i, n):
            status = "[green]done[/]" if row["status"] == "done" else f"[red]failed[/]: {(row['error'] or '')[-200:]}"
            console.print(f"{label} {spec.name} ({i}/{n}): {status}")

        path = run_claim(claim, budget, jobs, repro_out, execute=not no_run, on_done=done)
    except ConfigError as err:
        fail(str(err))
    out.print(path.read_text(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"report: {path}\nverdict: {(path.parent / VERDICT_TXT).read_text().strip()}", markup=False, highlight=False, soft_wrap=True)


data_app = typer.Typer(help="Inspect task data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("show")
def data_show(
    task_name: str = typer.Argument(..., metavar="TASK", help="depo | brevo | capo | mano | lano | text"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. data.n_max=8"),
    n: int = typer.Option(2, min=1, help="windows to show"),
    split: str = typer.Option("train", help="train | val | test"),
    step: int = typer.Option(0, min=0, help="stream position"),
) -> None:
    """Print decoded samples; loss-bearing (answer) tokens are highlighted in green."""
    from archlab.tasks import build_task

    cfg = _load(None, [f"data.name={task_name}", *(overrides or [])])
    try:
        task = build_task(cfg.data, cfg.train.seq_len)
        tokens, mask, _ = task.batch(split, cfg.seed, 0, step, n)
    except ValueError as err:
        fail(str(err))
    for row, (toks, m) in enumerate(zip(tokens.tolist(), mask.tolist())):
        runs, start = [], 0
        for i in range(1, len(toks) + 1):  # split into runs of equal mask value, decode each run
            if i == len(toks) or m[i] != m[start]:
                text = escape(task.decode(toks[start:i]))
                runs.append(f"[bold green]{text}[/]" if m[start] else text)
                start = i
        out.rule(f"{task_name} {split} step {step} window {row}: {sum(m)} of {len(m)} tokens carry loss")
        out.print("".join(runs), highlight=False)


@data_app.command("prepare")
def data_prepare(
    sources: Optional[list[str]] = typer.Argument(None, help="files, directories, .jsonl, .parquet, saved datasets; none = Python stdlib"),
    out_dir: Path = typer.Option(..., "--out", help="dataset directory to create (then: data.dataset=DIR)"),
    tokenizer: str = typer.Option("byte", help="byte | bpe (trained on the corpus) | a local HF tokenizer directory"),
    vocab_size: int = typer.Option(8192, min=257, help="bpe: vocabulary size"),
    glob: str = typer.Option("*.py", help="files to read under directories"),
    text_field: str = typer.Option("text", help="jsonl field / parquet or dataset column with the text"),
    max_bytes: Optional[int] = typer.Option(None, min=1, help="read at most this many bytes of text"),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.5, help="every 1/f-th document is held out"),
    shard_tokens: int = typer.Option(1 << 26, min=1, help="tokens per shard file"),
) -> None:
    """Tokenise a local corpus once into memory-mapped shards with a manifest (document boundaries kept)."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from archlab.data.prepare import prepare_corpus

    bar = Progress(TextColumn("[bold]tokenising"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(), console=console)
    try:
        with bar:
            task = bar.add_task("tokenising", total=max_bytes)
            manifest = prepare_corpus(list(sources or []), out_dir, tokenizer, vocab_size, glob, text_field, max_bytes,
                                      val_fraction, shard_tokens, on_progress=lambda n: bar.advance(task, n))
    except (OSError, ValueError, ImportError) as err:
        fail(str(err))
    counts = {s: sum(e["tokens"] for e in entries) for s, entries in manifest["splits"].items()}
    out.print(f"{out_dir}: {manifest['bytes']:,} bytes -> {counts} tokens, vocab {manifest['vocab_size']} ({tokenizer})")
    out.print(f"next: archlab train configs/text_tiny.yaml data.dataset={out_dir}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), help="where the runs and the plot go"),
    steps: int = typer.Option(300, min=10, help="training steps per arm"),
) -> None:
    """The main job: compare two small models on real text (Python stdlib sources) and plot the losses."""
    from archlab.demo import run_demo

    _setup_logging(False)
    run_demo(out_dir, steps, RichProgress, out)


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Commands over many runs: ``sweep``, ``report``, ``scorecard``, ``reproduce``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from archlab.checkpoint import write_text_atomic
from archlab.cli.common import console, fail, load_pair, out
from archlab.config import ConfigError
from archlab.reproduce import claim_names, load_claim, run_claim
from archlab.reproduce.index import claims_table, with_table
from archlab.reproduce.render import VERDICT_TXT


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
        plan = sw.build_plan(*load_pair(config, overrides), grid, seeds)
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
    from archlab.presets import TASKS
    from archlab.scorecard import finished, plan, run_scorecard, select_archs, split_items, write_report

    try:
        archs = select_archs(arch_files or [], preset, arch)
        out_dir = sc_out or Path("runs") / f"scorecard-{budget}"
        cells = plan(archs, budget, split_items(task) or list(TASKS), out_dir, tuple(settings))
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


def reproduce(
    claim: Optional[str] = typer.Argument(None, help="claim name: a file configs/reproduce/CLAIM.yaml (see --list)"),
    budget: str = typer.Option("cpu", help="a budget of the claim file: cpu (sized for <= 60 min on 2 cores), gpu (larger) "
                               "or a follow-up it names (--list shows them)"),
    jobs: int = typer.Option(1, min=1, help="parallel runs (CPU threads are shared fairly)"),
    repro_out: Optional[Path] = typer.Option(None, "--out", help="output directory (default results/reproduce/CLAIM)"),
    no_run: bool = typer.Option(False, "--no-run", help="only write the report from the runs finished so far"),
    list_claims: bool = typer.Option(False, "--list", help="list the claims and their budgets"),
    table: bool = typer.Option(False, "--table", help="print the markdown table of every claim's committed result"),
    update: Optional[Path] = typer.Option(None, "--update", help="with --table: write it into this markdown file, "
                                          "between its begin / end markers (docs/reproductions.md)"),
) -> None:
    """Reproduce a paper's claim: run its sweeps (resumable: finished runs are skipped) and write report.md with
    the effect, its 95% interval, a paired test over seeds and the verdict (shown / not shown).

    Examples:

      archlab reproduce --list

      archlab reproduce keel --jobs 2

      archlab reproduce keel --no-run          # the report from what has finished

      archlab reproduce --table                # every claim's verdict

      archlab reproduce --table --update docs/reproductions.md
    """
    try:
        if update is not None and not table:
            raise ConfigError("--update goes with --table")
        if table:
            text = claims_table(budget=budget)
            if update is None:
                out.print(text, markup=False, highlight=False, soft_wrap=True)
            elif not update.is_file():
                raise ConfigError(f"--update {update}: no such file")
            else:
                write_text_atomic(update, with_table(update.read_text(), text, str(update)))
                out.print(f"table of {text.count(chr(10)) - 1} rows written into {update}", highlight=False)
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

"""What every command module shares: the consoles, ``fail`` (one red line, exit 2), the progress bar, and
loading a config from the command line or a run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from archlab.checkpoint import CheckpointError
from archlab.config import ConfigError, RunConfig, load_config
from archlab.model.lm import LM
from archlab.run_dir import load_run
from archlab.tasks import Task

console = Console(stderr=True)
out = Console()


def fail(msg: str, code: int = 2) -> NoReturn:
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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


def load_pair(config: Optional[Path], overrides: Optional[list[str]]) -> tuple[Optional[Path], list[str]]:
    """A first argument of the form key=value is an override, not a recipe."""
    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = None, [str(config), *overrides]
    return config, overrides


def load(config: Optional[Path], overrides: Optional[list[str]]) -> RunConfig:
    """Validated config from recipe + overrides, or exit 2 with the message."""
    config, overrides = load_pair(config, overrides)
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))


def load_run_model(run: Path, step: Optional[int] = None) -> tuple[RunConfig, LM, Task]:
    """(cfg, model, task) from a run directory's checkpoint ``step_N`` (default: the newest intact one), or exit 2."""
    try:
        return load_run(run, step, on_skip=lambda msg: console.print(f"[yellow]skipping damaged checkpoint:[/] {msg}"))
    except (CheckpointError, ConfigError) as err:
        fail(str(err))


def rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

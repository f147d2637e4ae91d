"""Commands about a config or the whole library: ``info``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from archlab.cli.common import RichProgress, fail, load, out, setup_logging


def info(
    config: Optional[Path] = typer.Argument(None, help="YAML recipe (optional)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides"),
    dump: bool = typer.Option(False, help="print the resolved config as YAML"),
) -> None:
    """Parameter count, FLOPs per token and (optionally) the resolved config."""
    import yaml

    from archlab.tasks import build_task
    from archlab.train import build_model

    cfg = load(config, overrides)
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


def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), help="where the runs and the plot go"),
    steps: int = typer.Option(300, min=10, help="training steps per arm"),
) -> None:
    """The main job: compare two small models on real text (Python stdlib sources) and plot the losses."""
    from archlab.demo import run_demo

    setup_logging(False)
    run_demo(out_dir, steps, RichProgress, out)

"""``archlab data``: inspect task data, prepare text corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from archlab.cli.common import console, fail, load, out

app = typer.Typer(help="Inspect task data.", no_args_is_help=True)


@app.command("show")
def data_show(
    task_name: str = typer.Argument(..., metavar="TASK", help="depo | brevo | capo | mano | lano | text"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. data.n_max=8"),
    n: int = typer.Option(2, min=1, help="windows to show"),
    split: str = typer.Option("train", help="train | val | test"),
    step: int = typer.Option(0, min=0, help="stream position"),
) -> None:
    """Print decoded samples; loss-bearing (answer) tokens are highlighted in green."""
    from archlab.tasks import build_task

    cfg = load(None, [f"data.name={task_name}", *(overrides or [])])
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


@app.command("prepare")
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

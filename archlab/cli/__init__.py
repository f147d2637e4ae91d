"""The ``archlab`` command: one module per command group, each command a thin layer over library functions.

  runs.py         train, eval, generate      (one run)
  interop.py      export, retrofit, import   (models in and out of archlab)
  info.py         info, demo
  experiments.py  sweep, report, scorecard   (many runs)
  data.py         data show, data prepare    (a sub-command group)
  common.py       consoles, fail (one red line, exit 2), progress bar, config / run-directory loading

A new command: a function in its group's module (or a new module) and one line below. Bad input (config
keys, checkpoints) ends with one red line naming the problem and exit code 2.
"""

from __future__ import annotations

import typer

from archlab.cli import data, experiments, info, interop, runs

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
app.command()(runs.train)
app.command("eval")(runs.evaluate)
app.command()(runs.generate)
app.command()(interop.export)
app.command()(interop.retrofit)
app.command("import")(interop.import_)
app.command()(info.info)
app.command()(experiments.sweep)
app.command()(experiments.report)
app.command()(experiments.scorecard)
app.command()(experiments.reproduce)
app.command()(info.demo)
app.add_typer(data.app, name="data")


def main() -> None:  # pragma: no cover
    app()

"""Commands that move models in and out of archlab: ``export``, ``import``, ``retrofit``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from archlab.cli.common import fail, load_run_model, out


def export(
    run: Path = typer.Argument(..., help="run directory"),
    out_dir: Path = typer.Argument(..., help="output directory"),
    fmt: str = typer.Option("hf", "--format", help="hf, or a checkpoint format of archlab.formats (llama-canon, raven)"),
    step: Optional[int] = typer.Option(None, min=0, help="checkpoint step_N to export (default: the newest intact one)"),
) -> None:
    """Export a run's checkpoint. hf: config.json + model.safetensors + tokenizer for transformers'
    AutoModelForCausalLM (after `import archlab.hf`; Llama-shaped models as a plain LlamaForCausalLM)."""
    cfg, model, task = load_run_model(run, step)
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

"""Retrofit surgery: an HF Llama checkpoint directory -> RecurrentLM whose prelude / core / coda are source layers.

Spec: shared/specs/recurrence.md §2. Default layer rule (the paper's): the first P layers are the prelude, the last
C layers the coda, the R layers just before the coda the core; the layers in between are dropped (16 layers,
(2, 4, 2) -> 0-1, 10-13, 14-15). The head is untied (a copy of the embedding if the source ties them), the
adapter keeps nn.Linear's default init unless ``adapter_init="identity"`` ([0 | I], so that r = 1 reproduces the
truncated source model exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from archlab import hf_llama
from archlab.checkpoint import MODEL_FILE
from archlab.model.config import ModelConfig
from archlab.model.recurrence import RecurrentLM

PARTS = ("prelude", "core", "coda")


def parse_layers(text: str, what: str) -> list[int]:
    """'0,1,10-13' -> [0, 1, 10, 11, 12, 13]; ``what`` names the option in errors."""
    out: list[int] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{what}: {item!r} is not a layer index or range like 10-13")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def default_layers(n_source: int, p: int, r: int, c: int) -> tuple[list[int], list[int], list[int]]:
    """The paper's rule: first p layers, then the r layers before the last c, then the last c."""
    if p + r + c > n_source:
        raise ValueError(f"--layers {p},{r},{c} needs {p + r + c} layers; the source model has {n_source}")
    return list(range(p)), list(range(n_source - c - r, n_source - c)), list(range(n_source - c, n_source))


def resolve_layers(n_source: int, sizes: tuple[int, int, int], explicit: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Source layers per part: the rule for (P, R, C), with any part given in ``explicit`` replacing the rule's."""
    explicit = explicit or {}
    rule = dict(zip(PARTS, default_layers(n_source, *sizes))) if set(explicit) != set(PARTS) else {}
    chosen = {part: explicit.get(part, rule.get(part, [])) for part in PARTS}
    check_layers(n_source, chosen)
    return chosen


def check_layers(n_source: int, layers: dict[str, list[int]]) -> None:
    bad = sorted({i for part in layers.values() for i in part if not 0 <= i < n_source})
    if bad:
        raise ValueError(f"layer indices {bad} are out of range; the source model has {n_source} layers (0-{n_source - 1})")
    if not layers["core"]:
        raise ValueError("the core needs at least one layer")
    flat = [i for part in layers.values() for i in part]
    if len(set(flat)) != len(flat):
        raise ValueError(f"a source layer is used twice: prelude {layers['prelude']}, core {layers['core']}, coda {layers['coda']}")


def retrofit_state_dict(src: dict[str, torch.Tensor], layers: dict[str, list[int]], tied: bool) -> dict[str, torch.Tensor]:
    """archlab LM state dict (``blocks.{i}.*``) -> RecurrentLM state dict without the adapter."""
    out = {k: v for k, v in src.items() if not k.startswith("blocks.")}
    if tied:
        out["head.weight"] = src["embed.weight"].clone()
    for part, idxs in layers.items():
        for j, i in enumerate(idxs):
            prefix = f"blocks.{i}."
            out.update({f"{part}.{j}.{k[len(prefix):]}": v.clone() for k, v in src.items() if k.startswith(prefix)})
    return out


def retrofit(
    hf_dir: str | Path,
    sizes: tuple[int, int, int] = (2, 4, 2),
    explicit: dict[str, list[int]] | None = None,
    adapter_init: str = "default",
    seed: int = 0,
    recurrence: dict[str, Any] | None = None,
) -> tuple[RecurrentLM, dict[str, list[int]]]:
    """Build the recurrent model from a Llama ``save_pretrained`` directory; returns it and the source layers used.

    sizes: (P, R, C) for the default rule; explicit: source layers for some or all of 'prelude', 'core', 'coda'.
    recurrence: further model.recurrence settings (mean_recurrence, backprop_depth, ...).
    """
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json; expected a directory written by save_pretrained")
    n_source = json.loads((hf_dir / "config.json").read_text()).get("num_hidden_layers", 0)
    chosen = resolve_layers(n_source, sizes, explicit)  # before loading any weights: a bad spec fails fast and quietly
    source = hf_llama.load(hf_dir)
    sizes = {part: len(chosen[part]) for part in PARTS}
    rec = {**(recurrence or {}), **sizes, "adapter_init": adapter_init}
    cfg = ModelConfig.model_validate({**source.cfg.model_dump(serialize_as_any=True), "n_layers": sum(sizes.values()), "tie_embeddings": False, "recurrence": rec})
    torch.manual_seed(seed)  # the adapter's default init
    model = RecurrentLM(cfg)
    sd = retrofit_state_dict(source.state_dict(), chosen, source.cfg.tie_embeddings)
    sd["adapter.weight"] = model.adapter.weight.detach().clone()
    model.load_state_dict(sd)
    return model, chosen


def save(model: RecurrentLM, out_dir: str | Path, source: str | Path, layers: dict[str, list[int]]) -> Path:
    """out_dir/model.safetensors (for model.init_from), model.yaml (the model section), retrofit.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_FILE))
    (out / "model.yaml").write_text(yaml.safe_dump({"model": model.cfg.model_dump(mode="json", serialize_as_any=True)}, sort_keys=False))
    info = {"source": str(source), "layers": layers, "n_params": model.num_params()}
    (out / "retrofit.json").write_text(json.dumps(info, indent=1))
    return out

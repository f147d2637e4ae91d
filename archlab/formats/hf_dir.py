"""A transformers-style checkpoint directory on disk: ``config.json`` + safetensors (one file or sharded).

Reading accepts ``model.safetensors`` or shards listed in ``model.safetensors.index.json``; writing shards
when ``max_shard_bytes`` is given. No network access: only local paths are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import ValidationError
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"


class FormatError(ValueError):
    """A checkpoint directory that does not fit its format; the message names the file or config field."""


def invalid_config(err: ValidationError) -> FormatError:
    """A FormatError with pydantic's messages for an archlab config built from config.json."""
    return FormatError(f"config.json: {'; '.join(e['msg'].removeprefix('Value error, ') for e in err.errors())}")


def read_config(path: Path) -> dict[str, Any]:
    f = path / CONFIG
    if not f.is_file():
        raise FormatError(f"{f}: not found; is {str(path)!r} a checkpoint directory?")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{f}: not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{f}: top level must be a JSON object")
    return cfg


def _load(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(f)
    except (SafetensorError, OSError) as err:
        raise FormatError(f"{f}: unreadable safetensors ({err})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, from the index's shards if there is an index, else model.safetensors."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise FormatError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise FormatError(f"{path / shard}: shard listed in {INDEX} is missing")
            tensors.update(_load(path / shard))
        listed_only = sorted(set(weight_map) - set(tensors))
        if listed_only:
            raise FormatError(f"{index}: lists tensors absent from their shards: {listed_only[:5]}")
        return tensors
    if not (path / WEIGHTS).is_file():
        raise FormatError(f"{path}: neither {WEIGHTS} nor {INDEX} found (only safetensors checkpoints are read)")
    return _load(path / WEIGHTS)


def check_keys(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise FormatError naming missing / unexpected / mis-shaped tensors of ``path``."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = [f"{what} {items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
    if problems:
        raise FormatError(f"{path}: tensors do not fit config.json: {'; '.join(problems)}")


def load_checked(path: Path, model: nn.Module, to_published: Callable[[dict], dict], from_published: Callable[[dict], dict]) -> None:
    """Load ``path``'s tensors into ``model`` after checking they are exactly the ones ``to_published`` names."""
    tensors = read_tensors(path)
    check_keys(path, tensors, to_published(model.state_dict()))
    model.load_state_dict(from_published(tensors))


def write(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], max_shard_bytes: int | None = None) -> None:
    """Write config.json and the tensors (sharded with an index when ``max_shard_bytes`` is set)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, path / WEIGHTS, metadata=meta)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / fname, metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")

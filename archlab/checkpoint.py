"""Checkpoints: ``step_N/`` = model.safetensors + optim.pt + state.json, written atomically.

A checkpoint is first written into a hidden temporary folder and renamed into place only when complete,
so a crash mid-write never leaves a half checkpoint under a real name, and older checkpoints are deleted
only after the new one exists; a failed write (disk full) removes only its own temporary folder. Weights
with NaN/Inf are never written. ``state.json`` records the schema version, step, resolved config, RNG states
and a SHA-256 of every file, so truncation or flipped bytes are detected with a message naming the file.
Nothing is unpickled: weights are safetensors and the optimiser state is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

SCHEMA_VERSION = 1
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optim.pt", "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a hidden temporary file and a rename: nobody (a resumed run included) sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk, so a finished checkpoint survives a power cut too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, optim_state: Any, extra: dict[str, Any], keep_last: int
) -> Path:
    """Write ``run_dir/step_{step}`` atomically, then prune to the newest ``keep_last`` checkpoints.

    Refuses non-finite weights. On a write failure (disk full, unwritable directory) the temporary folder is
    removed, every existing checkpoint is left as it was, and a CheckpointError names the file and the cause.
    """
    final = run_dir / f"step_{step}"
    tmp = run_dir / f".tmp_step_{step}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"{final}: refusing to save non-finite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    current = tmp
    try:
        for stale in run_dir.glob(".tmp_step_*"):  # left by a process killed mid-write
            shutil.rmtree(stale)
        tmp.mkdir(parents=True)
        current = tmp / MODEL_FILE
        save_file(tensors, current)
        current = tmp / OPTIM_FILE
        torch.save(optim_state, current)
        for name in (MODEL_FILE, OPTIM_FILE):
            _fsync(tmp / name)
        state = {
            "schema_version": SCHEMA_VERSION,
            "step": step,
            "rng": rng_state(),
            "files": {name: {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in (MODEL_FILE, OPTIM_FILE)},
            **extra,
        }
        current = tmp / STATE_FILE
        write_json_atomic(current, state)
        current = final
        if final.exists():  # a damaged checkpoint of the same step (skipped on resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(run_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(run_dir)]
        raise CheckpointError(
            f"{current}: cannot write checkpoint ({err.strerror or err}); existing checkpoints left untouched: {kept or 'none'}"
        ) from None
    for old in list_checkpoints(run_dir)[:-keep_last]:  # only now that the new checkpoint is complete
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (temporary folders excluded)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def read_checkpoint(path: Path) -> Checkpoint:
    """Validate a checkpoint folder: state.json readable, schema known, files present and intact."""
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing (incomplete or foreign checkpoint)")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_path}: not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: expected a JSON object, got {type(state).__name__}")
    version = state.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{state_path}: schema version {version!r}, this archlab reads version {SCHEMA_VERSION}")
    files = state.get("files")
    if (not isinstance(files, dict) or not (sorted(files) == sorted((MODEL_FILE, OPTIM_FILE)) or _is_dcp_listing(files))
            or not all(isinstance(m, dict) for m in files.values()) or not isinstance(state.get("step"), int)):
        raise CheckpointError(f"{state_path}: malformed (needs 'step' and checksums of {MODEL_FILE} and {OPTIM_FILE})")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != meta.get("bytes"):
            raise CheckpointError(f"{f}: truncated or resized ({f.stat().st_size} bytes, expected {meta.get('bytes')})")
        if sha256(f) != meta.get("sha256"):
            raise CheckpointError(f"{f}: checksum mismatch (corrupted bytes)")
    return Checkpoint(path, state)


def _is_dcp_listing(files: dict[str, Any]) -> bool:
    """A torchrun checkpoint (archlab/distributed.py): full weights + the optimiser inside a DCP folder ``dcp/``."""
    return MODEL_FILE in files and any(n.startswith("dcp/") for n in files) and all(n == MODEL_FILE or n.startswith("dcp/") for n in files)


def latest_intact(run_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """Newest checkpoint that validates, and one message per newer checkpoint that was skipped."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path), skipped
        except CheckpointError as err:
            skipped.append(str(err))
    return None, skipped


def load_model_weights(model: nn.Module, ckpt_path: Path) -> None:
    """Load ``model.safetensors`` strictly, with a readable error on any mismatch."""
    f = ckpt_path / MODEL_FILE
    try:
        tensors = load_file(f)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{f}: unreadable safetensors ({err})") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    shapes = [f"{k}: {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "", f"shape mismatch {shapes[:5]}" if shapes else ""]
        raise CheckpointError(f"{f}: does not fit this model ({'; '.join(p for p in parts if p)})")
    model.load_state_dict(tensors)


def load_optim_state(ckpt_path: Path) -> Any:
    """The optimiser state, unpickled with ``weights_only=True``: code objects in the file are refused, never run."""
    f = ckpt_path / OPTIM_FILE
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]  # torch's reason is the line after its preamble
        reason = next((ln for ln in lines if "unsupported" in ln.lower()), lines[0] if lines else "")
        raise CheckpointError(f"{f}: refused to unpickle (not plain tensors: {reason.strip()})") from None
    except Exception as err:  # torch raises several types for bad archives
        raise CheckpointError(f"{f}: unreadable optimiser state ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None

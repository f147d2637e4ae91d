"""Untrusted files: a malicious pickle planted in a checkpoint or a sweep is refused and never executed."""

import hashlib
import json
import os
import pickle

import pytest
import torch
from fault_helpers import tiny, tiny_overrides
from typer.testing import CliRunner

from archlab.checkpoint import CheckpointError, load_model_weights, load_optim_state, read_checkpoint
from archlab.cli import app
from archlab.model.lm import LM
from archlab.train import train


class Payload:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    """(marker path, raw pickle bytes, torch.save zip bytes) of a payload proven to work when unpickled."""
    marker = tmp_path / "PWNED"
    raw = pickle.dumps(Payload(marker))
    pickle.loads(raw)  # the payload is live: plain unpickling does create the file
    assert marker.exists()
    marker.unlink()
    torch.save(Payload(marker), tmp_path / "evil.pt")
    return marker, raw, (tmp_path / "evil.pt").read_bytes()


def plant(ckpt_dir, name, data):
    """Replace a checkpoint file and fix up its checksum, as an attacker who controls the folder would."""
    (ckpt_dir / name).write_bytes(data)
    state = json.loads((ckpt_dir / "state.json").read_text())
    state["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt_dir / "state.json").write_text(json.dumps(state))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_in_a_checkpoint_are_refused_not_run(tmp_path, evil):
    marker, raw, zipped = evil
    run = tiny(tmp_path, "run", "train.steps=2")
    step = train(run).run_dir / "step_2"
    model = LM(run.model.model_copy(update={"vocab_size": 256}))
    for data in (raw, zipped):
        plant(step, "optim.pt", data)
        read_checkpoint(step)  # checksums fixed up: only the loader stands in the way
        with pytest.raises(CheckpointError, match=r"step_2/optim.pt: (refused to unpickle|unreadable optimiser state)"):
            load_optim_state(step)
        plant(step, "model.safetensors", data)
        with pytest.raises(CheckpointError, match=r"step_2/model.safetensors: unreadable safetensors"):
            load_model_weights(model, step)
    result = CliRunner().invoke(app, ["train", *tiny_overrides(tmp_path, "run", "train.steps=3")])
    assert result.exit_code == 2 and "step_2/model.safetensors: unreadable safetensors" in result.output
    assert not marker.exists()


def test_a_pickle_posing_as_results_is_not_run(tmp_path, evil):
    marker, raw, _ = evil
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.sqlite").write_bytes(raw)
    result = CliRunner().invoke(app, ["report", str(sweep)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {sweep}/results.sqlite")
    assert not marker.exists()

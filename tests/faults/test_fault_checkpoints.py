"""Damaged or foreign checkpoints: clear errors naming file and problem; auto-resume falls back; disk-full writes."""

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
from fault_helpers import assert_same_weights, final_weights, losses, tiny, tiny_overrides
from typer.testing import CliRunner

import archlab.checkpoint as ckpt
from archlab.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from archlab.cli import app
from archlab.train import train

RUN = ["train.steps=8", "train.ckpt_every=2", "train.keep_last=3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run stopped after 6 of 8 steps (checkpoints step_2, step_4, step_6) to copy and damage."""
    out = tmp_path_factory.mktemp("ref")
    return train(tiny(out, "ref", *RUN), stop_after=6).run_dir


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same 8 steps uninterrupted: (losses, final weights)."""
    res = train(tiny(tmp_path_factory.mktemp("straight"), "straight", *RUN))
    return losses(res.run_dir), final_weights(res.run_dir)


def damaged_copy(reference, tmp_path, damage, step=6):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    damage(run_dir / f"step_{step}")
    return run_dir


def truncate(f, n=100):
    f.write_bytes(f.read_bytes()[:n])


def flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x01
    f.write_bytes(bytes(data))


def set_state(d, **kv):
    state = json.loads((d / "state.json").read_text())
    (d / "state.json").write_text(json.dumps({**state, **kv}))


DAMAGES = [
    ("truncated safetensors", lambda d: truncate(d / "model.safetensors"), "step_6/model.safetensors: truncated or resized (100 bytes"),
    ("flipped byte in optimiser state", lambda d: flip(d / "optim.pt"), "step_6/optim.pt: checksum mismatch"),
    ("missing state.json", lambda d: (d / "state.json").unlink(), "step_6/state.json: missing"),
    ("state.json cut short", lambda d: truncate(d / "state.json", 40), "step_6/state.json: not valid JSON"),
    ("state.json without checksums", lambda d: set_state(d, files={}), "step_6/state.json: malformed"),
    ("wrong schema version", lambda d: set_state(d, schema_version=2), "step_6/state.json: schema version 2, this archlab reads version 1"),
    ("missing weights", lambda d: (d / "model.safetensors").unlink(), "step_6/model.safetensors: missing"),
]


@pytest.mark.parametrize("damage,expected", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_damage_is_named_and_auto_resume_falls_back(reference, straight, tmp_path, caplog, damage, expected):
    run_dir = damaged_copy(reference, tmp_path, damage)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(run_dir / "step_6")
    assert expected in str(err.value) and "\n" not in str(err.value)
    # auto-resume: skips step_6, says so, resumes from step_4, and the result is exact
    with caplog.at_level(logging.WARNING, logger="archlab.train"):
        train(tiny(tmp_path, "run", *RUN))
    assert f"skipping damaged checkpoint: {run_dir}/{expected}" in caplog.text
    assert f"falling back to {run_dir}/step_4" in caplog.text
    assert losses(run_dir) == straight[0]
    assert_same_weights(final_weights(run_dir), straight[1])


def test_explicit_resume_of_a_damaged_checkpoint_exits_2_naming_it(reference, tmp_path):
    run_dir = damaged_copy(reference, tmp_path, lambda d: flip(d / "model.safetensors"))
    result = CliRunner().invoke(app, ["train", *tiny_overrides(tmp_path, "other", *RUN), "--resume", str(run_dir / "step_6")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {run_dir}/step_6/model.safetensors: checksum mismatch (corrupted bytes)"
    assert not (tmp_path / "other").exists()


def test_checkpoint_of_another_architecture_is_refused(reference, tmp_path):
    args = ["train", *tiny_overrides(tmp_path, "wide", *RUN, "model.d_model=64", "model.canon=AC")]
    result = CliRunner().invoke(app, [*args, "--resume", str(reference / "step_4")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"{reference}/step_4/state.json: checkpoint was trained with a different config" in result.output
    assert "model.canon: '' -> 'AC'; model.d_model: 32 -> 64" in result.output
    # the same architecture in a run directory whose config.yaml was lost is still checked against state.json
    run_dir = damaged_copy(reference, tmp_path, lambda d: None)
    (run_dir / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"step_6/state.json: checkpoint was trained with a different config \(model.n_layers: 2 -> 3"):
        train(tiny(tmp_path, "run", *RUN, "model.n_layers=3"))


def _fail_writing(target, real):
    """A stand-in for ``real`` that writes part of its file, then fails as a full disk does."""

    def broken(*args, **kwargs):
        path = next(a for a in args if isinstance(a, Path))  # save_file(obj, path), write_json_atomic(path, obj)
        if path.name == target:
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return broken


@pytest.mark.parametrize("target,attr", [("model.safetensors", "save_file"), ("optim.pt", "torch.save"), ("state.json", "write_json_atomic")])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, straight, monkeypatch, target, attr):
    train(tiny(tmp_path, "run", *RUN), stop_after=4)  # step_2, step_4 on disk
    before = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(tmp_path / "run")}
    if attr == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", _fail_writing(target, ckpt.torch.save))
    else:
        monkeypatch.setattr(ckpt, attr, _fail_writing(target, getattr(ckpt, attr)))
    with pytest.raises(CheckpointError) as err:
        train(tiny(tmp_path, "run", *RUN))
    run_dir = tmp_path / "run"
    assert str(err.value) == (f"{run_dir}/.tmp_step_6/{target}: cannot write checkpoint (No space left on device); "
                              "existing checkpoints left untouched: ['step_2', 'step_4']")
    assert {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(run_dir)} == before
    assert read_checkpoint(run_dir / "step_4").step == 4 and not list(run_dir.glob(".tmp_step_*"))
    monkeypatch.undo()  # disk freed: the run resumes from step_4 and matches an uninterrupted one
    train(tiny(tmp_path, "run", *RUN))
    assert losses(run_dir) == straight[0]


def test_unwritable_run_dir_exits_2(tmp_path):
    (tmp_path / "blocker").write_text("a file where the run directory's parent should be")
    result = CliRunner().invoke(app, ["train", *tiny_overrides(tmp_path / "blocker", "run", "train.steps=1")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "blocker" in result.output and len(result.output.strip().splitlines()) == 1

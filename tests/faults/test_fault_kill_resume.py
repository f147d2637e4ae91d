"""kill -9 of a real ``archlab train`` process at chosen points, then resume: bit-identical to an uninterrupted run."""

import pytest
from fault_helpers import assert_same_weights, final_weights, kill_at, losses, tiny, tiny_overrides

from archlab.checkpoint import list_checkpoints, read_checkpoint
from archlab.train import train

STEPS, EVERY = 8, 2
RUN = [f"train.steps={STEPS}", f"train.ckpt_every={EVERY}", "train.keep_last=1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    res = train(tiny(out, "straight", *RUN))
    return losses(res.run_dir), final_weights(res.run_dir)


# (pause point, checkpoints that must exist while frozen, temporary folder expected)
KILL_POINTS = [
    ("step:5", ["step_4"], None),  # mid-step: gradients computed, update not applied
    ("model:2", ["step_2"], ".tmp_step_4"),  # mid-checkpoint: only model.safetensors written
    ("state:3", ["step_4"], ".tmp_step_6"),  # checkpoint complete in its temporary folder, not renamed
    ("rename:2", ["step_2", "step_4"], None),  # renamed, the older one not yet pruned (keep_last=1)
]


@pytest.mark.parametrize("pause,present,tmp_dir", KILL_POINTS, ids=[p for p, _, _ in KILL_POINTS])
def test_kill_then_resume_is_bit_identical(tmp_path, straight, pause, present, tmp_dir):
    kill_at(pause, tiny_overrides(tmp_path, "run", *RUN), tmp_path / "frozen")
    run_dir = tmp_path / "run"
    # the last good checkpoint survives the kill, intact; a half-written one never appears under a real name
    assert [p.name for p in list_checkpoints(run_dir)] == present
    for p in list_checkpoints(run_dir):
        read_checkpoint(p)
    assert (run_dir / tmp_dir).is_dir() if tmp_dir else not list(run_dir.glob(".tmp_step_*"))
    train(tiny(tmp_path, "run", *RUN))  # resume auto, in this process
    assert losses(run_dir) == straight[0]
    assert_same_weights(final_weights(run_dir), straight[1])
    assert [p.name for p in list_checkpoints(run_dir)] == [f"step_{STEPS}"] and not list(run_dir.glob(".tmp_step_*"))

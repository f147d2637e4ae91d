"""Injected NaN/Inf in the loss or in one parameter's gradient: policy stop or skip, culprit named, no NaN checkpoint."""

import json
import logging

import pytest
import torch
from fault_helpers import losses, tiny

from archlab.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from archlab.model.lm import LM
from archlab.optim import Optimizers
from archlab.train import TrainingDiverged, train

RUN = ["train.steps=8", "train.ckpt_every=2"]
TARGET = "blocks.1.mlp.w_in.weight"


def poison(monkeypatch, bad_calls, where="loss", value=float("nan")):
    """From LM.loss, on its calls number ``bad_calls`` (1-based = step + 1): make the loss, or TARGET's gradient,
    non-finite. Returns {call: parameters before that step's update} for checks on skipped updates."""
    real = LM.loss
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def loss(self, *a, **k):
        call = len(seen) + 1
        seen[call] = {n: p.detach().clone() for n, p in self.named_parameters()}
        out = real(self, *a, **k)
        if call not in bad_calls:
            return out
        if where == "loss":
            return out * value
        param = dict(self.named_parameters())[TARGET]
        handle = param.register_hook(lambda g: (handle.remove(), g * value)[1])
        return out

    monkeypatch.setattr(LM, "loss", loss)
    return seen


def test_policy_stop_names_step_and_parameter(tmp_path, monkeypatch):
    poison(monkeypatch, {6}, where="grad", value=float("inf"))
    with pytest.raises(TrainingDiverged) as err:
        train(tiny(tmp_path, "stop", *RUN))
    msg = str(err.value)
    assert msg.startswith("step 5: loss=") and "grad_norm=inf is not finite" in msg
    assert f"NaN/Inf gradients in {TARGET} (group adamw_decay);" in msg  # only the poisoned one
    assert [p.name for p in list_checkpoints(tmp_path / "stop")] == ["step_2", "step_4"]


def test_nan_loss_stops_naming_the_parameters(tmp_path, monkeypatch):
    poison(monkeypatch, {3})
    with pytest.raises(TrainingDiverged, match=r"step 2: loss=nan grad_norm=nan is not finite; NaN/Inf gradients in embed.weight "
                                                r"\(group adamw_decay\), .* and \d+ more; training stopped"):
        train(tiny(tmp_path, "nanloss", *RUN))


def test_policy_skip_drops_updates_up_to_the_limit(tmp_path, monkeypatch, caplog):
    seen = poison(monkeypatch, {3, 6}, where="grad")
    with caplog.at_level(logging.WARNING, logger="archlab.train"):
        res = train(tiny(tmp_path, "skip", *RUN, "train.nonfinite=skip", "train.max_skipped_steps=2"))
    assert res.steps == 8
    assert "step 2: loss=" in caplog.text and f"NaN/Inf gradients in {TARGET} (group adamw_decay); update skipped (1 of at most 2)" in caplog.text
    assert "step 5: " in caplog.text and "update skipped (2 of at most 2)" in caplog.text
    for call in (3, 6):  # the skipped step left every parameter bit-identical
        assert all(torch.equal(seen[call][n], seen[call + 1][n]) for n in seen[call])
    assert not torch.equal(seen[4]["embed.weight"], seen[5]["embed.weight"])  # a normal step does move them
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert read_checkpoint(list_checkpoints(res.run_dir)[-1]).state["skipped_steps"] == 2
    assert all(torch.isfinite(torch.tensor(losses(res.run_dir)[i])) for i in (0, 1, 3, 4, 6, 7))


def test_policy_skip_stops_past_the_limit_counting_across_resume(tmp_path, monkeypatch):
    run = tiny(tmp_path, "limit", *RUN, "train.nonfinite=skip", "train.max_skipped_steps=1")
    poison(monkeypatch, {2})
    train(run, stop_after=4)  # one skip used, saved in step_4
    monkeypatch.undo()
    poison(monkeypatch, {2})  # the resumed process's 2nd step = step 5
    with pytest.raises(TrainingDiverged, match=r"step 5: .* training stopped after 1 skipped steps \(train.max_skipped_steps=1\)"):
        train(run)
    assert [p.name for p in list_checkpoints(tmp_path / "limit")] == ["step_2", "step_4"]


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    real_step = Optimizers.step
    calls = {"n": 0}

    def step(self):  # an update that itself produces NaN (finite gradients) on the 4th step
        real_step(self)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.clip_params[0].view(-1)[0] = float("nan")

    monkeypatch.setattr(Optimizers, "step", step)
    with pytest.raises(CheckpointError, match=r"step_4: refusing to save non-finite weights \(embed.weight\)"):
        train(tiny(tmp_path, "nanw", *RUN))
    assert [p.name for p in list_checkpoints(tmp_path / "nanw")] == ["step_2"]
    assert not list((tmp_path / "nanw").glob(".tmp_step_*"))

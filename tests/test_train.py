"""Training loop: learning, exact resume, accumulation, NaN guard, checkpoint integrity."""

import json
import os
import subprocess
import sys

import pytest
import torch

from archlab.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from archlab.config import load_config
from archlab.model.lm import LM
from archlab.train import TrainingDiverged, read_metrics, train

TINY = [
    "model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "train.seq_len=32",
    "train.batch_size=4", "train.log_every=1", "optim.lr=3e-3", "optim.warmup_steps=2", "train.eval_batches=1",
]


def cfg(tmp_path, *extra: str):
    return load_config(None, TINY + [f"out_dir={tmp_path}"] + list(extra))


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir)]


def test_loss_falls_on_text(tmp_path):
    res = train(cfg(tmp_path, "train.steps=60", "name=a", "model.canon=ABCD", "train.batch_size=8"))
    ls = losses(res.run_dir)
    assert ls[0] > 5.0  # ~ln(256) at init
    assert sum(ls[-5:]) / 5 < 3.5
    saved = json.loads((res.run_dir / "run.json").read_text())
    assert saved["n_params"] > 0 and "torch" in saved["packages"] and (res.run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_resume_is_bit_exact(tmp_path, opt):
    straight = train(cfg(tmp_path, "train.steps=10", "name=straight", f"optim.name={opt}", "optim.schedule=wsd"))
    part = cfg(tmp_path, "train.steps=10", "name=resumed", f"optim.name={opt}", "optim.schedule=wsd")
    train(part, stop_after=4)  # as if killed right after the step-4 checkpoint
    assert [c.name for c in list_checkpoints(tmp_path / "resumed")] == ["step_4"]
    train(part)  # resume auto
    assert losses(tmp_path / "resumed") == losses(straight.run_dir)
    assert len(losses(straight.run_dir)) == 10


def test_resume_in_a_fresh_process_is_bit_exact(tmp_path):
    straight = train(cfg(tmp_path, "train.steps=8", "name=straight"))
    part = cfg(tmp_path, "train.steps=8", "name=resumed")
    train(part, stop_after=3)
    cmd = [sys.executable, "-m", "archlab.cli", "train", *TINY, f"out_dir={tmp_path}", "train.steps=8", "name=resumed"]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "1"})
    assert losses(tmp_path / "resumed") == losses(straight.run_dir)


def test_grad_accumulation_equals_big_batch(tmp_path):
    big = train(cfg(tmp_path, "train.steps=3", "name=big", "train.batch_size=8"))
    acc = train(cfg(tmp_path, "train.steps=3", "name=acc", "train.batch_size=8", "train.grad_accum=4"))
    assert losses(acc.run_dir) == pytest.approx(losses(big.run_dir), rel=1e-5)


def test_nan_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run = cfg(tmp_path, "train.steps=10", "train.ckpt_every=3", "name=nan")
    real_loss = LM.loss
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real_loss(self, *a, **k)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(LM, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 4: loss=nan"):
        train(run)
    ckpts = list_checkpoints(tmp_path / "nan")
    assert [c.name for c in ckpts] == ["step_3"]
    assert read_checkpoint(ckpts[0]).step == 3


def test_damaged_checkpoints_are_detected_and_skipped(tmp_path, caplog):
    run = cfg(tmp_path, "train.steps=6", "train.ckpt_every=3", "train.keep_last=3", "name=dmg")
    train(run)
    newest = tmp_path / "dmg" / "step_6"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="step_6/model.safetensors: checksum mismatch"):
        read_checkpoint(newest)
    (tmp_path / "dmg" / "step_3" / "optim.pt").write_bytes(b"trunc")
    with pytest.raises(CheckpointError, match="step_3/optim.pt: truncated"):
        read_checkpoint(tmp_path / "dmg" / "step_3")
    state = json.loads((newest / "state.json").read_text())
    state["schema_version"] = 99
    (newest / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="schema version 99"):
        read_checkpoint(newest)
    # resuming with more steps falls back past the damaged step_6 and step_3 to ... none intact: starts over
    longer = cfg(tmp_path, "train.steps=7", "train.ckpt_every=3", "train.keep_last=3", "name=dmg")
    res = train(longer)
    assert res.steps == 7 and "skipping damaged checkpoint" in caplog.text


def test_incompatible_run_dir_is_refused(tmp_path):
    train(cfg(tmp_path, "train.steps=2", "name=x"))
    with pytest.raises(CheckpointError, match="different config"):
        train(cfg(tmp_path, "train.steps=4", "name=x", "model.d_model=64"))


def test_muon_takes_only_hidden_matrices(tmp_path):
    from archlab.optim import build_optimizers

    run = cfg(tmp_path, "optim.name=muon", "model.canon=ABCD")
    model = LM(run.model.model_copy(update={"vocab_size": 256}))
    opt = build_optimizers(model, run.optim)
    adamw, muon = opt.optimizers
    assert isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")}
    decayed = {names[id(p)] for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"embed.weight", "head.weight"}  # norms and Canon kernels: no decay, no Muon


def test_eval_task_records_task_metrics_during_training_without_changing_it(tmp_path):
    depo = ["data.name=depo", "data.n_max=4", "data.k_max=2", "data.name_max_len=1", "data.mini_vocab=8", "train.steps=4",
            "train.eval_every=2", "train.seq_len=64"]
    plain = train(cfg(tmp_path, *depo, "name=plain"))
    traced = train(cfg(tmp_path, *depo, "name=traced", "train.eval_task=true"))
    assert losses(traced.run_dir) == losses(plain.run_dir)  # evaluating does not perturb training
    records = read_metrics(traced.run_dir)
    task = next(r["task"] for r in records if r["step"] == 2)
    assert set(task) >= {"acc", "acc_k1", "acc_k2"} and 0.0 <= task["acc_k1"] <= 1.0
    assert all("task" not in r for r in read_metrics(plain.run_dir))
    assert "task" not in records[-1]  # the final step's metrics are eval.json's

"""The retrofitted-recurrence claim pipeline on tiny models: every stage runs, the static runs match the healing
FLOPs, the report has the verdict and the r sweep, and a second invocation runs nothing."""

import json

import pytest
import yaml

from archlab.config import load_config
from archlab.reproduce import run_claim
from archlab.reproduce.recurrence import training_flops

pytest.importorskip("transformers")  # the pipeline exports an HF Llama directory before the surgery

MODEL = {"d_model": 32, "mixer": {"name": "attention", "n_heads": 2, "n_kv_heads": 1}}
TRAIN = {"batch_size": 4, "seq_len": 32, "eval_batches": 1, "log_every": 1, "threads": 1}
RECIPES = {
    "pre.yaml": {"model": {**MODEL, "n_layers": 4}, "data": {"name": "text", "max_bytes": 200000},
                 "optim": {"name": "adamw", "lr": 3e-3}, "train": {**TRAIN, "steps": 3}},
    "heal.yaml": {"model": {**MODEL, "n_layers": 3, "recurrence": {"prelude": 1, "core": 1, "coda": 1, "mean_recurrence": 2,
                                                                   "backprop_depth": 2, "curriculum": "1-sqrt"}},
                  "data": {"name": "text", "max_bytes": 200000}, "optim": {"name": "muon", "lr": 3e-4}, "train": {**TRAIN, "steps": 2}},
    "static.yaml": {"model": {**MODEL, "n_layers": 4}, "data": {"name": "text", "max_bytes": 200000},
                    "optim": {"name": "muon", "lr": 3e-4}, "train": {**TRAIN, "steps": 2}},
}
CLAIM = {"title": "Recurrence (fixture)", "paper": {"claim": "Recurrence helps.", "setting": "s", "number": "n"},
         "kind": "recurrence",
         "budgets": {"cpu": {"setting": "tiny", "pretrain": "pre.yaml", "heal": "heal.yaml", "static": "static.yaml",
                             "heal_steps": [2, 3], "lr_key": "optim.muon_lr", "lrs": [1e-3], "seeds": 2, "rs": [1, 2]}}}


def test_recurrence_pipeline_end_to_end(tmp_path):
    claims = tmp_path / "claims"
    claims.mkdir()
    for name, tree in RECIPES.items():
        (claims / name).write_text(yaml.safe_dump(tree))
    (claims / "rec.yaml").write_text(yaml.safe_dump(CLAIM))
    out = tmp_path / "out"
    report = run_claim("rec", "cpu", jobs=2, out=out, claims_dir=claims).read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_done"] == summary["runs_planned"] == 1 + 4 + 4
    # static steps = healing FLOPs (mean over the 2 seeds' r draws) / static FLOPs per step
    per_step = training_flops(load_config(claims / "static.yaml")) / 2
    for h in (2, 3):
        heal = [training_flops(load_config(claims / "heal.yaml", [f"train.steps={h}", f"seed={s}"])) for s in (0, 1)]
        assert summary["matched_steps"][str(h)] == max(1, round(sum(heal) / 2 / per_step))
    assert (out / "retrofit" / "retrofit.json").is_file() and (out / "llama" / "config.json").is_file()
    sweep = json.loads((out / "heal" / "steps=3_muon_lr=0.001_seed=1" / "recurrence_sweep.json").read_text())
    assert [p["r"] for p in sweep] == [1, 2] and sweep[1]["flops_per_token"] > sweep[0]["flops_per_token"]
    line = report.splitlines()[2]
    assert line.startswith("**Recurrence (fixture)** — paper: Recurrence helps. Measured: healed 3 steps vs static")
    assert "| retrofit, not healed |" in report and (out / "loss_vs_r.png").is_file()
    assert run_claim("rec", "cpu", jobs=2, out=out, claims_dir=claims).read_text().splitlines()[2] == line
    assert len((out / "sittings.jsonl").read_text().splitlines()) == 1  # the second sitting ran nothing

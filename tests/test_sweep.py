"""Sweeps: grid x seeds expansion, results table, resumability, failure isolation, report."""

import json
import statistics

import pytest

from archlab.config import ConfigError, load_config
from archlab.report import build_report
from archlab.sweep import SweepPlan, expand, load_results, parse_grid, run_sweep, same_plan
from archlab.train import train

FIXED = ["model.d_model=32", "model.n_layers=1", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=4",
         "train.steps=4", "train.log_every=1", "train.eval_batches=1", "train.ckpt_every=2", "data.max_bytes=200000"]


def test_expand_and_parse():
    grid = parse_grid(["optim.lr=1e-3,3e-3", "model.canon=,ABCD"])
    assert grid == {"optim.lr": [1e-3, 3e-3], "model.canon": ["", "ABCD"]}
    specs = expand(grid, seeds=3)
    assert len(specs) == 12 and len({s.name for s in specs}) == 12
    assert specs[0].name == "lr=0.001_canon=none_seed=0"
    assert specs[-1].overrides == ("optim.lr=0.003", "model.canon=ABCD", "seed=2")
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["optim.lr=1", "optim.lr=2"])


def test_sweep_runs_resumes_and_reports(tmp_path):
    sweep_dir = tmp_path / "sw"
    # one run interrupted earlier: it has a step-2 checkpoint and must resume, not restart
    interrupted = load_config(None, FIXED + ["optim.lr=0.003", "seed=1", f"out_dir={sweep_dir}", "name=lr=0.003_seed=1"])
    train(interrupted, stop_after=2)
    grid = parse_grid(["optim.lr=0.001,0.003"])
    rows = run_sweep(sweep_dir, None, FIXED, grid, seeds=2, jobs=2)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows), [r["error"] for r in rows]
    resumed = json.loads((sweep_dir / "lr=0.003_seed=1" / "run.json").read_text())
    assert resumed["resumed_from_step"] == 2
    assert run_sweep(sweep_dir, None, FIXED, grid, seeds=2, jobs=2) == []  # everything done: skipped
    with pytest.raises(ConfigError, match="different settings"):
        run_sweep(sweep_dir, None, FIXED, parse_grid(["optim.lr=0.01"]), seeds=2, jobs=1)
    with pytest.raises(ConfigError, match="different settings"):  # fewer seeds: not a growth
        run_sweep(sweep_dir, None, FIXED, parse_grid(["optim.lr=0.001,0.003,0.01"]), seeds=1, jobs=1)
    with pytest.raises(ConfigError, match="different settings"):  # other fixed overrides: not a growth
        run_sweep(sweep_dir, None, FIXED + ["model.canon=AB"], parse_grid(["optim.lr=0.001,0.003,0.01"]), seeds=2, jobs=1)

    results = load_results(sweep_dir)
    assert {r["name"] for r in results} == {s.name for s in expand(grid, 2)}
    for r in results:
        ev = json.loads((sweep_dir / r["name"] / "eval.json").read_text())
        assert r["val_loss"] == ev["loss"] and r["tokens"] == 4 * 4 * 32
    report = build_report(sweep_dir).read_text()
    best_lr = min((0.001, 0.003), key=lambda lr: statistics.fmean(r["val_loss"] for r in results if r["params"]["optim.lr"] == lr))
    vals = [r["val_loss"] for r in results if r["params"]["optim.lr"] == best_lr]
    assert f"| all | {best_lr} | 2 | {statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f} |" in report
    assert (sweep_dir / "loss_curves.png").stat().st_size > 1000 and (sweep_dir / "metric_vs_lr.png").is_file()

    # a grown grid (the best LR at the edge: one more LR) runs only the new runs and keeps the finished ones
    grown = run_sweep(sweep_dir, None, FIXED, parse_grid(["optim.lr=0.0003,0.001,0.003"]), seeds=2, jobs=2)
    assert sorted(r["name"] for r in grown) == ["lr=0.0003_seed=0", "lr=0.0003_seed=1"]
    assert {r["name"]: r["val_loss"] for r in load_results(sweep_dir) if r["params"]["optim.lr"] != 0.0003} == \
        {r["name"]: r["val_loss"] for r in results}


def test_a_recipe_is_identified_by_its_content_not_its_comments(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# step 1 of the recipe\nseed: 0\noptim:\n  lr: 1.0e-3\n")
    plan = SweepPlan(recipe, [], {"optim.lr": [1e-3]}, 2)
    before = plan.meta()
    recipe.write_text("# stage 1 of the claim, reworded\nseed: 0\noptim: {lr: 0.001}  # same values, other layout\n")
    assert same_plan(before, plan.meta())
    recipe.write_text("seed: 0\noptim:\n  lr: 2.0e-3\n")
    assert not same_plan(before, plan.meta())


def test_failed_run_is_recorded_and_does_not_stop_the_sweep(tmp_path):
    grid = parse_grid(["data.paths=[/does/not/exist],[]"])
    rows = run_sweep(tmp_path / "sw", None, FIXED, grid, seeds=1, jobs=1)
    status = {r["name"]: (r["status"], r["error"]) for r in rows}
    bad = next(v for k, v in status.items() if "exist" in k)
    assert bad[0] == "failed" and "/does/not/exist" in bad[1] and "does not exist" in bad[1]
    assert sum(s == "done" for s, _ in status.values()) == 1


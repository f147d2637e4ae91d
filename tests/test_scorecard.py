"""Scorecard: preset expansion, budget -> steps, matrix assembly from a results store, end-to-end resume."""

import json
import sqlite3

import pytest
import yaml
from typer.testing import CliRunner

from archlab.cli import app
from archlab.config import ConfigError
from archlab.presets import BUDGETS, PAPER_4_1, TaskBudget, preset_archs
from archlab.scorecard import (CELL_JSON, Cell, cell_tree, collect, load_arch, matrix_markdown, merge_model, plan,
                               run_scorecard, write_report)
from archlab.sweep import DB_FILE, open_db, save_row


def test_preset_expansion():
    names = [a.name for a in preset_archs("paper-4.1")]
    assert names == ["rope", "rope-canon", "nope", "nope-canon", "prope", "prope-canon",
                     "gla", "gla-canon", "mamba2", "mamba2-canon", "gdn", "gdn-canon"]
    assert [a.name for a in preset_archs("paper-4.1", ["nope-canon", "gla"])] == ["nope-canon", "gla"]
    with pytest.raises(ConfigError, match="rope-x not in preset"):
        preset_archs("paper-4.1", ["rope-x"])
    tiny = BUDGETS["tiny"]["depo"]
    prope = cell_tree(PAPER_4_1["prope-canon"], "depo", tiny)  # d=64, 4 heads -> head_dim 16 -> rope_dim 4
    assert prope["model"]["mixer"]["rope_dim"] == 4 and prope["model"]["canon"] == "ABCD"
    nope = cell_tree(PAPER_4_1["nope"], "depo", tiny)
    assert nope["model"]["mixer"]["position"] == "nope" and nope["model"]["canon"] == ""
    gla = cell_tree(PAPER_4_1["gla-canon"], "capo", BUDGETS["tiny"]["capo"])
    assert gla["model"]["mixer"]["name"] == "gla" and gla["model"]["canon"] == "ACDb" and gla["model"]["tie_embeddings"]
    mamba = cell_tree(PAPER_4_1["mamba2"], "mano", BUDGETS["paper"]["mano"])  # paper size, own conv1d
    assert (mamba["model"]["d_model"], mamba["model"]["n_layers"], mamba["model"]["canon"]) == (768, 12, "b")
    assert mamba["model"]["mixer"]["n_heads"] == 16  # the architecture's keys win over the budget's
    # a different mixer replaces the section; the same one merges key by key
    assert merge_model({"mixer": {"name": "attention", "position": "rope"}}, {"mixer": {"name": "gla"}}) == {"mixer": {"name": "gla"}}
    assert merge_model({"mixer": {"name": "attention", "n_heads": 4}}, {"mixer": {"position": "nope"}}) == \
        {"mixer": {"name": "attention", "n_heads": 4, "position": "nope"}}


def test_budget_to_steps():
    arch = PAPER_4_1["rope"]
    assert cell_tree(arch, "depo", BUDGETS["tiny"]["depo"])["train"]["steps"] == 300 * 16 * 64 // (16 * 64)
    assert cell_tree(arch, "depo", BUDGETS["paper"]["depo"])["train"]["steps"] == 87_500  # 22.9B tokens / (128 x 2048)
    assert cell_tree(arch, "brevo", BUDGETS["paper"]["brevo"])["train"]["steps"] == 100_000
    assert cell_tree(arch, "lano", BUDGETS["small"]["lano"])["train"]["steps"] == 20_000
    odd = TaskBudget("mano_tiny.yaml", 1000 * 16 * 128 + 5, (1e-3,), 1)  # recipe: batch 16 x 128; remainder dropped
    assert cell_tree(arch, "mano", odd)["train"]["steps"] == 1000
    with pytest.raises(ConfigError, match="less than one step"):
        cell_tree(arch, "mano", TaskBudget("mano_tiny.yaml", 100, (1e-3,), 1))


def test_load_arch_file(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("model: {canon: AC, mixer: {position: nope}}\n")
    assert load_arch(good).name == "mine" and load_arch(good).model["canon"] == "AC"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {}\noptim: {lr: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key.*optim"):
        load_arch(bad)


def _fake_cell(root, arch, task, headline, columns, rows):
    cell_dir = root / arch / task
    cell_dir.mkdir(parents=True)
    cell = Cell(arch, task, [1e-3, 3e-3], 2, 10, 1000, headline, columns, 2e6)
    (cell_dir / CELL_JSON).write_text(json.dumps(cell.__dict__))
    db = open_db(cell_dir)
    for i, (lr, seed, metrics) in enumerate(rows):
        save_row(db, {"name": f"r{i}", "params": json.dumps({"optim.lr": lr, "seed": seed}), "seed": seed,
                      "status": "done" if metrics else "failed", "metrics": json.dumps(metrics or {}),
                      "tokens": 1000 if metrics else None, "wall_time": 30.0})
    db.close()


def test_matrix_from_fake_results(tmp_path):
    _fake_cell(tmp_path, "a", "depo", "acc_k2", ["acc_k2", "acc_k1"], [
        (1e-3, 0, {"acc_k2": 0.5, "acc_k1": 0.9}), (1e-3, 1, {"acc_k2": 0.7, "acc_k1": 0.7}),
        (3e-3, 0, {"acc_k2": 0.4, "acc_k1": 1.0}), (3e-3, 1, {"acc_k2": 0.4, "acc_k1": 1.0})])
    _fake_cell(tmp_path, "a", "capo", "bits_per_param", ["bits_per_param"], [
        (1e-3, 0, {"bits_per_param": 0.25}), (1e-3, 1, None),  # a failed run
        (3e-3, 0, {"bits_per_param": 0.5}), (3e-3, 1, {"bits_per_param": 1.0})])
    _fake_cell(tmp_path, "b", "depo", "acc_k2", ["acc_k2", "acc_k1"], [(1e-3, 0, {"acc_k2": 1.0, "acc_k1": 1.0})])
    results = collect(tmp_path)
    by = {(r.cell.arch, r.cell.task): r for r in results}
    assert by[("a", "depo")].best_lr == 1e-3 and by[("a", "depo")].values == {"acc_k2": [0.5, 0.7], "acc_k1": [0.9, 0.7]}
    assert by[("a", "capo")].best_lr == 3e-3 and (by[("a", "capo")].runs_done, by[("a", "capo")].runs_failed) == (3, 1)
    md = matrix_markdown(results, ["a", "b"])
    assert "| architecture | depo acc_k2 | depo acc_k1 | capo bits_per_param |" in md  # task order, not file order
    assert "| a | 0.600 ± 0.141 | 0.800 ± 0.141 | 0.750 ± 0.354 |" in md
    assert "| b | 1.000 ± 0.000 | 1.000 ± 0.000 | – |" in md
    # compute: 4 runs x 1000 tokens x 2e6 FLOPs/token = 8e9 = 8e-6 PF; 4 x 30 s = 2 min; capo: 3 done, 1 failed
    assert "| a | lr 0.001; 4 runs; 0.0M tok; 8e-06 PF; 2.0 min | lr 0.003; 3 (1) runs; 0.0M tok; 6e-06 PF; 2.0 min |" in md


def test_end_to_end_resumes(tmp_path, monkeypatch):
    small = ("model.d_model=32", "model.n_layers=1", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=4",
             "train.eval_batches=1", "train.eval_every=0", "train.log_every=1", "optim.warmup_steps=0")
    monkeypatch.setitem(BUDGETS, "test", {
        "depo": TaskBudget("depo_tiny.yaml", 3 * 4 * 32, (3e-3,), 1, small),
        "mano": TaskBudget("mano_tiny.yaml", 2 * 4 * 32, (3e-3,), 2, small),
    })
    out = tmp_path / "sc"
    cells = plan([PAPER_4_1["rope-canon"]], "test", ["depo", "mano"], out)
    assert [(c.task, c.steps, c.tokens_per_run) for c, _ in cells] == [("depo", 3, 384), ("mano", 2, 256)]
    first = run_scorecard(cells[:1], jobs=2)  # "interrupted" after the first cell
    assert [r["name"] for r in first] == ["lr=0.003_seed=0"]
    again = plan([PAPER_4_1["rope-canon"]], "test", ["depo", "mano"], out)
    second = run_scorecard(again, jobs=2)  # the finished cell is skipped
    assert sorted(r["name"] for r in second) == ["lr=0.003_seed=0", "lr=0.003_seed=1"]
    assert all(r["status"] == "done" and r["tokens"] == 256 for r in second), [r["error"] for r in second]
    groups = [yaml.safe_load((out / "rope-canon" / "mano" / r["name"] / "config.yaml").read_text())["train"]["group"] for r in second]
    assert groups == ["sc/rope-canon/mano/lr=0.003"] * 2  # the seeds of a cell's LR: one W&B / TensorBoard group
    assert run_scorecard(again, jobs=2) == []
    path = write_report(out, "test")
    md = path.read_text()
    db = sqlite3.connect(out / "rope-canon" / "mano" / DB_FILE)
    vals = [json.loads(m)["acc_l2"] for (m,) in db.execute("SELECT metrics FROM runs ORDER BY name")]
    mean = sum(vals) / 2
    std = (sum((v - mean) ** 2 for v in vals)) ** 0.5  # sample std of 2 values = |a - b| / sqrt(2)
    assert f"{mean:.3f} ± {std:.3f}" in md.splitlines()[6]
    assert (out / "heatmap.png").stat().st_size > 1000 and (out / "task_depo.png").is_file()
    cli = CliRunner()
    shown = cli.invoke(app, ["scorecard", "--preset", "paper-4.1", "--arch", "rope-canon", "--budget", "test",
                             "--task", "depo,mano", "--out", str(out), "--no-run"])
    assert shown.exit_code == 0 and f"{mean:.3f} ± {std:.3f}" in shown.output, shown.output
    bad = cli.invoke(app, ["scorecard", "--arch", "rope", "--out", str(out)])
    assert bad.exit_code == 2 and "give --preset too" in bad.output
    with pytest.raises(ConfigError, match="different recipe"):
        monkeypatch.setitem(BUDGETS["test"], "mano", TaskBudget("mano_tiny.yaml", 3 * 4 * 32, (3e-3,), 2, small))
        plan([PAPER_4_1["rope-canon"]], "test", ["mano"], out)


def test_overrides_reach_every_cell(tmp_path):
    cells = plan([PAPER_4_1["nope-canon"]], "tiny", ["depo", "lano"], tmp_path, ("data.doc_mask=true",))
    for _, cell_dir in cells:
        assert yaml.safe_load((cell_dir / "cell.yaml").read_text())["data"]["doc_mask"] is True
    with pytest.raises(ConfigError, match="different recipe"):
        plan([PAPER_4_1["nope-canon"]], "tiny", ["depo"], tmp_path)

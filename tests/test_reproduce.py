"""archlab reproduce: a tiny claim end to end (runs, report with a verdict, skip on re-run), claim errors, the
analysis rules (best LR needs every seed, stability) on hand-made rows, and every shipped claim file loads."""

import json
import math
import sqlite3

import pytest
import yaml
from typer.testing import CliRunner

from archlab.cli import app
from archlab.config import ConfigError, load_config
from archlab.reproduce import claim_names, load_claim, run_claim
from archlab.reproduce import analysis as an
from archlab.reproduce.claim import Comparison
from archlab.reproduce.claim import REPO
from archlab.reproduce.index import TABLE_BEGIN, TABLE_END, claims_table, with_table
from archlab.stats import t_quantile
from archlab.sweep import SweepPlan, load_results, open_db, save_row

TINY = ["model.d_model=32", "model.n_layers=1", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=4",
        "train.steps=2", "train.log_every=1", "train.eval_batches=1", "data.max_bytes=200000"]
CLAIM = {
    "title": "Canon AB (fixture)",
    "paper": {"claim": "Canon helps.", "setting": "a paper's setting", "number": "a paper's number"},
    "kind": "sweep",
    "budgets": {"cpu": {"setting": "two 2-step runs per arm", "sweeps": {"main": {
        "overrides": TINY, "grid": {"model.canon": ["", "AB"], "optim.lr": [3e-3]}, "seeds": 2}}}},
    "compare": [{"name": "AB vs none", "metric": "val_loss", "higher_is_better": False,
                 "treatment": {"model.canon": "AB"}, "baseline": {"model.canon": ""}}],
    "report": {"stability": True},
}


@pytest.fixture
def claims_dir(tmp_path):
    d = tmp_path / "claims"
    d.mkdir()
    (d / "tiny.yaml").write_text(yaml.safe_dump(CLAIM))
    return d


def _finished(out):
    db = sqlite3.connect(out / "main" / "results.sqlite")
    rows = {name: (val, finished, cpu) for name, val, finished, cpu in db.execute("SELECT name, val_loss, finished, cpu_time FROM runs")}
    db.close()
    return rows


def test_tiny_claim_end_to_end_then_skips_finished_runs(tmp_path, claims_dir):
    out = tmp_path / "results" / "tiny"
    report = run_claim("tiny", "cpu", jobs=2, out=out, claims_dir=claims_dir).read_text()
    rows = _finished(out)
    assert len(rows) == 4 and all(cpu > 0 for _, _, cpu in rows.values())  # the child's own CPU seconds
    line = report.splitlines()[2]
    assert line.startswith("**Canon AB (fixture)** — paper: Canon helps. Measured: AB vs none: val_loss ")
    assert line.endswith(("**Verdict: shown.**", "**Verdict: not shown.**", "**Verdict: contradicted.**"))
    assert (out / "verdict.txt").read_text().strip() == line
    # the effect is the per-seed difference with a t-interval on 1 df
    diffs = [rows[f"canon=AB_lr=0.003_seed={s}"][0] - rows[f"canon=none_lr=0.003_seed={s}"][0] for s in (0, 1)]
    effect = json.loads((out / "summary.json").read_text())["comparisons"][0]["effect"]
    assert effect["diffs"] == pytest.approx(diffs)
    half = t_quantile(0.975, 1) * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)
    assert (effect["lo"], effect["hi"]) == (pytest.approx(sum(diffs) / 2 - half), pytest.approx(sum(diffs) / 2 + half))
    assert "4 of 4 runs finished" in report and (out / "effects.png").stat().st_size > 1000
    assert len((out / "sittings.jsonl").read_text().splitlines()) == 1

    again = run_claim("tiny", "cpu", jobs=2, out=out, claims_dir=claims_dir).read_text()
    assert _finished(out) == rows  # nothing re-ran: same rows, same finish times
    assert len((out / "sittings.jsonl").read_text().splitlines()) == 1  # a sitting that ran nothing is not logged
    assert again.splitlines()[2] == line
    e = effect
    row = claims_table(tmp_path / "results", claims_dir=claims_dir).splitlines()[2]
    assert row.startswith(f"| [tiny](../{out}/report.md) | Canon helps. | a paper's setting a paper's number | two 2-step runs per arm |")
    assert f"AB vs none: {e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}] (n = 2) (4/4 runs)" in row


def test_docs_table_is_the_committed_results(monkeypatch):
    """docs/reproductions.md holds exactly what ``archlab reproduce --table`` makes of the committed summaries."""
    monkeypatch.chdir(REPO)  # the table reads and links results/reproduce/ relative to the repository root
    doc = REPO / "docs" / "reproductions.md"
    table = claims_table()
    assert with_table(doc.read_text(), table) == doc.read_text(), \
        "docs/reproductions.md is stale: run `archlab reproduce --table --update docs/reproductions.md`"
    for name in claim_names():
        assert f"| [{name}](../results/reproduce/{name}/report.md) |" in table and "not run" not in table


def test_table_update_in_a_document(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nintro\n{TABLE_BEGIN}\nold table\n{TABLE_END}\n\nafter\n")
    result = CliRunner().invoke(app, ["reproduce", "--table", "--update", str(doc)])
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert text.startswith(f"# Title\n\nintro\n{TABLE_BEGIN}\n| claim |") and text.endswith(f"|\n{TABLE_END}\n\nafter\n")
    assert "old table" not in text
    assert with_table(text, "x") == f"# Title\n\nintro\n{TABLE_BEGIN}\nx\n{TABLE_END}\n\nafter\n"
    with pytest.raises(ConfigError, match="needs one line"):
        with_table("no markers here", "x", "doc.md")
    result = CliRunner().invoke(app, ["reproduce", "--update", str(doc)])
    assert result.exit_code == 2 and "--update goes with --table" in result.output


def test_unknown_claim_and_bad_claim_files(tmp_path, claims_dir):
    with pytest.raises(ConfigError, match=r"unknown claim 'nope'; known claims: tiny"):
        load_claim("nope", claims_dir)
    bad = {**CLAIM, "compare": [{**CLAIM["compare"][0], "treatment": {"model.canon": "ABCD"}}]}
    (claims_dir / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"treatment: \{'model.canon': 'ABCD'\} matches 0 arms"):
        run_claim("bad", "cpu", out=tmp_path / "bad", claims_dir=claims_dir)
    (claims_dir / "typo.yaml").write_text(yaml.safe_dump({**CLAIM, "comapre": []}))
    with pytest.raises(ConfigError, match="comapre"):
        load_claim("typo", claims_dir)
    with pytest.raises(ConfigError, match="has no budget 'gpu'"):
        run_claim("tiny", "gpu", out=tmp_path / "x", claims_dir=claims_dir)
    result = CliRunner().invoke(app, ["reproduce", "no-such-claim"])
    assert result.exit_code == 2 and "unknown claim 'no-such-claim'" in result.output


@pytest.mark.parametrize("name", claim_names())
def test_shipped_claim_files_validate(name):
    from archlab.reproduce import sweep_claim

    claim = load_claim(name)
    for budget_name in claim.budgets:
        if claim.kind == "sweep":
            for plan in sweep_claim.plans(claim, budget_name).values():
                for spec in plan.specs():
                    plan.config(spec)  # every run's config is valid (unknown keys, bad values)


TEXT_CFG = load_config(None, ["data.max_bytes=200000", "train.seq_len=32", "train.batch_size=4", "train.eval_batches=2"])
TEXT_RUN = TEXT_CFG.to_dict()


def _fake(sweep_dir, runs):
    """runs: (residual, lr, seed, status, val_loss, train losses)."""
    db = open_db(sweep_dir)
    for style, lr, seed, status, val, losses in runs:
        name = f"residual={style}_lr={lr}_seed={seed}"
        (sweep_dir / name).mkdir(parents=True)
        (sweep_dir / name / "config.yaml").write_text(yaml.safe_dump(TEXT_RUN))
        (sweep_dir / name / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate(losses)))
        save_row(db, {"name": name, "params": json.dumps({"model.residual": style, "optim.lr": lr, "seed": seed}), "seed": seed,
                      "status": status, "val_loss": val, "metrics": json.dumps({"loss": val} if val is not None else {})})
    db.close()


def test_best_lr_needs_every_seed_and_stability_rules(tmp_path):
    plan = SweepPlan(None, [], {"model.residual": ["pre", "keel", "post"], "optim.lr": [0.01, 0.1]}, 3)
    runs = []
    for seed in range(3):
        runs += [("pre", 0.01, seed, "done", 2.5 + 0.01 * seed, [5.5, 3.0, 2.5]),
                 ("keel", 0.01, seed, "done", 2.0 + 0.02 * seed, [5.5, 2.5, 2.0])]
        # keel at 0.1 is better on the seeds that finish, but seed 2 diverged: 0.1 is not eligible
        runs.append(("keel", 0.1, seed, "failed" if seed == 2 else "done", None if seed == 2 else 1.5, [5.5, 2.0, 1.5]))
        # pre at 0.1 finished, but blew up late (val 4.3 > lowest train loss 2.6 + 0.5): unstable
        runs.append(("pre", 0.1, seed, "done", 4.3, [5.5, 2.6, 4.0]))
        # post at 0.1 ends just above the unigram entropy of its val bytes: a collapsed, context-free model
        runs.append(("post", 0.1, seed, "done", an.unigram_entropy(TEXT_CFG) + 0.01, [5.5, 3.3, 3.2]))
    _fake(tmp_path, runs)
    rows = load_results(tmp_path)
    c = Comparison(name="keel vs pre", metric="val_loss", higher_is_better=False, treatment={"model.residual": "keel"},
                   baseline={"model.residual": "pre"})
    res = an.compare(c, plan, rows, "optim.lr")
    assert (res.treatment_lr, res.baseline_lr) == (0.01, 0.01)
    assert (res.treatment_edge, res.baseline_edge) == ("lowest", "lowest")  # the optimum may lie below the grid
    assert [an.grid_edge(lr, [1e-3, 3e-3, 1e-2]) for lr in (1e-3, 3e-3, 1e-2)] == ["lowest", None, "highest"]
    assert an.grid_edge(3e-3, [3e-3]) is None  # a single LR has no edge to report
    assert res.effect.diffs == pytest.approx((-0.5, -0.49, -0.48)) and res.verdict == "shown"
    assert res.per_lr[1][1].diffs == pytest.approx((1.5 - 4.3, 1.5 - 4.3))  # common LR 0.1: the 2 paired seeds
    table = an.stability(rows, "optim.lr", tmp_path, 3)
    assert table[(("model.residual", "pre"),)] == {0.01: 3, 0.1: 0}
    assert table[(("model.residual", "keel"),)] == {0.01: 3, 0.1: 2}
    assert table[(("model.residual", "post"),)] == {0.1: 0}
    assert 2.5 < an.unigram_entropy(TEXT_CFG) < math.log(257)  # bytes of Python source: far below a uniform guess
    assert an.max_stable_lr(table[(("model.residual", "keel"),)], 3) == 0.01
    with pytest.raises(ConfigError, match="matches 2 arms"):
        an.find_arm(an.planned_arms(SweepPlan(None, [], {"a": [1, 2], "b": [1, 2]}, 1), "optim.lr"), {"a": 1}, "x")


def test_report_sections_from_hand_made_runs(tmp_path):
    """Per-depth table, first-block gradient and task metrics during training, from a fake sweep directory."""
    from archlab.reproduce.claim import Claim
    from archlab.reproduce.sweep_claim import write_report

    grid = {"model.n_layers": [2, 8], "model.canon": ["", "AB"], "optim.lr": [0.01]}
    claim = Claim.model_validate({
        **CLAIM, "name": "fake", "path": tmp_path / "fake.yaml",
        "budgets": {"cpu": {"setting": "fake", "sweeps": {"main": {"grid": grid, "seeds": 2}}}},
        "compare": [{"name": "AB vs none at 8", "metric": "acc", "higher_is_better": True, "treatment": {"model.canon": "AB"},
                     "baseline": {"model.canon": ""}, "at": {"model.n_layers": 8}}],
        "report": {"by": "model.n_layers", "first_block_grad": True, "curves": ["acc"], "acquired": 0.5}})
    sweep = tmp_path / "out" / "main"
    sweep.mkdir(parents=True)
    db = open_db(sweep)
    for layers in (2, 8):
        for canon in ("", "AB"):
            for seed in (0, 1):
                acc = (0.9 if canon else 0.2) + 0.01 * seed + (0.0 if layers == 8 else -0.1)
                name = f"n_layers={layers}_canon={canon or 'none'}_lr=0.01_seed={seed}"
                (sweep / name).mkdir()
                recs = [{"step": 10, "loss": 2.0, "task": {"acc": acc / 2}, "norms": {"grad_norm": [0.5 + seed, 1.0]}},
                        {"step": 20, "loss": 1.0, "norms": {"grad_norm": [0.25 + seed, 1.0]}}]
                (sweep / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
                (sweep / name / "eval.json").write_text(json.dumps({"acc": acc}))
                save_row(db, {"name": name, "params": json.dumps({"model.n_layers": layers, "model.canon": canon, "optim.lr": 0.01, "seed": seed}),
                              "seed": seed, "status": "done", "val_loss": 1.0, "metrics": json.dumps({"acc": acc}), "cpu_time": 30.0})
    db.close()
    report = write_report(claim, "cpu", tmp_path / "out", {"main": claim.budgets["cpu"].sweeps["main"].plan(claim.path)}, 2).read_text()
    assert "Verdict: shown" in report.splitlines()[2] and "4.0 CPU-minutes" in report
    assert "| canon=∅ | 0.1050 ± 0.0071 (lr 0.01) | 0.2050 ± 0.0071 (lr 0.01) |" in report  # acc at n_layers 2 and 8
    assert "| n_layers=8, canon=AB | 7.50e-01 |" in report  # block 0 at the last step: (0.25 + 1.25) / 2
    # during training: AB at 8 layers has 0.455 at step 10 (< 0.5) and 0.905 at step 20; none never reaches 0.5
    assert "| n_layers=8, canon=AB | 0.01 | 0.9050 ± 0.0071 | 20 |" in report
    assert "| n_layers=8, canon=∅ | 0.01 | 0.2050 ± 0.0071 | not reached |" in report
    assert (tmp_path / "out" / "task_metrics.png").is_file() and (tmp_path / "out" / "by_n_layers.png").is_file()

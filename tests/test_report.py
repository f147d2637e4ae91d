"""Report sections from a hand-made results table: paired comparisons by key, the stability table."""

import json

from archlab.report import build_report
from archlab.sweep import open_db, save_row


def fake_sweep(tmp_path, rows):
    """rows: (params, seed, status, val_loss, first_train_loss)."""
    db = open_db(tmp_path)
    for params, seed, status, val, first in rows:
        name = "_".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()) + f"_seed={seed}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": first}) + "\n")
        save_row(db, {"name": name, "params": json.dumps({**params, "seed": seed}), "seed": seed, "status": status,
                      "val_loss": val, "metrics": json.dumps({"loss": val} if val is not None else {})})
    db.close()


def test_paired_comparison_by_key_pairs_within_each_optimiser(tmp_path):
    rows = []
    for opt, gain in (("adamw", -0.01), ("muon", -0.05)):
        for seed in range(3):
            base = 2.0 + 0.1 * seed + (0.3 if opt == "muon" else 0.0)
            rows.append(({"optim.name": opt, "model.multipliers": "none"}, seed, "done", base, 5.5))
            rows.append(({"optim.name": opt, "model.multipliers": "vector"}, seed, "done", base + gain * (1 + seed), 5.5))
    fake_sweep(tmp_path, rows)
    report = build_report(tmp_path, compare_key="model.multipliers").read_text()
    assert "| name=adamw, multipliers=vector | name=adamw, multipliers=none | -0.0200 | 3 | 0.250 |" in report
    assert "| name=muon, multipliers=vector | name=muon, multipliers=none | -0.1000 | 3 | 0.250 |" in report
    assert "Stability" not in report  # no lr key swept


def test_stability_table_counts_diverged_and_failed_seeds(tmp_path):
    rows = []
    for style in ("pre", "keel"):
        for lr in (0.001, 0.01):
            for seed in range(2):
                unstable = style == "pre" and lr == 0.01 and seed == 1
                rows.append(({"model.residual": style, "optim.lr": lr}, seed, "failed" if unstable else "done",
                             None if unstable else 3.0, 5.5))
    rows.append(({"model.residual": "keel", "optim.lr": 0.1}, 0, "done", 6.0, 5.5))  # finished but loss went up
    fake_sweep(tmp_path, rows)
    report = build_report(tmp_path).read_text()
    assert "| residual=keel | 2/2 | 2/2 | 0/1 | 0.01 |" in report
    assert "| residual=pre | 2/2 | 1/2 | – | 0.001 |" in report

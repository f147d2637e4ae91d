"""Sweep files, scheduler command emission + collect, the Ray backend's dispatch, and kill -9 of a whole sweep."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from archlab.config import ConfigError, load_config
from archlab.sweep import SweepPlan, collect, emit_commands, expand, load_results, load_sweep_file, run_plan
from archlab.train import read_metrics, train

# DEPO, 1 layer: a run takes a second or two; the sweep machinery is what is tested here.
TINY = ["data.name=depo", "data.n_max=4", "data.k_max=1", "data.mini_vocab=8", "data.name_max_len=1",
        "model.d_model=32", "model.n_layers=1", "model.mixer.n_heads=2", "train.seq_len=64", "train.batch_size=4",
        "train.eval_batches=1", "train.log_every=1"]


def test_sweep_file_is_loaded_and_validated(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {d_model: 32}\n")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("base: r.yaml\noverrides: [train.steps=3]\ngrid:\n  optim.lr: [1.0e-3, 3.0e-3]\n"
                          "  model.canon: ['', ABCD]\nseeds: 2\nreport: {metric: acc_k1, higher_is_better: true}\n")
    plan = load_sweep_file(sweep_file)
    assert plan.base == recipe and plan.overrides == ["train.steps=3"] and plan.seeds == 2
    assert plan.grid == {"optim.lr": [1e-3, 3e-3], "model.canon": ["", "ABCD"]}
    assert plan.report == {"metric": "acc_k1", "higher_is_better": True}
    specs = plan.specs()
    assert len(specs) == 8 and plan.config(specs[-1]).model.canon == "ABCD" and plan.config(specs[0]).model.d_model == 32
    sweep_file.write_text("grid: {optim.lr: [1]}\nseedz: 2\n")
    with pytest.raises(ConfigError, match="seedz"):
        load_sweep_file(sweep_file)
    sweep_file.write_text("grid: {optim.lr: []}\n")
    with pytest.raises(ConfigError, match="non-empty"):
        load_sweep_file(sweep_file)


def test_emitted_commands_run_and_are_collected(tmp_path):
    plan = SweepPlan(None, [*TINY, "train.steps=2"], {"optim.lr": [1e-3, 3e-3]}, seeds=1)
    sweep_dir = tmp_path / "sw"
    lines = emit_commands(sweep_dir, plan, threads=1)
    assert len(lines) == 2 and (sweep_dir / "commands.sh").read_text().count("archlab.cli train") == 2
    assert "name=lr=0.001_seed=0" in lines[0] and f"out_dir={sweep_dir}" in lines[0]
    subprocess.run(["bash", "-e", str(sweep_dir / "commands.sh")], check=True, timeout=240)
    rows, missing = collect(sweep_dir, plan)
    assert missing == [] and {r["name"] for r in rows} == {s.name for s in plan.specs()}
    for r in load_results(sweep_dir):
        ev = json.loads((sweep_dir / r["name"] / "eval.json").read_text())
        assert r["status"] == "done" and r["val_loss"] == ev["loss"] and r["tokens"] == 2 * 4 * 64
    assert collect(sweep_dir, plan) == ([], [])  # nothing new
    torchrun = emit_commands(tmp_path / "sw2", plan, nproc=2)
    assert all(" -m archlab.cli train" in ln and "torchrun --standalone --nproc_per_node=2" in ln for ln in torchrun)


def test_ray_backend_dispatches_every_run_through_ray(tmp_path, monkeypatch):
    """A stand-in `ray` module that runs tasks synchronously and records what the backend asked of it."""
    calls = {"init": 0, "num_cpus": [], "in_flight": []}
    pending: dict = {}

    class Ref:
        def __init__(self, value):
            self.value = value

    def remote(num_cpus):
        calls["num_cpus"].append(num_cpus)

        def wrap(fn):
            def submit(*args):
                ref = Ref(fn(*args))
                pending[ref] = True
                return ref
            return types.SimpleNamespace(remote=submit)
        return wrap

    def wait(refs, num_returns):
        calls["in_flight"].append(len(refs))
        return refs[:num_returns], refs[num_returns:]

    fake = types.SimpleNamespace(init=lambda **kw: calls.__setitem__("init", calls["init"] + 1), remote=remote,
                                 wait=wait, get=lambda ref: ref.value)
    monkeypatch.setitem(sys.modules, "ray", fake)
    plan = SweepPlan(None, [*TINY, "train.steps=2"], {"optim.lr": [1e-3, 3e-3]}, seeds=2)
    rows = run_plan(tmp_path / "sw", plan, jobs=2, backend="ray")
    assert sorted(r["name"] for r in rows) == sorted(s.name for s in plan.specs())
    assert all(r["status"] == "done" for r in rows), [r["error"] for r in rows]
    assert calls["init"] == 1 and max(calls["in_flight"]) == 2  # --jobs caps the runs in flight
    with pytest.raises(ConfigError, match="backend"):
        run_plan(tmp_path / "sw", plan, backend="slurm")


def test_killed_sweep_resumes_to_identical_results(tmp_path):
    """kill -9 the whole sweep (driver and children) mid-run; the rerun skips finished runs, resumes the
    interrupted one from its checkpoint, and its losses equal an uninterrupted run's bit for bit."""
    fixed = [*TINY, "train.steps=150", "train.ckpt_every=5", "train.keep_last=3"]
    sweep_dir = tmp_path / "sw"
    cmd = [sys.executable, "-m", "archlab.cli", "sweep", *fixed, "--grid", "optim.lr=1e-3,3e-3", "--out", str(sweep_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second = sweep_dir / "lr=0.003_seed=0"

    def second_run_step() -> int:  # runs go one after the other (--jobs 1): the first is done once this moves
        lines = (second / "metrics.jsonl").read_text().splitlines() if (second / "metrics.jsonl").is_file() else []
        return json.loads(lines[-2])["step"] if len(lines) > 1 else 0  # [-2]: the last line may be half-written

    deadline = time.time() + 240
    while second_run_step() < 12 and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (sweep_dir / "lr=0.001_seed=0" / "eval.json").is_file() and not (second / "eval.json").is_file()
    killed_at = max(int(p.name.split("_")[1]) for p in second.glob("step_*") if p.name.split("_")[1].isdigit())
    assert 10 <= killed_at < 150

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "(1 runs this time, 0 failed" in " ".join(rerun.stdout.split())
    assert json.loads((second / "run.json").read_text())["resumed_from_step"] >= 10
    straight = train(load_config(None, [*fixed, "optim.lr=0.003", "seed=0"]), tmp_path / "straight", resume="never")
    assert [m["loss"] for m in read_metrics(second)] == [m["loss"] for m in read_metrics(straight.run_dir)]
    assert len(load_results(sweep_dir)) == 2 and all(r["status"] == "done" for r in load_results(sweep_dir))

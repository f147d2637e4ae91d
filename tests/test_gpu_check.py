"""scripts/gpu_check.py: its CPU dry run (every section, every row, the numbers behind each verdict), the
configs of the GPU rows, and the clear exit without CUDA."""

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "benchmarks")]
import gpu_check  # noqa: E402
from gpucheck import compile_rows, fla_rows, torchrun_rows, train_rows  # noqa: E402
from gpucheck.rows import Context, Outcome, RowSpec, Skip, run_section, selected  # noqa: E402
from gpucheck.runs import config  # noqa: E402
from mixer_throughput import build  # noqa: E402

SECTIONS = ["train", "fla", "compile", "torchrun", "throughput", "memory"]


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> dict:
    """One dry run of the whole script in its own process, as CI and users run it."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "21 pass, 0 fail, 3 skip" in proc.stdout
    table = (out / "gpu_check_dry_run.md").read_text().splitlines()
    assert len(table) == 4 + 24 and "| train | gdn canon=ABbCD keel | PASS |" in "\n".join(table)
    return json.loads((out / "gpu_check_dry_run.json").read_text())


def rows_of(doc: dict, section: str) -> list[dict]:
    return [r for r in doc["rows"] if r["section"] == section]


def test_every_section_ran_and_every_row_passed_or_fla_skipped_for_want_of_cuda(dry):
    assert [s["name"] for s in dry["sections"]] == SECTIONS
    assert all(s["seconds"] <= s["budget_s"] for s in dry["sections"])
    assert dry["mode"] == "dry-run" and dry["machine"]["cuda"] is None and dry["machine"]["bf16_peak_tflops"] > 0
    assert [r["name"] for r in rows_of(dry, "train")] == [r.name for r in selected(train_rows.ROWS, "dry-run")]
    assert [r["name"] for r in rows_of(dry, "torchrun")] == ["ddp", "fsdp"]
    assert len(dry["rows"]) == 24 and dry["summary"] == {"pass": 21, "fail": 0, "skip": 3}
    for row in dry["rows"]:
        if row["section"] == "fla":
            assert row["status"] == "skip" and row["message"].startswith("no CUDA device"), row
        else:
            assert row["status"] == "pass" and row["numbers"], row
        assert all(math.isfinite(v) for v in row["numbers"].values()), row


def test_the_train_rows_verdicts_rest_on_their_numbers(dry):
    s = train_rows.SIZES["dry-run"]
    for row in rows_of(dry, "train"):
        n = row["numbers"]
        assert n["loss_first"] > (2.5 if "depo" in row["name"] else 5.0)  # ~ln |vocab| at the start: bytes, DEPO
        assert n["loss_drop"] == pytest.approx(n["loss_first"] - n["loss_last"]) and n["loss_drop"] >= s.min_drop
        assert 0 <= n["decode_rel_err"] <= s.decode_tol and n["tok_s"] > 0


def test_torchrun_compile_throughput_and_memory_numbers(dry):
    for row in rows_of(dry, "torchrun"):  # pass: a gloo group, resumed at step 2 from DCP shards
        assert row["numbers"]["max_loss_diff"] <= torchrun_rows.TOL and row["numbers"]["dcp_shards"] >= 1
    (compiled,) = rows_of(dry, "compile")
    assert compiled["numbers"]["max_loss_diff"] <= compile_rows.TOL["fp32"] and compiled["numbers"]["compile_s"] > 0
    train, mixers = rows_of(dry, "throughput")
    assert train["numbers"]["archlab_vs_hf"] == pytest.approx(train["numbers"]["archlab_tok_s"] / train["numbers"]["hf_tok_s"])
    assert set(mixers["numbers"]) >= {"attention_tok_s", "gla_vs_attention", "mamba2_vs_attention", "gdn_vs_attention"}
    (memory,) = rows_of(dry, "memory")
    assert memory["numbers"]["archlab_peak_mib"] > 0 and memory["numbers"]["hf_peak_mib"] > 0


def test_a_loss_that_falls_too_little_fails_its_row(tmp_path, monkeypatch):
    s = train_rows.SIZES["dry-run"]
    monkeypatch.setitem(train_rows.SIZES, "dry-run", dataclasses.replace(s, steps=4, min_drop=50.0))
    out = train_rows.check(train_rows.ROWS[0], Context("dry-run", torch.device("cpu"), tmp_path, 1.0))
    assert not out.ok and out.message.startswith("loss fell ") and out.numbers["loss_drop"] < 50.0


def test_every_gpu_row_has_a_valid_config():
    """The rows only the GPU runs (full and quick sizes) fail on no config error there."""
    def check(overrides: list[str]) -> None:
        config(Path("unused"), "row", torch.device("cpu"), overrides)

    for mode in ("full", "quick"):
        for spec in selected(train_rows.ROWS, mode):
            check(train_rows.run_overrides(spec, train_rows.SIZES[mode]))
        for spec in selected(compile_rows.ROWS, mode):
            check(compile_rows.run_overrides(spec, compile_rows.SIZES[mode]))
        check(torchrun_rows.overrides(torchrun_rows.SIZES[mode], "fsdp"))
    for mixer in fla_rows.MIXERS.values():
        assert build(mixer + "+fla", fla_rows.SIZES["full"].d).cfg.backend == "fla"


def test_without_cuda_one_clear_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {gpu_check.NO_CUDA}\n" and "--dry-run" in captured.err
    assert not list(tmp_path.iterdir())


def test_an_unknown_section_is_one_clear_line(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--only", "train,warp", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --only: unknown section(s) warp; known: {', '.join(SECTIONS)}\n"


def test_a_failing_row_is_recorded_and_the_next_one_runs_until_the_time_box_is_spent():
    def boom() -> Outcome:
        raise ValueError("bad input\nsecond line")

    def no_fla() -> Outcome:
        raise Skip("fla is not importable")

    def slow() -> Outcome:
        time.sleep(0.05)
        return Outcome(True, {"x": 1.0})

    specs = [RowSpec("boom", boom), RowSpec("ok", lambda: Outcome(True, {"x": 2.0})),
             RowSpec("nan", lambda: Outcome(True, {"x": float("nan")})), RowSpec("skip", no_fla)]
    rows = run_section("s", specs, 100.0, lambda row: None)
    assert [r.status for r in rows] == ["fail", "pass", "fail", "skip"]
    assert rows[0].message == "ValueError: bad input" and rows[1].numbers == {"x": 2.0}
    assert rows[2].message == "not finite: x" and rows[3].message == "fla is not importable"
    late = run_section("s", [RowSpec("slow", slow), RowSpec("late", slow)], 0.01, lambda row: None)
    assert [r.status for r in late] == ["pass", "skip"] and late[1].message.startswith("time box of 0 s spent")


def test_a_failed_torchrun_launch_reports_the_workers_exception_not_the_agents():
    stderr = "\n".join([
        "[rank0]: Traceback (most recent call last):",
        '[rank0]:     raise ConfigError(f"invalid config: {_describe(err)}") from None',
        "[rank0]: archlab.config.ConfigError: invalid config: model: mixer.n_heads=2 does not divide model.d_model=33",
        "    raise ChildFailedError(",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "  exitcode  : 1 (pid: 18406) ",
    ])
    assert torchrun_rows.root_cause(stderr) == (
        "archlab.config.ConfigError: invalid config: model: mixer.n_heads=2 does not divide model.d_model=33")
    assert torchrun_rows.root_cause("Killed\n") == "Killed"

"""Multi-process training on CPU: 2 processes (torchrun, gloo) equal 1 process with the same global batch.

Tolerance: per-step losses agree to 1e-4 absolute (measured: ~1e-6; the only difference is the order of
float32 reductions in the gradient all-reduce / reduce-scatter).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from archlab.distributed import Dist, backend, close_distributed, init_distributed, rank_rows, wrap_model
from archlab.train import read_metrics, train

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import config  # noqa: E402

TOL = 1e-4


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One torchrun launch: DDP for 4 steps; FSDP2 stopped after 2 steps (a DCP checkpoint from 2 processes);
    DDP on DEPO with document masking."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "dist_worker.py"), str(out), "ddp:ddp:", "fsdp:fsdp:2", "ddp-docs:ddp::docs"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(config(str(out), "single", "none"))
    train(config(str(out), "single-docs", "none", "docs"))
    return out


def test_ddp_two_processes_equal_one(runs):
    single, ddp = losses(runs / "single"), losses(runs / "ddp")
    assert len(single) == len(ddp) == 4
    assert max(abs(a - b) for a, b in zip(single, ddp)) < TOL, (single, ddp)
    assert single[-1] < single[0]


def test_ddp_with_document_masking_equals_one_process(runs):
    single, ddp = losses(runs / "single-docs"), losses(runs / "ddp-docs")
    assert len(single) == len(ddp) == 4 and max(abs(a - b) for a, b in zip(single, ddp)) < TOL, (single, ddp)


def test_fsdp_two_processes_then_resume_on_one_from_dcp(runs):
    """FSDP2 on 2 processes for 2 steps, then the same run resumed by 1 process from the DCP checkpoint."""
    ckpt = runs / "fsdp" / "step_2"
    assert sorted(p.name for p in (ckpt / "dcp").iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    assert (ckpt / "model.safetensors").is_file()
    result = train(config(str(runs), "fsdp", "fsdp"))  # no torchrun: world size 1, resumes at step 2
    assert json.loads((runs / "fsdp" / "run.json").read_text())["resumed_from_step"] == 2
    single, fsdp = losses(runs / "single"), losses(runs / "fsdp")
    assert [m["step"] for m in read_metrics(runs / "fsdp")] == [1, 2, 3, 4]
    assert max(abs(a - b) for a, b in zip(single, fsdp)) < TOL, (single, fsdp)
    assert result.eval["loss"] == pytest.approx(json.loads((runs / "single" / "eval.json").read_text())["loss"], abs=TOL)


def test_rank_rows_split_the_global_batch():
    assert [rank_rows(8, Dist(r, 2)) for r in range(2)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 4 processes"):
        rank_rows(6, Dist(0, 4))


@pytest.mark.parametrize("parallel", ["ddp", "none"])
def test_one_process_torchrun_job_gets_a_group_only_when_it_asks_for_ddp_or_fsdp(parallel, monkeypatch):
    """torchrun --nproc_per_node=1 with train.parallel=ddp runs the wrapped (DDP) code on a real group, so a
    single GPU exercises nccl; with parallel=none the job stays a plain process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    d, device = init_distributed(torch.device("cpu"), parallel)
    try:
        assert (d.world, d.active, dist.is_initialized()) == (1, parallel == "ddp", parallel == "ddp")
        assert backend(d) == ("gloo" if parallel == "ddp" else None)
        wrapped = wrap_model(nn.Linear(2, 2), parallel, d, device)
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) == (parallel == "ddp")
    finally:
        close_distributed(d)
    assert not dist.is_initialized()

"""Run by the torchrun section under ``python -m torch.distributed.run --nproc_per_node=1`` (not imported).

argv: OUT_DIR, then a JSON list of runs ``{"label", "overrides", "stop_after"}``, trained in order with
``archlab.train.train`` (a run whose directory holds a checkpoint resumes from it). The process group is
started once here (nccl on CUDA, gloo on CPU) and shared by the runs: train() leaves a group it did not create.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from archlab.train import train
from gpucheck.runs import config

if __name__ == "__main__":
    out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    for run in runs:
        train(config(out, run["label"], device, run["overrides"]), stop_after=run.get("stop_after"))
    dist.destroy_process_group()

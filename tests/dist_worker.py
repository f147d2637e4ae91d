"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (not a test module itself).

argv: OUT_DIR, then one ``name:parallel:stop_after[:recipe]`` per run; every run shares tests' small config
(BASE), on byte-level text or, with a recipe, on that task (e.g. ``docs`` = DEPO with document masking).
"""

import sys

import torch.distributed as dist

from archlab.config import load_config
from archlab.train import train

BASE = ["model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=8",
        "train.steps=4", "train.log_every=1", "train.threads=1", "train.eval_batches=1"]


RECIPES = {"": ["data.max_bytes=300000"], "docs": ["data.name=depo", "data.n_max=6", "data.k_max=2", "data.name_max_len=1", "data.mini_vocab=16",
                     "data.n_queries=4", "data.doc_mask=true"]}


def config(out_dir: str, name: str, parallel: str, recipe: str = ""):
    return load_config(None, [*BASE, *RECIPES[recipe], f"train.parallel={parallel}", f"out_dir={out_dir}", f"name={name}"])


if __name__ == "__main__":
    dist.init_process_group("gloo")  # one group for all runs (train() leaves a group it did not create alone)
    out = sys.argv[1]
    for spec in sys.argv[2:]:
        name, parallel, stop, *recipe = spec.split(":")
        train(config(out, name, parallel, *recipe), stop_after=int(stop) if stop else None)
    dist.destroy_process_group()

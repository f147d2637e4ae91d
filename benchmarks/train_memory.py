"""Peak memory of one training step (forward, backward, AdamW step): archlab's Transformer vs transformers'
LlamaForCausalLM with the same shapes and weights (the models of ``train_throughput.py``), plus Canon-ABCD.

Each measurement runs in a fresh process: the growth of peak RSS during the second step over the RSS
before it (weights and optimiser state already allocated), with glibc returning freed blocks to the OS
(``common.peak_growth_mib``) -- i.e. activations, gradients and temporaries.

    python benchmarks/train_memory.py
    python benchmarks/train_memory.py --sizes 256 --precisions fp32 --json results/bench/memory.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from common import markdown_table, meta, peak_growth_mib, write_result
from train_throughput import SIZES, VOCAB, make_models, step_fn

MODELS = ("archlab", "hf", "canon")


def child(model: str, size: int, precision: str) -> float:
    s = SIZES[size]
    torch.manual_seed(0)
    ours, hf, canon = make_models(s["d"], s["layers"])
    m = {"archlab": ours, "hf": hf, "canon": canon}[model]
    del ours, hf, canon
    ids = torch.randint(0, VOCAB, (s["B"], s["T"] + 1))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True)
    return peak_growth_mib(step_fn(m, model == "hf", opt, ids, precision))


def measure(model: str, size: int, precision: str) -> float:
    cmd = [sys.executable, __file__, "--child", model, str(size), precision]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], choices=sorted(SIZES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--json", help="write the result file here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(child(args.child[0], int(args.child[1]), args.child[2]))
        return
    info = meta()
    print(f"# train-step peak memory: {info['cpu']}, torch {info['torch']}, load {info['load_avg']}\n", flush=True)
    rows, table = [], []
    for size in args.sizes:
        s = SIZES[size]
        for precision in args.precisions:
            mib = {m: measure(m, size, precision) for m in MODELS}
            key = {"size": f"d={s['d']} L={s['layers']} T={s['T']} B={s['B']}", "precision": precision}
            metrics = {f"{m}_peak_mib": v for m, v in mib.items()} | {"ratio": mib["archlab"] / mib["hf"]}
            rows.append({"key": key, "metrics": metrics})
            table.append([key["size"], precision] + [f"{mib[m]:.0f}" for m in MODELS] + [f"{metrics['ratio']:.2f}"])
            print(f"  measured {key['size']} {precision}", flush=True)
    print(markdown_table(["size", "precision", "archlab MiB", "HF Llama MiB", "+Canon-ABCD MiB", "archlab / HF"], table))
    write_result(args.json, "train_memory", rows, [f"{m}_peak_mib" for m in MODELS] + ["ratio"])


if __name__ == "__main__":
    main()

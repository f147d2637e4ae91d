"""What document masking costs: training tok/s of the same model with and without ``doc_ids``, same run.

For every mixer (attention with RoPE and Canon-ABCD; GLA, Mamba2, Gated DeltaNet with Canon-AbCD, their
paper configuration) a d=256, 4-layer LM trains (loss forward + backward) on windows of T = 512 and 2048
tokens (8192 tokens per step) holding documents of random length (uniform in 1..2·``--doc-len``, so a window of
2048 holds ~20 of the default mean 100). The masked and unmasked steps take turns, so a busy machine slows both
alike; the median of ``--reps`` steps after a warm-up is reported, with the overhead of the mask in percent.

    python benchmarks/doc_mask_throughput.py                              # T = 512, 2048; 2 threads
    python benchmarks/doc_mask_throughput.py --mixers attention --seq-lens 2048 --doc-len 400
    python benchmarks/doc_mask_throughput.py --json results/bench/doc_mask_throughput.json
"""

from __future__ import annotations

import argparse

import torch

from archlab.config import ModelConfig
from archlab.model.lm import LM
from common import markdown_table, time_interleaved, write_result

MIXERS = {
    "attention": ({"name": "attention", "n_heads": 4}, "ABCD"),
    "gla": ({"name": "gla"}, "AbCD"),
    "mamba2": ({"name": "mamba2"}, "AbCD"),
    "gdn": ({"name": "gdn"}, "AbCD"),
}


def random_doc_ids(B: int, T: int, mean_len: int, seed: int = 0) -> torch.Tensor:
    """[B, T] document ids of documents with lengths uniform in 1..2·mean_len."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        lengths = torch.randint(1, 2 * mean_len + 1, (T,), generator=g)
        ids = torch.repeat_interleave(torch.arange(T), lengths)[:T]
        rows.append(ids)
    return torch.stack(rows)


def step(model: LM, ids: torch.Tensor, doc_ids: torch.Tensor | None, precision: str) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model.loss(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:]), doc_ids=doc_ids)
    loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[512, 2048])
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per step (B = tokens / T)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--doc-len", type=int, default=100, help="mean document length")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write a result file (benchmarks/common.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows, table = [], []
    for T in args.seq_lens:
        B = max(1, args.tokens // T)
        ids = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(1))
        docs = random_doc_ids(B, T, args.doc_len)
        for name in args.mixers:
            mixer, canon = MIXERS[name]
            torch.manual_seed(0)
            model = LM(ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers, mixer=mixer, canon=canon))
            secs = time_interleaved({"plain": lambda: step(model, ids, None, args.precision),
                                     "masked": lambda: step(model, ids, docs, args.precision)}, warmup=1, reps=args.reps)
            plain, masked = B * T / secs["plain"], B * T / secs["masked"]
            overhead = 100 * (secs["masked"] / secs["plain"] - 1)
            docs_per_row = float((docs[:, 1:] != docs[:, :-1]).sum(1).float().mean() + 1)
            rows.append({"key": {"mixer": name, "seq_len": T, "precision": args.precision},
                         "metrics": {"plain_tok_s": plain, "masked_tok_s": masked, "overhead_pct": overhead,
                                     "docs_per_window": docs_per_row}})
            table.append([name, str(T), f"{docs_per_row:.1f}", f"{plain:,.0f}", f"{masked:,.0f}", f"{overhead:+.1f}%"])
            print(markdown_table(["mixer", "T", "docs / window", "tok/s plain", "tok/s masked", "mask overhead"], table[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown_table(["mixer", "T", "docs / window", "tok/s plain", "tok/s masked", "mask overhead"], table))
    write_result(args.json, "doc_mask_throughput", rows, ["overhead_pct"])


if __name__ == "__main__":
    main()

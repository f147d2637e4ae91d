"""One Canon layer (residual), forward + backward, in archlab's eager form and two alternatives, same run.

* ``fp32``: the shifted multiply-adds with the hand-written backward on fp32 data (archlab's form);
* ``bf16 round trip``: a bf16 input (as Canon-B/D read under bf16 autocast) through that form, cast to fp32 and
  back: what archlab runs in bf16 training;
* ``bf16 oneDNN``: the alternative for CPUs with bf16 kernels, ``F.conv1d`` on the bf16 data (fp32 accumulation
  inside) plus the residual; measured against the round trip, and slower in a whole Canon-ABCD training step;
* ``conv1d fp32``: torch's depthwise ``F.conv1d`` in fp32, the peer.

    python benchmarks/canon_throughput.py                           # widths of d=512: A/C 512, B 1536, D 2816
    python benchmarks/canon_throughput.py --threads 1 --json results/bench/canon_throughput.json
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from archlab.model.canon import Canon
from common import markdown_table, parse_run_args, time_interleaved, write_result


def layer_step(canon: Canon, x: torch.Tensor, g: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=x.dtype == torch.bfloat16):
        y = canon(x)
    y.backward(g.to(y.dtype))


def conv1d_step(canon: Canon, x: torch.Tensor, g: torch.Tensor) -> None:
    """x + causal depthwise F.conv1d(x), in x's dtype ([B, C, T] view of the channel-last data, no copy)."""
    K = canon.kernel
    y = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), canon.weight.to(x.dtype), groups=x.shape[-1]).transpose(1, 2) + x
    y.backward(g.to(y.dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1536, 2816])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    args = parse_run_args(ap, threads=1, reps=5)
    rows, table = [], []
    for C in args.widths:
        canon = Canon(C)
        x = torch.randn(args.batch, args.seq_len, C, requires_grad=True)
        xb = x.detach().to(torch.bfloat16).requires_grad_()  # in a model, Canon-B/D read bf16 projection outputs
        g = torch.randn(args.batch, args.seq_len, C)
        ms = {k: 1e3 * v for k, v in time_interleaved({
            "fp32": lambda: layer_step(canon, x, g),
            "bf16_round_trip": lambda: layer_step(canon, xb, g),
            "bf16_onednn": lambda: conv1d_step(canon, xb, g),
            "conv1d_fp32": lambda: conv1d_step(canon, x, g),
        }, warmup=1, reps=args.reps).items()}
        rows.append({"key": {"width": C, "shape": f"[{args.batch}, {args.seq_len}, {C}]"},
                     "metrics": {f"{k}_ms": v for k, v in ms.items()} | {"onednn_speedup": ms["bf16_round_trip"] / ms["bf16_onednn"]}})
        table.append([f"[{args.batch}, {args.seq_len}, {C}]", f"{ms['fp32']:.1f}", f"{ms['bf16_onednn']:.1f}",
                      f"{ms['bf16_round_trip']:.1f}", f"{ms['bf16_round_trip'] / ms['bf16_onednn']:.2f}x", f"{ms['conv1d_fp32']:.1f}"])
    print(markdown_table(["x", "fp32 ms", "bf16 oneDNN ms", "bf16 round trip ms", "oneDNN speed-up", "conv1d fp32 ms"], table))
    write_result(args.json, "canon_throughput", rows, ["fp32_ms", "bf16_onednn_ms", "bf16_round_trip_ms", "conv1d_fp32_ms"])


if __name__ == "__main__":
    main()

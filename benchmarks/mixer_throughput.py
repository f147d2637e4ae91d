"""Sequence-mixer throughput on CPU: the linear mixers (GLA, Mamba2, Gated DeltaNet; chunked pure-torch forms)
against causal attention (SDPA) at the same width, measured in the same run.

For every mixer alone (x -> mixer -> y, no MLP, no embedding):
  * training: forward + backward tokens/s at T = 512, 2048, 8192, with the batch chosen so every step holds the
    same number of tokens (default 8192: B = 16, 4, 1); the mixers take turns step by step (so a busy machine
    slows them alike) and the best of ``--reps`` steps after a warm-up step is reported;
  * peak memory of one forward + backward step, each in a fresh subprocess: growth of the peak RSS (VmHWM,
    reset through /proc/self/clear_refs) over the RSS before the step, with glibc's mmap threshold pinned at
    64 KiB so that freed tensors go back to the OS (the figure tracks live tensor memory, not allocator caches);
  * decoding: ms per token of single-token steps through the mixer's state dict, after a prefill of 128 and
    of 2048 tokens (batch 1).
The linear mixers run in their paper configuration with their own SiLU short convs (model.canon = "b");
attention is plain SDPA with 4 heads of 64.

    python benchmarks/mixer_throughput.py                    # d=256, T=512/2048/8192, 1 thread
    python benchmarks/mixer_throughput.py --threads 2 --reps 2 --seq-lens 512 2048 --json results/bench/mixers.json
    python benchmarks/mixer_throughput.py --seq-lens 2048 --compile    # adds each mixer with torch.compile
    python benchmarks/mixer_throughput.py --seq-lens 2048 --precision bf16    # training under bf16 autocast

``--compile`` adds a "+compile" twin of every mixer (``module.compile(dynamic=False)``, as ``train.compile=true``
compiles blocks), timed in the same rotation after a warm-up step that pays its compile time; ratios stay
against eager attention.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from archlab.config import ModelConfig
from archlab.model.mixers.attention import grow_rotary_tables
from archlab.model.mixers import build_mixer
from common import markdown_table, meta, peak_growth_mib, sync, write_result

MIXERS = {
    "attention": ({"name": "attention", "n_heads": 4}, ""),
    "gla": ({"name": "gla"}, "b"),
    "mamba2": ({"name": "mamba2"}, "b"),
    "gdn": ({"name": "gdn"}, "b"),
}


COMPILED = "+compile"
FLA = "+fla"  # the linear mixers with mixer.backend=fla (Triton kernels; CUDA only)


def build(name: str, d: int, seq_len: int = 0) -> torch.nn.Module:
    """The mixer ``name`` (``NAME+compile``: compiled with static shapes for sequences of ``seq_len``;
    ``NAME+fla``: the same weights with fla's kernels)."""
    if name.endswith(FLA):
        m = build(name.removesuffix(FLA), d)
        m.cfg.backend = "fla"
        return m
    if name.endswith(COMPILED):
        m = build(name.removesuffix(COMPILED), d)
        grow_rotary_tables(m, seq_len)
        m.compile(dynamic=False)
        return m
    mixer, canon = MIXERS[name]
    cfg = ModelConfig(vocab_size=256, d_model=d, n_layers=2, mixer=mixer, canon=canon)
    torch.manual_seed(0)
    return build_mixer(cfg.mixer, cfg, 0)


def train_step(m: torch.nn.Module, x: torch.Tensor, precision: str = "fp32") -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        y, _ = m(x)
    y.float().square().mean().backward()
    m.zero_grad(set_to_none=True)
    x.grad = None


def time_training(names: list[str], B: int, T: int, d: int, reps: int, precision: str,
                  device: str = "cpu") -> dict[str, float]:
    """tokens/s of the best step per mixer; the mixers alternate step by step."""
    mixers = {n: build(n, d, T).to(device) for n in names}
    x = torch.randn(B, T, d, device=device, requires_grad=True)
    best = {n: float("inf") for n in names}
    for rep in range(reps + 1):
        for n, m in mixers.items():
            t0 = time.perf_counter()
            train_step(m, x, precision)
            sync(device)
            if rep:  # rep 0 is the warm-up
                best[n] = min(best[n], time.perf_counter() - t0)
    return {n: B * T / t for n, t in best.items()}


def peak_memory(name: str, B: int, T: int, d: int, threads: int, precision: str) -> float:
    cmd = [sys.executable, __file__, "--memory-child", name, str(B), str(T), str(d), "--threads", str(threads),
           "--precision", precision]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return float("nan")


@torch.no_grad()
def time_decode(m: torch.nn.Module, context: int, d: int, steps: int) -> float:
    """ms per token of single-token steps after a prefill of ``context`` tokens (batch 1)."""
    state: dict = {}
    m(torch.randn(1, context, d), state)
    xs = torch.randn(steps + 2, 1, 1, d)
    for x in xs[:2]:  # warm-up steps
        m(x, state)
    t0 = time.perf_counter()
    for x in xs[2:]:
        m(x, state)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per step (batch = tokens / T, >= 1)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    ap.add_argument("--decode-contexts", type=int, nargs="+", default=[128, 2048])
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="also time every mixer compiled (training only)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="training under bf16 autocast or not")
    ap.add_argument("--json", help="write the result file here")
    ap.add_argument("--memory-child", nargs=4, metavar=("MIXER", "B", "T", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        name, B, T, d = args.memory_child[0], *map(int, args.memory_child[1:])
        m, x = build(name, d), torch.randn(B, T, d, requires_grad=True)
        print(peak_growth_mib(lambda: train_step(m, x, args.precision)))
        return

    d, Ts, names = args.d_model, args.seq_lens, args.mixers
    batch = {T: max(1, args.tokens // T) for T in Ts}
    info = meta()
    print(f"# mixer throughput: d={d}, training {args.precision} (decoding fp32), {info['cpu']}, torch {info['torch']}, {args.threads} thread(s), "
          f"{args.tokens} tokens per step, best of {args.reps}, load {info['load_avg']}\n", flush=True)
    speed = {}
    timed = names + ([n + COMPILED for n in names] if args.compile else [])
    for T in Ts:
        speed[T] = time_training(timed, batch[T], T, d, args.reps, args.precision)
        print(f"  trained T={T}", flush=True)
    memory = {(n, T): peak_memory(n, batch[T], T, d, args.threads, args.precision) for n in names for T in Ts}
    print("  measured memory", flush=True)
    decode, params = {}, {}
    for n in names:
        m = build(n, d)
        params[n] = sum(p.numel() for p in m.parameters())
        for c in args.decode_contexts:
            decode[n, c] = time_decode(m, c, d, args.decode_steps)
    print("  timed decoding\n", flush=True)

    ref = "attention" if "attention" in names else None
    head = ["mixer", "params"] + [f"tok/s T={T} (B={batch[T]})" for T in Ts]
    head += ([f"vs attn T={T}" for T in Ts] if ref else []) + [f"peak MiB T={T}" for T in Ts]
    head += [f"decode ms/tok @{c}" for c in args.decode_contexts]
    table, rows = [], []
    for n in timed:  # compiled twins (not in ``names``): training speed only
        measured = n in names
        cells = [n, f"{params[n] / 1e3:.0f}k" if measured else ""] + [f"{speed[T][n]:,.0f}" for T in Ts]
        metrics = {f"tok_s_T{T}": speed[T][n] for T in Ts}
        if ref:
            cells += [f"{speed[T][n] / speed[T][ref]:.2f}x" for T in Ts]
            metrics |= {f"vs_attention_T{T}": speed[T][n] / speed[T][ref] for T in Ts}
        if measured:
            cells += [f"{memory[n, T]:.0f}" for T in Ts] + [f"{decode[n, c]:.2f}" for c in args.decode_contexts]
            metrics |= {f"peak_mib_T{T}": memory[n, T] for T in Ts} | {f"decode_ms_at_{c}": decode[n, c] for c in args.decode_contexts}
        else:
            cells += ["—"] * (len(Ts) + len(args.decode_contexts))
        table.append(cells)
        rows.append({"key": {"mixer": n, "d_model": d, "precision": args.precision}, "metrics": metrics})
    print(markdown_table(head, table))
    lower = [f"peak_mib_T{T}" for T in Ts] + [f"decode_ms_at_{c}" for c in args.decode_contexts]
    write_result(args.json, "mixer_throughput", rows, lower)


if __name__ == "__main__":
    main()

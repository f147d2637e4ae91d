"""Training throughput: archlab's Transformer vs transformers' LlamaForCausalLM, same shapes, same run,
and the step-time overhead of Canon-ABCD.

For each size and precision: median tokens/s of full training steps (forward, backward, AdamW step) after
warm-up, the ratio archlab / HF, achieved GFLOP/s (6·N·tokens + attention) and a measured bf16/fp32 GEMM
peak on the model's own matmul shapes.

    python benchmarks/train_throughput.py                 # both sizes, fp32 and bf16
    python benchmarks/train_throughput.py --sizes 256 --steps 6
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from archlab import hf_llama
from archlab.config import ModelConfig
from archlab.model.lm import LM

SIZES = {256: dict(d=256, layers=8, T=256, B=16), 512: dict(d=512, layers=8, T=512, B=8)}
VOCAB = 256


def make_models(d: int, layers: int) -> tuple[LM, torch.nn.Module, LM]:
    """archlab LM, the same weights as transformers' Llama, and archlab with Canon-ABCD."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=d, n_layers=layers, mixer={"name": "attention", "n_heads": d // 64})
    ours = LM(cfg)
    hf = hf_llama.to_llama(ours)
    hf.config._attn_implementation = "sdpa"
    return ours, hf, LM(cfg.model_copy(update={"canon": "ABCD"}))


def step_fn(model: torch.nn.Module, is_hf: bool, opt: torch.optim.Optimizer, ids: torch.Tensor, precision: str):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step() -> None:
        with ctx:
            if is_hf:
                logits = model(input_ids=ids[:, :-1]).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
            else:
                loss = model.loss(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:], dtype=torch.bool))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_interleaved(steps_fns: dict[str, callable], warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per step for each function, the functions taking turns step by step (fair under noise)."""
    for _ in range(warmup):
        for fn in steps_fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps_fns}
    for _ in range(steps):
        for name, fn in steps_fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_peak(d: int, tokens: int, precision: str, reps: int = 10) -> float:
    """GFLOP/s of the model's biggest GEMMs ([tokens, d] x [d, 8d/3·2] and back)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ffn = -(-(8 * d // 3) // 64) * 64
    a, b, c = torch.randn(tokens, d, dtype=dtype), torch.randn(d, 2 * ffn, dtype=dtype), torch.randn(2 * ffn, d, dtype=dtype)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        h = a @ b
        _ = h @ c
        dt = time.perf_counter() - t
        best = max(best, 2 * 2 * tokens * d * 2 * ffn / dt / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], choices=sorted(SIZES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| size | precision | archlab tok/s | HF Llama tok/s | ratio | archlab GFLOP/s | GEMM peak GFLOP/s | % of peak | +Canon-ABCD tok/s | Canon overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        s = SIZES[size]
        for precision in args.precisions:
            torch.manual_seed(0)
            ours, hf, canon = make_models(s["d"], s["layers"])
            ids = torch.randint(0, VOCAB, (s["B"], s["T"] + 1))
            tokens = s["B"] * s["T"]
            fns = {}
            for name, model, is_hf in (("archlab", ours, False), ("hf", hf, True), ("canon", canon, False)):
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
                fns[name] = step_fn(model, is_hf, opt, ids, precision)
            res = {name: tokens / sec for name, sec in time_interleaved(fns, args.warmup, args.steps).items()}
            gflops = ours.flops_per_token(s["T"]) * res["archlab"] / 1e9
            peak = matmul_peak(s["d"], tokens, precision)
            print(
                f"| d={s['d']} L={s['layers']} T={s['T']} B={s['B']} | {precision} | {res['archlab']:,.0f} | {res['hf']:,.0f} | "
                f"{res['archlab'] / res['hf']:.2f} | {gflops:.1f} | {peak:.1f} | {100 * gflops / peak:.0f}% | "
                f"{res['canon']:,.0f} | {100 * (res['archlab'] / res['canon'] - 1):+.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()

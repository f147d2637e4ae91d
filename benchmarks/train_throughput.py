"""Training throughput: archlab's Transformer vs transformers' LlamaForCausalLM, same shapes, same run,
and the step-time overhead of Canon-ABCD.

For each size and precision: median tokens/s of full training steps (forward, backward, AdamW step) after
warm-up, the three models taking turns step by step, the ratio archlab / HF, achieved GFLOP/s (6·N·tokens +
attention) against a GEMM peak measured in the same run on the model's own matmul shapes. In bf16 the peak is
the faster of torch's bf16 GEMM and the fp32 GEMM: on CPUs without bf16 instructions archlab runs bf16
autocast through fp32 kernels (``archlab/model/cpu_bf16.py``), so the fp32 GEMM is the attainable peak there.

    python benchmarks/train_throughput.py                 # both sizes, fp32 and bf16
    python benchmarks/train_throughput.py --sizes 256 --steps 6 --json results/bench/train.json
    python benchmarks/train_throughput.py --sizes 512 --precisions bf16 --compile --no-hf   # train.compile=true

``--compile`` adds archlab and archlab+Canon with their blocks compiled (``archlab/model/compile.py``, as
``train.compile=true`` does); the compile warm-up (first step minus a measured step) is reported on its own.
``--no-hf`` skips the peer (its bf16 steps take minutes at d=512 on CPUs without bf16 instructions).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from archlab import hf_llama
from archlab.config import ModelConfig
from archlab.evaluate import autocast_context
from archlab.model.compile import compile_blocks
from archlab.model.lm import LM
from common import markdown_table, meta, time_interleaved, write_result

SIZES = {  # 128: a small size for quick checks; 256 and 512: the shapes
    128: dict(d=128, layers=4, T=128, B=8),
    256: dict(d=256, layers=8, T=256, B=16),
    512: dict(d=512, layers=8, T=512, B=8),
}
VOCAB = 256


def make_models(d: int, layers: int, with_hf: bool = True) -> tuple[LM, torch.nn.Module | None, LM]:
    """archlab LM, the same weights as transformers' Llama (None without ``with_hf``), and archlab with
    Canon-ABCD; built on the current default device (``with torch.device("cuda"): ...``)."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=d, n_layers=layers, mixer={"name": "attention", "n_heads": d // 64})
    ours = LM(cfg)
    hf = hf_llama.to_llama(ours) if with_hf else None
    if hf is not None:
        hf.config._attn_implementation = "sdpa"
    return ours, hf, LM(cfg.model_copy(update={"canon": "ABCD"}))


def step_fn(model: torch.nn.Module, is_hf: bool, opt: torch.optim.Optimizer, ids: torch.Tensor, precision: str):
    """One training step (forward, backward, AdamW) of ``model`` on ``ids`` [B, T + 1], on ids' device."""

    def step() -> None:
        with autocast_context(ids.device, precision):
            if is_hf:
                logits = model(input_ids=ids[:, :-1]).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
            else:
                loss = model.loss(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:], dtype=torch.bool))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def compiled(model: LM, seq_len: int) -> LM:
    """A copy of ``model`` with compiled blocks (same weights)."""
    twin = LM(model.cfg)
    twin.load_state_dict(model.state_dict())
    compile_blocks(twin, seq_len)
    return twin


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_peak(d: int, tokens: int, dtype: torch.dtype, reps: int = 3) -> float:
    """GFLOP/s of the model's biggest GEMMs ([tokens, d] x [d, 8d/3·2] and back), best of ``reps``."""
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
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time archlab and archlab+Canon with compiled blocks")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' Llama")
    ap.add_argument("--json", help="write the result file here")
    args = ap.parse_args()
    info = meta()
    print(f"# train throughput: {info['cpu']}, torch {info['torch']}, {info['threads']} threads, load {info['load_avg']}")
    head = ["size", "precision", "archlab tok/s", "HF Llama tok/s", "ratio", "archlab GFLOP/s", "GEMM peak GFLOP/s",
            "% of peak", "+Canon-ABCD tok/s", "Canon overhead"]
    rows, table, compiled_table = [], [], []
    for size in args.sizes:
        s = SIZES[size]
        for precision in args.precisions:
            torch.manual_seed(0)
            ours, hf, canon = make_models(s["d"], s["layers"])
            ids = torch.randint(0, VOCAB, (s["B"], s["T"] + 1))
            tokens = s["B"] * s["T"]
            entrants = [("archlab", ours, False), ("canon", canon, False)] + ([] if args.no_hf else [("hf", hf, True)])
            if args.compile:
                entrants += [(f"{name}_compiled", compiled(model, s["T"]), False) for name, model, _ in entrants[:2]]
            fns = {name: step_fn(model, is_hf, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True), ids, precision)
                   for name, model, is_hf in entrants}
            first = {name: timed(fn) for name, fn in fns.items()}  # includes compile time for the compiled ones
            sec = time_interleaved(fns, args.warmup - 1, args.steps)
            res = {name: tokens / t for name, t in sec.items()}
            res["hf"] = res.get("hf", float("nan"))
            gflops = ours.flops_per_token(s["T"]) * res["archlab"] / 1e9
            dtypes = [torch.float32] + ([torch.bfloat16] if precision == "bf16" else [])
            peak = max(matmul_peak(s["d"], tokens, dt) for dt in dtypes)
            key = {"size": f"d={s['d']} L={s['layers']} T={s['T']} B={s['B']}", "precision": precision}
            m = {"archlab_tok_s": res["archlab"], "hf_tok_s": res["hf"], "ratio": res["archlab"] / res["hf"],
                 "archlab_gflops": gflops, "gemm_peak_gflops": peak, "pct_of_peak": 100 * gflops / peak,
                 "canon_tok_s": res["canon"], "canon_overhead_pct": 100 * (res["archlab"] / res["canon"] - 1)}
            if args.compile:
                m |= {"compiled_tok_s": res["archlab_compiled"], "compiled_canon_tok_s": res["canon_compiled"],
                      "compiled_canon_overhead_pct": 100 * (res["archlab_compiled"] / res["canon_compiled"] - 1),
                      "compile_warmup_s": first["archlab_compiled"] - sec["archlab_compiled"],
                      "compile_warmup_canon_s": first["canon_compiled"] - sec["canon_compiled"]}
            rows.append({"key": key, "metrics": m})
            table.append([key["size"], precision, f"{m['archlab_tok_s']:,.0f}", f"{m['hf_tok_s']:,.0f}", f"{m['ratio']:.2f}",
                          f"{gflops:.1f}", f"{peak:.1f}", f"{m['pct_of_peak']:.0f}%", f"{m['canon_tok_s']:,.0f}",
                          f"{m['canon_overhead_pct']:+.1f}%"])
            if args.compile:
                compiled_table.append([key["size"], precision, f"{m['compiled_tok_s']:,.0f}", f"{m['compiled_tok_s'] / m['archlab_tok_s']:.2f}",
                                       f"{m['compiled_canon_tok_s']:,.0f}", f"{m['compiled_canon_overhead_pct']:+.1f}%",
                                       f"{m['compile_warmup_s']:.0f} / {m['compile_warmup_canon_s']:.0f}"])
            print(f"  measured {key['size']} {precision}", flush=True)
    print(markdown_table(head, table))
    if args.compile:
        print("\ncompiled blocks (train.compile=true):")
        print(markdown_table(["size", "precision", "compiled tok/s", "vs eager", "+Canon-ABCD tok/s", "Canon overhead",
                              "compile warm-up s (plain / Canon)"], compiled_table))
    write_result(args.json, "train_throughput", rows, ["canon_overhead_pct", "compiled_canon_overhead_pct"])


if __name__ == "__main__":
    main()

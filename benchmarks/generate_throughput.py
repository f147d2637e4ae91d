"""Generation speed: archlab's ``LM.generate`` vs transformers' ``generate`` for the same Llama-shaped model
(same weights, greedy, KV cache, fp32), and the per-token decode time of every mixer against context length.

  * generate: new tokens per second for batch 1 and 8, a 32-token prompt and 256 new tokens, the two
    implementations taking turns (median of ``--reps``, and the range of the per-turn ratios, which shows
    how much the machine's speed drifted); "same" says whether the greedy tokens agree;
  * decode vs context: ms per token of single-token steps through ``LM.forward`` with a cache, after a
    prefill of each context length (batch 1); flat for the linear mixers, growing for attention.

    python benchmarks/generate_throughput.py
    python benchmarks/generate_throughput.py --d-model 256 --reps 2 --contexts 128 2048 --json results/bench/generate.json
"""

from __future__ import annotations

import argparse
import statistics

import torch

from archlab import hf_llama
from archlab.config import ModelConfig
from archlab.model.lm import LM
from common import interleaved_times, markdown_table, meta, time_interleaved, write_result

VOCAB, PROMPT = 256, 32
MIXERS = {
    "attention": ({"name": "attention", "n_heads": 4}, ""),
    "gla": ({"name": "gla"}, "b"),
    "mamba2": ({"name": "mamba2"}, "b"),
    "gdn": ({"name": "gdn"}, "b"),
}


def llama_pair(d: int, layers: int) -> tuple[LM, torch.nn.Module]:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=d, n_layers=layers, mixer={"name": "attention", "n_heads": d // 64})
    torch.manual_seed(0)
    ours = LM(cfg).eval()
    hf = hf_llama.to_llama(ours).eval()
    hf.config._attn_implementation = "sdpa"
    return ours, hf


def time_generate(d: int, layers: int, batch: int, new: int, reps: int) -> dict[str, float]:
    ours, hf = llama_pair(d, layers)
    ids = torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None,
              attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        same = bool((ours.generate(ids, new) == hf.generate(ids, **kw)).all())
        times = interleaved_times({"archlab": lambda: ours.generate(ids, new), "hf": lambda: hf.generate(ids, **kw)}, 0, reps)
    sec = {name: statistics.median(ts) for name, ts in times.items()}
    pair_ratios = [h / a for h, a in zip(times["hf"], times["archlab"])]  # this VM's speed drifts: show the spread
    return {"archlab_tok_s": batch * new / sec["archlab"], "hf_tok_s": batch * new / sec["hf"],
            "ratio": sec["hf"] / sec["archlab"], "ratio_min": min(pair_ratios), "ratio_max": max(pair_ratios),
            "same_tokens": float(same)}


@torch.no_grad()
def decode_ms(mixer: str, d: int, layers: int, context: int, steps: int) -> float:
    """ms per token of single-token LM steps after a prefill of ``context`` tokens (batch 1)."""
    mix, canon = MIXERS[mixer]
    torch.manual_seed(0)
    model = LM(ModelConfig(vocab_size=VOCAB, d_model=d, n_layers=layers, mixer=mix, canon=canon)).eval()
    cache = model.new_cache()
    model(torch.randint(0, VOCAB, (1, context)), cache)
    tok = torch.zeros(1, 1, dtype=torch.long)
    model(tok, cache)  # warm-up step
    sec = time_interleaved({"step": lambda: model(tok, cache)}, 0, steps)["step"]
    return 1e3 * sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 4096])
    ap.add_argument("--decode-layers", type=int, default=4)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    ap.add_argument("--json", help="write the result file here")
    args = ap.parse_args()
    info = meta()
    d, L = args.d_model, args.layers
    print(f"# generation: d={d} L={L}, fp32, {info['cpu']}, torch {info['torch']}, {info['threads']} threads, "
          f"load {info['load_avg']}\n", flush=True)
    rows, table = [], []
    for b in args.batches:
        m = time_generate(d, L, b, args.new_tokens, args.reps)
        rows.append({"key": {"what": "generate", "d_model": d, "layers": L, "batch": b, "new_tokens": args.new_tokens},
                     "metrics": m})
        table.append([f"B={b}", f"{m['archlab_tok_s']:,.0f}", f"{m['hf_tok_s']:,.0f}", f"{m['ratio']:.2f}",
                      f"{m['ratio_min']:.2f}–{m['ratio_max']:.2f}", "yes" if m["same_tokens"] else "no"])
    print(markdown_table(["batch", "archlab tok/s", "HF generate tok/s", "ratio of medians", "per-turn ratios",
                          "same tokens"], table), "\n", flush=True)

    table = []
    for name in args.mixers:
        ms = {c: decode_ms(name, d, args.decode_layers, c, args.decode_steps) for c in args.contexts}
        rows.append({"key": {"what": "decode", "mixer": name, "d_model": d, "layers": args.decode_layers},
                     "metrics": {f"decode_ms_at_{c}": v for c, v in ms.items()}})
        table.append([name] + [f"{ms[c]:.2f}" for c in args.contexts] +
                     [f"{ms[args.contexts[-1]] / ms[args.contexts[0]]:.2f}"])
    print(f"decode, L={args.decode_layers}, batch 1 (ms per token):")
    print(markdown_table(["mixer"] + [f"@{c}" for c in args.contexts] +
                         [f"@{args.contexts[-1]} / @{args.contexts[0]}"], table))
    write_result(args.json, "generate_throughput", rows, [f"decode_ms_at_{c}" for c in args.contexts])


if __name__ == "__main__":
    main()

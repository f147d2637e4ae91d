"""Tokenisation throughput (MB of UTF-8 text per second): archlab's tokenizers vs transformers' fast tokenizer.

Corpus: the first --mb MB of the Python standard library's sources, read once into memory (reading is timed
apart). Rows: the byte-level tokenizer, a byte-level BPE trained here on the corpus (--vocab), the same BPE
called through ``transformers.PreTrainedTokenizerFast`` (the peer), and the whole ``prepare`` pipeline
(tokenise + EOS separators + write shards + manifest) for both. Wall and CPU seconds are both reported:
on a shared box, MB per CPU second is the steadier number. The BPE runs with RAYON_NUM_THREADS threads
(default: all cores).

    python benchmarks/tokenize_throughput.py [--mb 8] [--vocab 8192] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

from archlab.data.shards import prepare
from archlab.data.sources import iter_documents
from archlab.tokenizers import ByteTokenizer, train_bpe


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds) over ``repeat`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="MB of stdlib text")
    ap.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    ap.add_argument("--train-mb", type=float, default=2.0, help="MB of text the BPE is trained on")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    w = time.perf_counter()
    docs = list(iter_documents([], "*.py", max_bytes=int(args.mb * 1e6)))
    read_s = time.perf_counter() - w
    mb = sum(len(d.encode()) for d in docs) / 1e6
    w = time.perf_counter()
    bpe = train_bpe(iter(docs), args.vocab) if args.train_mb >= args.mb else train_bpe(iter_documents([], "*.py", max_bytes=int(args.train_mb * 1e6)), args.vocab)
    train_s = time.perf_counter() - w
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB (read in {read_s:.2f} s = {mb / read_s:.1f} MB/s); "
          f"BPE vocab {bpe.vocab_size} trained on {min(args.train_mb, args.mb)} MB in {train_s:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(Path(tmp) / "tok")
        from transformers import PreTrainedTokenizerFast

        peer = PreTrainedTokenizerFast.from_pretrained(Path(tmp) / "tok")
        n_tokens = sum(len(ids) for ids in bpe.encode_batch(docs))
        assert peer(docs[:50], add_special_tokens=False)["input_ids"] == [ids.tolist() for ids in bpe.encode_batch(docs[:50])]
        runs = {
            "byte-level (archlab)": lambda: ByteTokenizer().encode_batch(docs),
            f"BPE {bpe.vocab_size} (archlab, tokenizers encode_batch)": lambda: bpe.encode_batch(docs),
            f"BPE {bpe.vocab_size} (transformers PreTrainedTokenizerFast, peer)": lambda: peer(docs, add_special_tokens=False),
        }
        counter = iter(range(10**6))
        runs["prepare, byte-level (shards + manifest)"] = lambda: prepare(iter(docs), ByteTokenizer(), Path(tmp) / f"b{next(counter)}")
        runs[f"prepare, BPE {bpe.vocab_size} (shards + manifest)"] = lambda: prepare(iter(docs), bpe, Path(tmp) / f"p{next(counter)}")
        print(f"BPE compression: {mb * 1e6 / n_tokens:.2f} bytes/token")
        print("| what | MB/s (wall) | MB per CPU-s |\n|---|---|---|")
        for name, fn in runs.items():
            wall, cpu = timed(fn, args.repeat)
            print(f"| {name} | {mb / wall:.1f} | {mb / max(cpu, 1e-9):.1f} |")


if __name__ == "__main__":
    main()

"""``archlab data prepare``: sources + tokenizer choice -> a prepared dataset directory (see shards.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from archlab.data.shards import prepare, split_of
from archlab.data.sources import iter_documents
from archlab.tokenizers import Tokenizer, load_tokenizer, train_bpe


def prepare_corpus(sources: list[str], out_dir: str | Path, tokenizer: str = "byte", vocab_size: int = 8192,
                   glob: str = "*.py", text_field: str = "text", max_bytes: int | None = None,
                   val_fraction: float = 0.05, shard_tokens: int = 1 << 26,
                   on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tokenise ``sources`` into ``out_dir``. ``tokenizer``: byte | bpe (trained on the train documents) | a directory."""

    def docs():
        return iter_documents(sources, glob, text_field, max_bytes)

    tok: Tokenizer
    if tokenizer == "bpe":
        tok = train_bpe((d for i, d in enumerate(docs()) if split_of(i, val_fraction) == "train"), vocab_size)
    else:
        tok = load_tokenizer(tokenizer)
    source = {"paths": sources, "glob": glob, "text_field": text_field, "max_bytes": max_bytes, "tokenizer": tokenizer}
    return prepare(docs(), tok, out_dir, val_fraction, shard_tokens, source, on_progress)

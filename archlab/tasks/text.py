"""Real text through archlab's data pipeline (:mod:`archlab.data`), tokenised and packed.

Zero configuration reads the Python standard library's own ``.py`` files (a few MB of real, structured text)
with the byte-level tokenizer (256 bytes + ``<|endoftext|>`` between documents), tokenised in memory.
``paths`` may name other files / directories / jsonl / parquet / saved datasets, ``tokenizer`` a local HF
tokenizer directory; large corpora are tokenised once with ``archlab data prepare`` and used via ``dataset``.
Every ``1/val_fraction``-th document is held out (``val`` = ``test``); train windows never see it.
With ``doc_mask`` the documents inside a window are masked from each other: a new document begins after every
EOS token (the EOS belongs to the document it ends); a window's first document may have begun before it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from pydantic import Field, model_validator

from archlab.data.sampler import PackedSampler
from archlab.data.shards import Corpus, load_prepared, tokenize_in_memory
from archlab.data.sources import iter_documents
from archlab.tasks import register_task
from archlab.tasks.base import Batch, Task, TaskConfig
from archlab.tokenizers import load_tokenizer


class TextConfig(TaskConfig):
    name: Literal["text"] = "text"
    dataset: str | None = Field(None, description="directory made by `archlab data prepare` (brings corpus and tokenizer)")
    paths: list[str] = Field(default_factory=list, description="files or directories; [] = Python stdlib sources")
    glob: str = "*.py"
    text_field: str = Field("text", description="field / column holding the text in jsonl, parquet, saved datasets")
    tokenizer: str = Field("byte", description="byte | a local HF tokenizer directory")
    max_bytes: int = Field(4_000_000, gt=0, description="read at most this many bytes of corpus")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _check(self) -> "TextConfig":
        if self.dataset is not None and (self.paths or self.tokenizer != "byte"):
            raise ValueError("data.dataset brings its own corpus and tokenizer; leave data.paths and data.tokenizer unset")
        return self


@lru_cache(maxsize=4)
def load_corpus(dataset: str | None, paths: tuple[str, ...], glob: str, text_field: str, tokenizer: str,
                max_bytes: int, val_fraction: float) -> Corpus:
    """A prepared dataset (memory-mapped), or the sources tokenised in memory."""
    if dataset is not None:
        return load_prepared(dataset)
    docs = iter_documents(paths, glob, text_field, max_bytes)
    return tokenize_in_memory(docs, load_tokenizer(tokenizer), val_fraction)


@register_task("text", TextConfig)
class TextTask(Task):
    cfg: TextConfig

    def __init__(self, cfg: TextConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        corpus = load_corpus(cfg.dataset, tuple(cfg.paths), cfg.glob, cfg.text_field, cfg.tokenizer, cfg.max_bytes, cfg.val_fraction)
        self.tokenizer = corpus.tokenizer
        self.samplers = {split: PackedSampler(corpus.splits[split], seq_len, f"corpus {split} split") for split in ("train", "val")}
        self.samplers["test"] = self.samplers["val"]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def batch(self, split: str, seed: int, rank: int, step: int, batch_size: int) -> Batch:
        tokens = torch.from_numpy(self.samplers[split].batch(seed, split, rank, step, batch_size))  # [B, T+1]
        docs = None
        if self.cfg.doc_mask:  # the token after an EOS starts a new document
            ends = (tokens == self.tokenizer.eos_id).long()
            docs = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1].cumsum(1)], dim=1)
        return Batch(tokens, torch.ones_like(tokens, dtype=torch.bool), docs)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

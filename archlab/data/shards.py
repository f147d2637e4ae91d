"""Tokenise a corpus once into memory-mapped token shards with a manifest; load them back.

Every document becomes ``[bos] ids eos`` (bos only if the tokenizer has its own), so document boundaries
survive packing. Documents are assigned to splits by position: document i is held out (``val``) when
ceil((i+1)·f) > ceil(i·f): documents 0, 1/f, 2/f, ..., a fraction f spread evenly, decided while streaming
(any corpus of two or more documents has both splits).

A prepared directory holds ``manifest.json``, ``{split}_{k:05d}.bin`` (raw little-endian uint16/uint32 ids,
never splitting a document) and, for non-byte tokenizers, ``tokenizer/`` (HF format). It is written into a
temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from archlab.checkpoint import sha256, write_json_atomic
from archlab.tokenizers import Tokenizer, load_tokenizer

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
BATCH_DOCS = 256  # documents per encode_batch call


@dataclass
class Corpus:
    """Token ids per split (each a list of 1-D arrays: memory-mapped shards or in-memory) and their tokenizer."""

    tokenizer: Tokenizer
    splits: dict[str, list[np.ndarray]]


def split_of(index: int, val_fraction: float) -> str:
    return "val" if math.ceil((index + 1) * val_fraction) > math.ceil(index * val_fraction) else "train"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenized_documents(docs: Iterable[str], tok: Tokenizer, val_fraction: float) -> Iterator[tuple[str, np.ndarray, int]]:
    """(split, ids with separators, UTF-8 bytes of the document) per document, in corpus order."""
    head = np.array([] if tok.bos_id is None else [tok.bos_id], dtype=np.int64)
    tail = np.array([tok.eos_id], dtype=np.int64)
    batch: list[str] = []
    index = 0

    def flush() -> Iterator[tuple[str, np.ndarray, int]]:
        nonlocal index
        for text, ids in zip(batch, tok.encode_batch(batch)):
            yield split_of(index, val_fraction), np.concatenate([head, ids, tail]), len(text.encode("utf-8", errors="replace"))
            index += 1
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH_DOCS:
            yield from flush()
    yield from flush()


def tokenize_in_memory(docs: Iterable[str], tok: Tokenizer, val_fraction: float) -> Corpus:
    """The same token streams as :func:`prepare` writes, held in memory (for small corpora)."""
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    dtype = token_dtype(tok.vocab_size)
    for split, ids, _ in tokenized_documents(docs, tok, val_fraction):
        parts[split].append(ids.astype(dtype))
    return Corpus(tok, {s: [np.concatenate(p) if p else np.zeros(0, dtype)] for s, p in parts.items()})


class _ShardWriter:
    """Appends documents to ``{split}_{k}.bin`` files, starting a new file past ``shard_tokens``."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.entries: list[dict[str, Any]] = []
        self.file: Any = None

    def add(self, ids: np.ndarray) -> None:
        if self.file is None:
            name = f"{self.split}_{len(self.entries):05d}.bin"
            self.file = open(self.directory / name, "wb")
            self.entries.append({"file": name, "tokens": 0, "docs": 0})
        self.file.write(ids.astype(self.dtype).tobytes())
        entry = self.entries[-1]
        entry["tokens"] += len(ids)
        entry["docs"] += 1
        if entry["tokens"] >= self.shard_tokens:
            self._close_file()

    def _close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            self.entries[-1]["sha256"] = sha256(self.directory / self.entries[-1]["file"])

    def close(self) -> list[dict[str, Any]]:
        self._close_file()
        return self.entries


def prepare(docs: Iterable[str], tok: Tokenizer, out_dir: str | Path, val_fraction: float = 0.05,
            shard_tokens: int = 1 << 26, source: dict[str, Any] | None = None,
            on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tokenise ``docs`` into shards under ``out_dir`` and return the manifest. ``on_progress(bytes)`` per document."""
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out}: already holds a prepared dataset ({MANIFEST}); choose another --out")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = token_dtype(tok.vocab_size)
    writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
    n_bytes = 0
    for split, ids, size in tokenized_documents(docs, tok, val_fraction):
        writers[split].add(ids)
        n_bytes += size
        if on_progress:
            on_progress(size)
    spec = "byte" if tok.spec == "byte" else "tokenizer"
    if spec != "byte":
        tok.save(tmp / spec)
    manifest = {"format_version": FORMAT_VERSION, "tokenizer": spec, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "bos_id": tok.bos_id, "dtype": dtype.str, "val_fraction": val_fraction, "bytes": n_bytes,
                "source": source or {}, "splits": {s: w.close() for s, w in writers.items()}}
    write_json_atomic(tmp / MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return manifest


def load_prepared(directory: str | Path) -> Corpus:
    """Memory-map a prepared dataset; shard sizes are checked against the manifest."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"data.dataset: {str(d)!r} has no {MANIFEST} (create it with `archlab data prepare`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.get('format_version')!r}, this archlab reads {FORMAT_VERSION}")
    tok = load_tokenizer("byte" if manifest["tokenizer"] == "byte" else str(d / manifest["tokenizer"]))
    dtype = np.dtype(manifest["dtype"])
    splits: dict[str, list[np.ndarray]] = {}
    for split, entries in manifest["splits"].items():
        splits[split] = []
        for e in entries:
            f = d / e["file"]
            if not f.is_file() or f.stat().st_size != e["tokens"] * dtype.itemsize:
                raise ValueError(f"{f}: missing or not {e['tokens']} tokens as {path} says (damaged dataset)")
            splits[split].append(np.memmap(f, dtype=dtype, mode="r"))
    return Corpus(tok, splits)

"""Tokenizers: byte-level (no files), a byte-level BPE trained on a corpus, or any local HF tokenizer directory.

All three share one small interface (:class:`Tokenizer`): ``encode`` / ``encode_batch`` / ``decode``, the
vocabulary size, an end-of-document id (``eos_id``, the separator the data pipeline puts after every document)
and ``save(dir)``, which writes ``tokenizer.json`` + ``tokenizer_config.json`` that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads. The ``tokenizers`` library is imported lazily
(only BPE / HF tokenizers and ``save`` need it).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

EOS_TOKEN = "<|endoftext|>"
BYTE_VOCAB = 256
# End-of-text tokens of common tokenizers, tried in order when a tokenizer directory names none.
KNOWN_EOS = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class Tokenizer(ABC):
    """text <-> token ids, with an end-of-document id and an HF-loadable ``save``."""

    eos_id: int
    bos_id: int | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (including special tokens)."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """How to build this tokenizer again: ``byte`` or a directory (recorded in data manifests)."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One int array of ids per text (no special tokens added)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def hf_tokenizer(self) -> Any:
        """The equivalent ``tokenizers.Tokenizer`` (what ``save`` writes)."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0].tolist()

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` (+ special tokens) loadable by AutoTokenizer."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tok = self.hf_tokenizer()
        tok.save(str(out / "tokenizer.json"))
        eos = tok.id_to_token(self.eos_id)
        special = {"eos_token": eos, "bos_token": tok.id_to_token(self.bos_id) if self.bos_id is not None else eos}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "model_max_length": 1_000_000_000, **special}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        return out


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id b for byte b, plus ``<|endoftext|>`` = 256. Needs no files."""

    eos_id = BYTE_VOCAB

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB + 1

    @property
    def spec(self) -> str:
        return "byte"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")

    def hf_tokenizer(self) -> Any:
        """A merge-free byte-level BPE whose id for byte b is b (GPT-2's byte-to-character map)."""
        from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers

        chars = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
        by_byte = {_byte_char(b): b for b in range(BYTE_VOCAB)}
        assert set(by_byte) == set(chars)
        tok = HFTok(models.BPE(vocab=by_byte, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOS_TOKEN])
        return tok


@lru_cache(maxsize=1)
def _byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = [], 0
    for b in range(BYTE_VOCAB):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(BYTE_VOCAB + extra))
            extra += 1
    return out


def _byte_char(b: int) -> str:
    return _byte_chars()[b]


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (trained here or loaded from a directory)."""

    def __init__(self, tok: Any, source: str, eos_id: int, bos_id: int | None = None):
        self.tok, self.source, self.eos_id, self.bos_id = tok, source, eos_id, bos_id

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    @property
    def spec(self) -> str:
        return self.source

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def hf_tokenizer(self) -> Any:
        return self.tok

    @classmethod
    def load(cls, directory: str | Path) -> "HFTokenizer":
        """From ``tokenizer.json`` (+ ``tokenizer_config.json`` for the special tokens) in a directory."""
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer {str(d)!r}: no tokenizer.json there (need a fast HF tokenizer directory or 'byte')")
        from tokenizers import Tokenizer as HFTok

        tok = HFTok.from_file(str(d / "tokenizer.json"))
        conf_path = d / "tokenizer_config.json"
        conf = json.loads(conf_path.read_text()) if conf_path.is_file() else {}
        eos = _token_id(tok, conf.get("eos_token"))
        if eos is None:
            eos = next((i for i in map(tok.token_to_id, KNOWN_EOS) if i is not None), None)
        if eos is None:
            raise ValueError(f"tokenizer {str(d)!r}: no end-of-text token (set eos_token in tokenizer_config.json)")
        bos = _token_id(tok, conf.get("bos_token"))
        return cls(tok, str(d), eos, None if bos == eos else bos)


def _token_id(tok: Any, entry: Any) -> int | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} dicts."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    return tok.token_to_id(entry) if isinstance(entry, str) else None


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation, every byte in the alphabet) with ``<|endoftext|>`` = id 0."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    if vocab_size <= BYTE_VOCAB:
        raise ValueError(f"BPE vocab_size={vocab_size} must exceed the {BYTE_VOCAB} byte tokens")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, "bpe", tok.token_to_id(EOS_TOKEN))


def load_tokenizer(spec: str) -> Tokenizer:
    """``byte`` or a local HF tokenizer directory."""
    return ByteTokenizer() if spec == "byte" else HFTokenizer.load(spec)

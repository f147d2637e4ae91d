"""Tokenizers: byte-level ids are the UTF-8 bytes; a trained BPE round-trips any text; both save HF-loadable dirs."""

import json

import pytest

from archlab.data.sources import iter_documents
from archlab.tokenizers import EOS_TOKEN, ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe

TEXT = "def f(x):\n    return x ** 2  # größer — ✓ 🙂\n\tüber\r\n"
UNSEEN = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. 😀 \x00\x7f ½ ∑"


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(iter_documents([], "*.py", max_bytes=300_000), vocab_size=600)


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and tok.eos_id == 256
    assert tok.encode(TEXT) == list(TEXT.encode("utf-8"))
    assert tok.decode(tok.encode(TEXT) + [256]) == TEXT  # EOS renders as nothing


def test_byte_tokenizer_saves_an_equivalent_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    ByteTokenizer().save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in (TEXT, UNSEEN):
        assert hf(text, add_special_tokens=False)["input_ids"] == list(text.encode("utf-8"))
        assert hf.decode(list(text.encode("utf-8"))) == text
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == 256 and len(hf) == 257


def test_bpe_round_trips_and_compresses(bpe):
    assert bpe.vocab_size == 600 and bpe.decode([bpe.eos_id]) == EOS_TOKEN
    for text in (TEXT, UNSEEN, ""):
        assert bpe.decode(bpe.encode(text)) == text
    code = "\n".join(iter_documents([], "*.py", max_bytes=350_000))[300_000:]  # unseen stdlib text
    assert len(bpe.encode(code)) < 0.6 * len(code.encode()), "BPE should compress Python source"


def test_bpe_save_load_and_transformers_agree(bpe, tmp_path):
    from transformers import AutoTokenizer

    bpe.save(tmp_path)
    again = load_tokenizer(str(tmp_path))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ids = bpe.encode(UNSEEN)
    assert again.encode(UNSEEN) == ids and again.eos_id == bpe.eos_id
    assert hf(UNSEEN, add_special_tokens=False)["input_ids"] == ids and hf.decode(ids) == UNSEEN
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == EOS_TOKEN


def test_tokenizer_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="must exceed the 256 byte tokens"):
        train_bpe(iter(["abc"]), vocab_size=200)

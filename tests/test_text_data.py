"""Text data pipeline: readers, shards (deterministic, boundaries kept), packed sampling, the text task, CLI."""

import json

import numpy as np
import pytest
import torch

from archlab.config import ConfigError, load_config
from archlab.data.sampler import PackedSampler
from archlab.data.shards import load_prepared, prepare, split_of, tokenize_in_memory
from archlab.data.sources import iter_documents
from archlab.tasks import build_task
from archlab.tokenizers import ByteTokenizer

DOCS = [f"document {i}: " + "abc é ✓ " * (i % 7 + 1) for i in range(45)]


@pytest.fixture
def corpus_dir(tmp_path):
    """The 45 DOCS spread over a text file, a jsonl, a parquet file and a saved-dataset directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0])
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS[1:20])))
    pq.write_table(pa.table({"text": DOCS[20:30]}), root / "sub" / "c.parquet")
    saved = tmp_path / "saved"  # the layout of datasets.Dataset.save_to_disk
    saved.mkdir()
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": DOCS[30:]}))
    (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return root, saved


def test_readers_yield_every_document_in_order(corpus_dir):
    root, saved = corpus_dir
    assert list(iter_documents([str(root), str(saved)], "*")) == DOCS
    cut = list(iter_documents([str(root)], "*", max_bytes=len(DOCS[0].encode()) + 5))
    assert cut == [DOCS[0], DOCS[1][:5]]
    with pytest.raises(ValueError, match="no string field 'body'"):
        list(iter_documents([str(root / "b.jsonl")], text_field="body"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_documents([str(root / "nope")]))


def test_shards_are_deterministic_keep_boundaries_and_match_memory(corpus_dir, tmp_path):
    root, saved = corpus_dir
    tok = ByteTokenizer()
    m1 = prepare(iter_documents([str(root), str(saved)], "*"), tok, tmp_path / "d1", val_fraction=0.1, shard_tokens=300)
    m2 = prepare(iter_documents([str(root), str(saved)], "*"), tok, tmp_path / "d2", val_fraction=0.1, shard_tokens=300)
    assert m1["splits"] == m2["splits"] and len(m1["splits"]["train"]) > 3  # same bytes (sha256), several shards
    assert [i for i in range(45) if split_of(i, 0.1) == "val"] == [0, 10, 20, 30, 40]
    loaded = load_prepared(tmp_path / "d1")
    memory = tokenize_in_memory(DOCS, tok, 0.1)
    for split in ("train", "val"):
        flat = np.concatenate(loaded.splits[split])
        np.testing.assert_array_equal(flat, memory.splits[split][0])
        docs = bytes(flat[flat != tok.eos_id].astype(np.uint8))  # EOS after every document, never inside one
        want = [d for i, d in enumerate(DOCS) if split_of(i, 0.1) == split]
        assert int((flat == tok.eos_id).sum()) == len(want) and flat[-1] == tok.eos_id
        assert tok.decode(flat.tolist()) == "".join(want) and docs == "".join(want).encode()
    (tmp_path / "d1" / "train_00001.bin").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="train_00001.bin: missing or not"):
        load_prepared(tmp_path / "d1")
    with pytest.raises(FileExistsError, match="already holds a prepared dataset"):
        prepare(iter(DOCS), tok, tmp_path / "d2")


def test_sampler_is_pure_covers_each_epoch_and_slices_consistently():
    arrays = [np.arange(1000), np.arange(5000, 5330)]  # windows never cross the shard boundary
    s = PackedSampler(arrays, seq_len=10)
    assert s.n_windows == 99 + 32
    a = s.batch(7, "train", 0, 3, 16)
    assert np.array_equal(a, s.batch(7, "train", 0, 3, 16))  # pure: a resumed run sees the same batch
    assert not np.array_equal(a, s.batch(7, "train", 1, 3, 16)) and not np.array_equal(a, s.batch(8, "train", 0, 3, 16))
    assert (np.diff(a, axis=1) == 1).all() and (a[:, 0] % 10 == 0).all()  # contiguous windows at multiples of T
    epoch = s.window_ids(7, "train", 0, 0, s.n_windows)
    assert sorted(epoch) == list(range(s.n_windows))  # without replacement within an epoch
    big = s.batch(7, "train", 0, 1, 8)  # global positions 8..15 = rows 8..15 of the size-16 batch at step 0
    assert np.array_equal(big, s.batch(7, "train", 0, 0, 16)[8:])
    with pytest.raises(ValueError, match="fewer than seq_len"):
        PackedSampler([np.arange(5)], seq_len=10)


def test_text_task_on_prepared_dataset_and_default(corpus_dir, tmp_path):
    root, saved = corpus_dir
    prepare(iter_documents([str(root), str(saved)], "*"), ByteTokenizer(), tmp_path / "ds", val_fraction=0.1)
    task = build_task(load_config(None, [f"data.dataset={tmp_path / 'ds'}", "train.seq_len=16"]).data, 16)
    tokens, mask, _ = task.batch("train", 0, 0, 5, 4)
    assert tokens.shape == (4, 17) and tokens.dtype == torch.int64 and mask.all() and task.vocab_size == 257
    assert torch.equal(tokens, task.batch("train", 0, 0, 5, 4)[0])
    masked = build_task(load_config(None, [f"data.dataset={tmp_path / 'ds'}", "data.doc_mask=true"]).data, 16)
    docs = masked.batch("train", 0, 0, 5, 4).doc_ids  # a new document right after every EOS
    ends = (tokens == 256).long()
    assert ends.sum() > 0 and torch.equal(docs[:, 1:] - docs[:, :-1], ends[:, :-1]) and (docs[:, 0] == 0).all()
    default = build_task(load_config(None, []).data, 64)  # Python stdlib sources, byte-level
    assert default.vocab_size == 257 and default.decode(default.encode("def f(): ✓")) == "def f(): ✓"
    ByteTokenizer().save(tmp_path / "tok")  # an HF tokenizer directory, tokenising the sources in memory
    hf = build_task(load_config(None, [f"data.paths=[{root},{saved}]", "data.glob='*'", "data.val_fraction=0.1", f"data.tokenizer={tmp_path / 'tok'}"]).data, 16)
    assert hf.vocab_size == 257 and hf.encode("é✓") == list("é✓".encode())
    assert torch.equal(hf.batch("val", 0, 0, 0, 4)[0], task.batch("val", 0, 0, 0, 4)[0])  # same ids, same split
    with pytest.raises(ConfigError, match="data.dataset brings its own corpus"):
        load_config(None, [f"data.dataset={tmp_path}", "data.tokenizer=x"])


def test_cli_prepare_then_train(corpus_dir, tmp_path):
    from typer.testing import CliRunner

    from archlab.cli import app

    root, _ = corpus_dir
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["data", "prepare", str(root), "--out", str(out), "--glob", "*", "--tokenizer", "bpe", "--vocab-size", "300"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert 257 < manifest["vocab_size"] <= 300 and manifest["tokenizer"] == "tokenizer" and (out / "tokenizer" / "tokenizer.json").is_file()
    again = CliRunner().invoke(app, ["data", "prepare", str(root), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a prepared dataset" in " ".join(again.output.split())
    res = CliRunner().invoke(app, ["train", f"data.dataset={out}", "model.d_model=32", "model.n_layers=1", "train.seq_len=16",
                                   "train.batch_size=4", "train.steps=3", f"out_dir={tmp_path}", "name=r", "train.eval_batches=1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["loss"] < 6.5  # ln 300 = 5.7 at init

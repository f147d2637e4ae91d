"""Shared machinery of the synthetic tasks: packing, split partition, determinism, names, sizes, decoding."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from archlab.config import ModelConfig
from archlab.model.lm import LM
from archlab.tasks import TASKS, build_task
from archlab.tasks.common import (
    PAD,
    Instances,
    NameVocab,
    greedy_complete,
    instance_split,
    pack_windows,
    sample_sizes,
    span_correct,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = {  # task configs small enough for fast tests, with their seq_len
    "depo1": ({"name": "depo", "n_max": 12, "k_max": 4, "mini_vocab": 10}, 128),
    "depo2": ({"name": "depo", "variant": "depo2", "n_max": 8, "k_max": 4}, 256),
    "brevo1": ({"name": "brevo", "n_max": 12}, 128),
    "brevo2": ({"name": "brevo", "variant": "brevo2", "n_max": 8}, 256),
    "mano": ({"name": "mano", "l_max": 4}, 64),
    "lano": ({"name": "lano", "levels": 4, "target_len": 30}, 128),
    "capo": ({"name": "capo", "n_people": 300, "n_first": 10, "n_middle": 10, "n_last": 20, "n_years": 20,
              "n_cities": 10, "n_universities": 10, "n_majors": 10, "n_employers": 10}, 256),
}  # fmt: skip
HASH_SPLIT = [k for k in SMALL if k != "capo"]


def small_task(key: str, **extra):
    data, seq_len = SMALL[key]
    return build_task(TASKS.validate({**data, **extra}), seq_len)


@pytest.fixture(scope="module", params=list(SMALL))
def task(request):
    return small_task(request.param)


def test_batch_shapes_vocab_and_masks(task):
    for packing in ("truncate", "pad"):
        tokens, mask, tag, _ = task.windows("train", 0, 0, 3, 8, packing=packing)
        assert tokens.shape == mask.shape == tag.shape == (8, task.seq_len + 1)
        assert tokens.min() >= 0 and tokens.max() < task.vocab_size
        assert not mask[tokens == PAD].any()
        first = task.instances("train", 0, 0, 3, 1)[0][0]
        assert (tokens[:, 0] == first).all()  # every window starts with an instance's first token (<bos>)
    tokens, mask, _ = task.batch("train", 0, 0, 3, 8)
    assert tokens.dtype == torch.long and mask.dtype == torch.bool and mask[:, 1:].any()


def test_doc_ids_mark_every_instance(task):
    """Windows number their instances 0, 1, ...: a new id exactly where an instance (its <bos>) starts."""
    bos = task.instances("train", 0, 0, 3, 1)[0][0]
    for packing in ("truncate", "pad"):
        win = task.windows("train", 0, 0, 3, 8, packing=packing)
        step = np.diff(win.doc, axis=1)
        assert (win.doc[:, 0] == 0).all() and ((step == 0) | (step == 1)).all()
        real = win.tokens[:, 1:] != PAD
        assert np.array_equal((step == 1) & real, (win.tokens[:, 1:] == bos) & real)
        assert step.sum() >= 8  # several instances per window: the check above has boundaries to find


def test_batch_carries_doc_ids_only_with_doc_mask():
    plain, masked = small_task("depo1"), small_task("depo1", doc_mask=True)
    a, b = plain.batch("train", 0, 0, 2, 4), masked.batch("train", 0, 0, 2, 4)
    assert a.doc_ids is None and torch.equal(a.tokens, b.tokens) and torch.equal(a.loss_mask, b.loss_mask)
    assert torch.equal(b.doc_ids, torch.from_numpy(masked.windows("train", 0, 0, 2, 4).doc))


def test_batches_are_pure_functions_of_their_arguments(task):
    ref = task.batch("train", 1, 0, 5, 4)
    same = task.batch("train", 1, 0, 5, 4)
    assert all(torch.equal(a, b) for a, b in zip(ref[:2], same[:2])) and ref.doc_ids is None
    for args in [("train", 1, 0, 6), ("train", 1, 1, 5), ("train", 2, 0, 5), ("val", 1, 0, 5), ("test", 1, 0, 5)]:
        assert not torch.equal(task.batch(*args, 4)[0], ref[0]), args


@pytest.mark.parametrize("key", HASH_SPLIT)
def test_splits_never_share_an_instance(key):
    task = small_task(key)
    seen = {}
    for i, split in enumerate(("train", "val", "test")):
        inst = task.instances(split, 0, 0, 0, 3000 if split == "train" else 1000)
        assert (task.split_of(inst) == i).all()
        seen[split] = {tuple(x.tolist()) for x in inst}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


def test_hash_partition_is_80_10_10_and_seed_free():
    task = small_task("depo1")
    inst = task.generate(np.random.default_rng(0), "train", 20000)
    frac = np.bincount(instance_split(inst), minlength=3) / len(inst)
    assert np.allclose(frac, [0.8, 0.1, 0.1], atol=0.015)
    # a function of the tokens alone: the same instance in another batch gets the same split
    sub = inst.select(np.arange(len(inst)) % 7 == 3)
    assert np.array_equal(instance_split(sub), instance_split(inst)[np.arange(len(inst)) % 7 == 3])


def _instances(lengths: list[int]) -> Instances:
    """Instance i = [100+i, 50+i, 50+i, ...] of the given length; mask on all but the first token, tag = i+1."""
    toks = np.concatenate([np.r_[100 + i, np.full(n - 1, 50 + i)] for i, n in enumerate(lengths)]).astype(np.int64)
    mask = np.concatenate([np.r_[False, np.ones(n - 1, bool)] for n in lengths])
    tag = np.concatenate([np.full(n, i + 1, np.int32) for i, n in enumerate(lengths)])
    return Instances(toks, mask, tag, np.array(lengths, np.int64))


def _stream(lengths: list[int]):
    inst, pos = _instances(lengths), [0]

    def draw(count: int) -> Instances:
        part = inst.select((np.arange(len(inst)) >= pos[0]) & (np.arange(len(inst)) < pos[0] + count))
        pos[0] += count
        return part

    return draw


def test_truncate_packing_cuts_only_the_last_instance_and_restarts_at_the_next():
    lengths = [4, 3, 5, 6, 2, 7, 3, 3, 4, 5] * 3
    tokens, mask, tag, _ = pack_windows(_stream(lengths), 4, 8, "truncate", 2.0)
    # window 0: inst 0 (4) + inst 1 (3) + 1 token of inst 2 -> window 1 starts with inst 3
    assert tokens[0].tolist() == [100, 50, 50, 50, 101, 51, 51, 102]
    assert tokens[1].tolist() == [103, 53, 53, 53, 53, 53, 104, 54]  # inst 3 (6) + inst 4 (2): fits exactly
    assert tokens[2].tolist() == [105, 55, 55, 55, 55, 55, 55, 106]
    assert tokens[3, 0] == 107 and (tag[3, :3] == 8).all() and not mask[:, 0].any()


def test_pad_packing_keeps_whole_instances_and_masks_the_pad():
    tokens, mask, tag, _ = pack_windows(_stream([4, 3, 5, 6, 2, 7, 8] * 3), 4, 8, "pad", 2.0)
    assert tokens[0].tolist() == [100, 50, 50, 50, 101, 51, 51, PAD]
    assert tokens[1].tolist() == [102, 52, 52, 52, 52, PAD, PAD, PAD]
    assert tokens[2].tolist() == [103, 53, 53, 53, 53, 53, 104, 54]
    assert tokens[3].tolist() == [105, 55, 55, 55, 55, 55, 55, PAD]
    assert not mask[tokens == PAD].any() and (tag[tokens == PAD] == 0).all()


def test_instances_that_cannot_fit_a_window_are_refused():
    with pytest.raises(RuntimeError, match="no instance fits"):
        pack_windows(lambda count: Instances.empty(), 1, 8, "truncate", 2.0)


def test_size_law():
    n_max, draws = 50, 200_000
    n = sample_sizes(np.random.default_rng(0), 3, n_max, draws)
    support = np.arange(3, n_max + 1)
    expected = 1 / (support + math.sqrt(n_max))
    expected /= expected.sum()
    assert n.min() >= 3 and n.max() <= n_max
    assert np.abs(np.bincount(n, minlength=n_max + 1)[3:] / draws - expected).max() < 0.003


@pytest.mark.parametrize("min_len,max_len,v", [(1, 2, 5), (5, 7, 4), (2, 4, 4), (1, 1, 30)])
def test_names_are_distinct_well_formed_and_parse_back(min_len, max_len, v):
    names = NameVocab(10, v, min_len, max_len)
    counts = np.array([names.n_names if max_len == 1 else min(names.n_names, 25), 3, 1, 17])
    table, lens = names.sample(np.random.default_rng(0), counts)
    assert len(table) == len(lens) == counts.sum() and lens.min() >= min_len and lens.max() <= max_len
    start = 0
    for c in counts:
        group = [tuple(table[i, : lens[i]]) for i in range(start, start + c)]
        assert len(set(group)) == c
        for name in group:
            assert all(names.is_name(t) and not names.is_final(t) for t in name[:-1]) and names.is_final(name[-1])
        assert names.split([t for g in group for t in g]) == group
        start += c
    with pytest.raises(ValueError):
        names.split(list(table[0, : lens[0] - 1]) if lens[0] > 1 else [9])


def test_names_follow_sequential_rejection():
    """Same length mix as a plain-Python 'draw a name, drop it if taken' loop (1-token names run out)."""
    names, groups, size = NameVocab(1, 5, 1, 2), 2000, 10
    _, lens = names.sample(np.random.default_rng(0), np.full(groups, size))
    rng, singles = np.random.default_rng(1), 0
    for _ in range(groups):
        got: set[tuple[int, ...]] = set()
        while len(got) < size:
            ln = rng.integers(1, 3)
            got.add(tuple(rng.integers(0, 5, ln - 1)) + (int(rng.integers(5, 10)),))
        singles += sum(len(n) == 1 for n in got)
    assert abs((lens == 1).sum() / groups - singles / groups) < 0.1
    assert (lens == 1).sum() / groups > 10 * 5 / 30 + 1  # far above uniform-over-names (1.7 per group)


def test_span_correct_groups_runs_per_row():
    tag = np.array([[0, 2, 2, 0, 3, 3], [3, 0, 0, 1, 1, 1]])
    ok = np.array([[1, 1, 1, 0, 1, 0], [1, 0, 0, 1, 1, 1]], bool)
    t, c = span_correct(tag, ok)
    assert t.tolist() == [2, 3, 3, 1] and c.tolist() == [True, False, True, True]


def test_greedy_complete_equals_generate_row_by_row():
    torch.manual_seed(0)
    model = LM(ModelConfig(vocab_size=11, d_model=32, n_layers=2, mixer={"name": "attention", "n_heads": 2}))
    prompts = [np.array([1, 4, 5, 6, 2]), np.array([1, 7]), np.array([1, 3, 3, 9])]
    out = greedy_complete(model, prompts, max_new=6, eos_id=10)
    for p, o in zip(prompts, out):
        ref = model.generate(torch.tensor(p)[None], 6)[0, len(p) :].tolist()
        cut = ref.index(10) + 1 if 10 in ref else len(ref)
        assert o.tolist() == ref[:cut]


def test_every_task_decodes(task):
    text = task.decode(task.instances("train", 0, 0, 0, 2)[0].tolist())
    assert isinstance(text, str) and len(text) > 5


EXPECTED_METRICS = {"depo": "acc_k1", "brevo": "acc", "capo": "bits_per_param", "mano": "acc_l2", "lano": "gen_acc"}


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_tiny_recipes_train_and_evaluate_end_to_end(tmp_path, name):
    from archlab.config import load_config
    from archlab.train import train

    overrides = [f"out_dir={tmp_path}", "name=t", "train.steps=2", "train.batch_size=4", "train.eval_every=0", "train.eval_batches=1", "model.canon="]
    res = train(load_config(ROOT / "configs" / f"{name}_tiny.yaml", overrides), resume="never")
    assert EXPECTED_METRICS[name] in res.eval and math.isfinite(res.eval["loss"])

"""Capo: biographies read back to the true attributes, population properties, tags, the bits formula."""

import math

import numpy as np
import pytest
import torch

from archlab.tasks import TASKS, build_task
from archlab.tasks.capo import ATTRS, TAG_NAME, check, knowledge_bits, parse_biography

SMALL = {"n_people": 300, "n_first": 10, "n_middle": 10, "n_last": 20, "n_years": 20, "n_cities": 10,
         "n_universities": 10, "n_majors": 10, "n_employers": 10}  # fmt: skip


def make(seq_len: int = 256, **kw):
    return build_task(TASKS.validate({"name": "capo", **SMALL, **kw}), seq_len)


@pytest.fixture(scope="module")
def task():
    return make()


def test_every_biography_states_the_true_attributes(task):
    people = set()
    for split in ("train", "test"):  # all splits render the same population
        for tokens in task.instances(split, 0, 0, 0, 400):
            tokens = tokens.tolist()
            assert check(tokens, task)
            people.add(parse_biography(tokens, task)[0])
    assert len(people) > 230  # people are drawn uniformly: most of the 300 appear


def test_checker_rejects_a_wrong_value(task):
    tokens = task.instances("train", 0, 0, 0, 1)[0].tolist()
    city = task.ids[task.cities[0]], task.ids[task.cities[1]]
    i = next(i for i, t in enumerate(tokens) if t in city and i > 3)
    bad = tokens[:i] + [city[1] if tokens[i] == city[0] else city[0]] + tokens[i + 1 :]
    assert check(tokens, task) and not check(bad, task)


def test_population_is_fixed_unique_and_consistent():
    a, b, c = make(), make(), make(population_seed=1)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.name_idx, b.name_idx)
    assert not np.array_equal(a.values, c.values)
    assert len({tuple(r) for r in a.name_idx}) == a.cfg.n_people  # unique full names
    assert np.array_equal(a.values[:, 5], a.hq[a.values[:, 4]])  # work city = employer's headquarters
    assert a.words == b.words and len(set(a.words)) == len(a.words)


def test_sentence_structure_and_tags(task):
    tokens, mask, tag, _ = task.windows("train", 0, 0, 0, 4, packing="pad")
    bos = task.ids["<bos>"]
    for row, tg in zip(tokens, tag):
        starts = np.nonzero(row == bos)[0]
        for s in starts:
            assert (tg[s + 1 : s + 4] == TAG_NAME).all()  # the full name opens the biography
        assert (tg == TAG_NAME).sum() == 3 * len(starts)
        for a in range(len(ATTRS)):  # each attribute value once per biography
            runs = np.diff(np.r_[0, (tg == 2 + a).astype(int)]) == 1
            assert runs.sum() == len(starts)
        words = task.decode(row[: starts[1] if len(starts) > 1 else None].tolist())
        assert words.count(".") == 6 and (" He " in words or " She " in words)
    assert mask[tokens != 0].all()


def test_fixed_sentence_order_without_shuffle():
    task = make(shuffle_sentences=False)
    inst = task.instances("train", 0, 0, 0, 20)
    off = inst.offsets
    for i in range(len(inst)):
        order = [t - 2 for t in dict.fromkeys(inst.tag[off[i] : off[i + 1]].tolist()) if t >= 2]
        assert order == list(range(len(ATTRS))) and check(inst[i].tolist(), task)


def test_bits_formula():
    n, n0 = 1000, 10**6
    attrs = {"a": (0.0, 64), "b": (math.log(8), 64), "c": (10.0, 64)}  # perfect, 3 bits missing, worse than uniform
    expect = n * math.log2((n0 - n) / n) + n * 6 + n * 3 + 0
    assert knowledge_bits(n, n0, math.log(n), attrs) == pytest.approx(expect)
    assert knowledge_bits(n, n0, 100.0, {}) == 0.0


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(10))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab), None


def test_evaluate_uniform_model_stores_nothing(task):
    res = task.evaluate(Uniform(task.vocab_size), seed=0, n_batches=1, batch_size=4)
    v = math.log(task.vocab_size)
    assert res["bits"] == 0.0 and res["params"] == 10 and res["loss_name"] == pytest.approx(3 * v, rel=1e-5)
    assert res["loss_birth_date"] == pytest.approx(4 * v, rel=1e-5) and res["loss_university"] == pytest.approx(2 * v, rel=1e-5)
    assert all(res[f"acc_{a}"] == 0.0 for a in ATTRS)


def test_encode_decode_round_trip(task):
    tokens = task.instances("train", 0, 0, 0, 1)[0].tolist()
    text = task.decode(tokens)
    assert task.encode(text) == tokens[1:]  # <bos> renders as a line break

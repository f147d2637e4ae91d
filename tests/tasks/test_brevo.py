"""Brevo: DAG instances verified independently, answer checking, exact loss masks, exact evaluation."""

import pytest
import torch

from archlab.config import ModelConfig
from archlab.model.lm import LM
from archlab.tasks import TASKS, build_task
from archlab.tasks.brevo import ANS, EOS, BrevoConfig, answer_ok, check, graph_depth, parse_problem, required


def make(seq_len: int = 256, **kw):
    return build_task(TASKS.validate({"name": "brevo", **kw}), seq_len)


@pytest.mark.parametrize("kw,seq_len", [({"n_max": 20}, 256), ({"variant": "brevo2", "n_max": 12}, 512)])
def test_every_instance_is_a_bounded_dag_with_a_correct_answer(kw, seq_len):
    task = make(seq_len, **kw)
    for split, count in (("train", 1000), ("test", 150)):
        sizes = []
        for tokens in task.instances(split, 0, 0, 0, count):
            tokens = tokens.tolist()
            assert check(tokens, task)
            edges, q = parse_problem(tokens, task)
            sizes.append(len({x for e in edges for x in e}))  # leaves without children are not mentioned
            answer = task.names.split(tokens[tokens.index(ANS) + 1 : -1])
            parents = {c for _, c in edges}
            assert answer[0] not in parents and answer[-1] == q and q in parents  # leaves first, q (not a leaf) last
        assert max(sizes) == task.cfg.n_max and (split == "train" or min(sizes) > task.cfg.n_max * 0.7)


def test_answer_checker_rejects_every_kind_of_mistake():
    task = make(n_max=15)
    tokens = next(t.tolist() for t in task.instances("test", 0, 0, 0, 50) if len(required(*parse_problem(t.tolist(), task))) >= 3)
    edges, q = parse_problem(tokens, task)
    good = tokens[tokens.index(ANS) + 1 :]
    names = task.names.split(good[:-1])
    flat = lambda ns: [t for n in ns for t in n]  # noqa: E731
    outsider = next(x for e in edges for x in e if x not in required(edges, q))
    assert answer_ok(edges, q, good, task) and answer_ok(edges, q, good[:-1], task)
    assert not answer_ok(edges, q, flat(names[::-1]), task)  # q first: not a topological order
    assert not answer_ok(edges, q, flat(names[1:]), task)  # a node missing
    assert not answer_ok(edges, q, flat(names[:1] + names), task)  # a node twice
    assert not answer_ok(edges, q, flat([outsider] + names), task)  # a node not required
    assert not answer_ok(edges, q, good[:-1] + [ANS], task)  # a non-name token
    assert not check(tokens[:-1], task)  # no <eos>


def test_required_set_and_depth_on_a_hand_made_graph():
    a, b, c, d, e = [(i,) for i in range(5)]
    edges = [(a, c), (b, c), (c, d), (a, d), (e, b)]  # e -> b -> c -> d, a -> c, a -> d
    assert required(edges, d) == {a, b, c, d, e} and required(edges, c) == {a, b, c, e}
    assert graph_depth(edges, d) == 1  # d -> a is the nearest leaf
    assert graph_depth(edges, b) == 1 and graph_depth(edges, e) == 0


def test_loss_mask_is_exactly_ans_to_eos():
    task = make(n_max=16)
    tokens, mask, _, _ = task.windows("train", 0, 0, 0, 16, packing="pad")
    for row, m in zip(tokens.tolist(), mask.tolist()):
        inside, expect = False, []
        for t in row:
            inside = inside or t == ANS
            expect.append(inside)
            inside = inside and t != EOS
        assert m == expect


def test_presets_and_vocab():
    b2 = BrevoConfig(variant="brevo2")
    assert (b2.n_max, b2.name_min_len, b2.name_max_len, b2.mini_vocab) == (30, 2, 4, 4)
    assert make(1024, n_max=110).vocab_size == 5 + 110  # 4 specials + pad, names = ids of 1..N
    assert make(1536, variant="brevo2").vocab_size == 5 + 8


class Oracle(torch.nn.Module):
    """Answers Brevo from the prompt: after <ans>, emits the required nodes in topological order, then <eos>."""

    def __init__(self, task, reverse: bool = False):
        super().__init__()
        self.task, self.reverse = task, reverse
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def answer(self, prompt: list[int]) -> list[int]:
        edges, q = parse_problem(prompt, self.task)
        need, order = required(edges, q), []
        while len(order) < len(need):  # repeatedly take a node whose parents are all placed
            order.append(next(x for x in sorted(need - set(order)) if all(p in order for p, c in edges if c == x)))
        order = order[::-1] if self.reverse else order
        return [t for n in order for t in n] + [EOS]

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.task.vocab_size)
        for r, row in enumerate(ids.tolist()):
            if ANS in row:
                a = row.index(ANS)
                ans = self.answer(row[: a + 1])
                for t in range(a, len(row)):
                    logits[r, t, ans[min(t - a, len(ans) - 1)]] = 1.0
        return logits, None


def test_evaluate_is_exact_for_an_oracle_and_zero_for_a_wrong_order():
    task = make(256, n_max=12)
    res = task.evaluate(Oracle(task), seed=0, n_batches=2, batch_size=3)
    assert res["acc"] == 1.0 and any(k.startswith("acc_depth") for k in res) and any(k.startswith("acc_size_le") for k in res)
    assert task.evaluate(Oracle(task, reverse=True), seed=0, n_batches=1, batch_size=3)["acc"] == 0.0
    lm = LM(ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=1, mixer={"name": "attention", "n_heads": 2}))
    assert task.evaluate(lm, seed=0, n_batches=1, batch_size=2)["acc"] == 0.0

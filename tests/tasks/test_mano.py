"""Mano: every answer re-derived by a recursive-descent evaluator, tree statistics, masks, exact evaluation."""

from collections import Counter

import numpy as np
import torch

from archlab.tasks import TASKS, build_task
from archlab.tasks.mano import ANS, BOS, LEN0, OP0, check, evaluate_prefix


def make(seq_len: int = 256, **kw):
    return build_task(TASKS.validate({"name": "mano", **kw}), seq_len)


def test_independent_evaluator_agrees_with_every_answer():
    task = make(l_max=10)
    insts = task.instances("train", 0, 0, 0, 5000)
    lengths, ops = Counter(), Counter()
    for tokens in insts:
        tokens = tokens.tolist()
        assert check(tokens, task)
        lengths[tokens[1] - LEN0 + 1] += 1
        ops.update(t - OP0 for t in tokens[2:-2] if OP0 <= t < LEN0)
    assert set(lengths) == set(range(1, 11)) and min(lengths.values()) > 350  # ℓ ~ U{1..L}
    assert max(ops.values()) / min(ops.values()) < 1.1  # operations uniform over + - *
    test = task.instances("test", 0, 0, 0, 500)
    assert all(check(t.tolist(), task) for t in test)
    assert set((test.lengths - 5) // 2) == set(range(2, 11))  # one-op expressions (the tables) only train


def test_operation_tables_are_all_in_train():
    task = make(l_max=2, mod=5)
    facts = {tuple(t.tolist()) for t in task.instances("train", 0, 0, 0, 4000) if len(t) == 7}
    assert len(facts) == 3 * 5 * 5


def test_hand_computed_expression_and_a_wrong_answer():
    task = make(l_max=3)
    v = lambda x: task.val0 + x  # noqa: E731
    plus, minus, times = OP0, OP0 + 1, OP0 + 2
    expr = [plus, times, v(3), v(4), minus, v(5), v(7)]  # (3*4) + (5-7) = 10 mod 23
    assert evaluate_prefix(expr, task) == (10, 3)
    assert check([BOS, LEN0 + 2, *expr, ANS, v(10)], task)
    assert not check([BOS, LEN0 + 2, *expr, ANS, v(11)], task)
    assert not check([BOS, LEN0 + 1, *expr, ANS, v(10)], task)  # wrong length marker
    assert evaluate_prefix([times, v(22), v(22)], task) == (1, 1)  # (-1)(-1)


def test_subtree_sizes_split_uniformly():
    """ℓ=2 expressions: the second op sits left ("op op a b c") or right ("op a op b c") equally often."""
    task = make(l_max=2)
    shapes = Counter()
    for tokens in task.instances("train", 0, 0, 0, 4000):
        if tokens[1] == LEN0 + 1:
            shapes[bool(OP0 <= tokens[3] < LEN0)] += 1
    assert abs(shapes[True] - shapes[False]) < 0.1 * sum(shapes.values())


def test_loss_on_all_tokens_or_answer_only():
    all_tok = make(l_max=4)
    tokens, mask, tag, _ = all_tok.windows("train", 0, 0, 0, 8)
    assert mask.all()  # truncate packing: every position is an instance token
    ans = make(l_max=4, loss_on="answer")
    tokens, mask, tag, _ = ans.windows("train", 0, 0, 0, 8)
    after_ans = np.zeros_like(mask)
    after_ans[:, 1:] = tokens[:, :-1] == ANS
    assert np.array_equal(mask, after_ans) and np.array_equal(tag > 0, after_ans)


class Oracle(torch.nn.Module):
    """Predicts the value after every <ans> by evaluating the expression before it."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.task.vocab_size)
        for r, row in enumerate(ids.tolist()):
            for i, t in enumerate(row):
                if t == ANS:
                    start = max(j for j in range(i) if row[j] == BOS)
                    logits[r, i, self.task.val0 + evaluate_prefix(row[start + 2 : i], self.task)[0]] = 1.0
        return logits, None


def test_evaluate_is_exact_for_an_oracle():
    task = make(128, l_max=4)
    res = task.evaluate(Oracle(task), seed=0, n_batches=2, batch_size=4)
    assert res["acc"] == 1.0 and set(res) == {"acc", "acc_l2", "acc_l3", "acc_l4"}
    assert all(v == 1.0 for v in res.values())

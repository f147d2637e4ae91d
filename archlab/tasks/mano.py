"""Mano: knowledge manipulation — modular arithmetic in prefix notation [spec §2.4; P App A.4].

An instance with ℓ operations::

    <bos> <len_ℓ> + * a b - c d <ans> v        v = ((a*b) + (c-d)) mod p

ℓ ~ U{1..L} (val/test: U{2..L}, see Splits); the expression tree is built top-down: each operation is
uniform over {+, −, ×} and splits the remaining ℓ−1 operations uniformly between its left and right
subtree; operands are uniform over 0..p−1.
Loss on all tokens (spec), or with ``loss_on="answer"`` on the answer value only. Evaluation: accuracy of
the answer token per ℓ; the headline ``acc`` is at ℓ = L (the spec's test length).

Splits: expressions are partitioned by hash like the other tasks, except the one-operation ones: those are
the p×p operation tables — knowledge, not a skill to generalise to — so all of them train.

Left out of the released generator's options: division (off there by default) and the "knowledge augment"
aliases (several ids per operation / marker, picked at random).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from archlab.tasks import register_task
from archlab.tasks.common import (
    PAD,
    Instances,
    SyntheticConfig,
    SyntheticTask,
    build_instances,
    grouped_mean,
    instance_split,
    teacher_forced,
)

BOS, ANS = 1, 2
OP0 = 3  # +, -, *
OPS = "+-*"
LEN0 = OP0 + len(OPS)  # <len_ℓ> = LEN0 + ℓ - 1


class ManoConfig(SyntheticConfig):
    name: Literal["mano"] = "mano"
    l_max: int = Field(10, ge=1, description="L: operations per expression are drawn from 1..L (paper: 10, 13, 16)")
    mod: int = Field(23, ge=2, description="p: arithmetic mod p")
    loss_on: Literal["all", "answer"] = "all"


def apply_op(op: np.ndarray | int, a: np.ndarray | int, b: np.ndarray | int, mod: int) -> np.ndarray | int:
    """(a op b) mod p with op 0/1/2 = +/−/×."""
    return np.where(op == 0, a + b, np.where(op == 1, a - b, a * b)) % mod


@register_task("mano", ManoConfig)
class ManoTask(SyntheticTask):
    cfg: ManoConfig

    def __init__(self, cfg: ManoConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        self.val0 = LEN0 + cfg.l_max  # value v = val0 + v

    @property
    def vocab_size(self) -> int:
        return self.val0 + self.cfg.mod

    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        c, m = self.cfg, count
        rows = np.arange(m)
        ell = rng.integers(1 if split == "train" or c.l_max == 1 else 2, c.l_max + 1, m)  # [M] operations
        width = 2 * c.l_max + 1  # ℓ ops take 2ℓ+1 prefix positions; arrays below are position-major [W, M]
        # subtree sizes (ops) top-down in prefix order: an op at p with size s puts its left subtree (size
        # a ~ U{0..s-1}) at p+1 and its right one (size s-1-a) right after the left, at p+2+2a
        size = np.zeros(width * m, np.int64)  # flat [W, M]
        size[:m] = ell
        right = np.zeros((width, m), np.int64)  # position of the right child
        split_u = rng.random((width, m))
        for p in range(width - 1):
            s = size[p * m : (p + 1) * m]
            a = (split_u[p] * s).astype(np.int64)
            right[p] = np.minimum(p + 2 + 2 * a, width - 1)
            size[(p + 1) * m + rows] = np.where(s > 0, a, size[(p + 1) * m + rows])
            has = np.nonzero(s)[0]
            size[right[p, has] * m + has] = s[has] - 1 - a[has]
        is_op = size.reshape(width, m) > 0
        op = rng.integers(0, len(OPS), (width, m))
        operand = rng.integers(0, c.mod, (width, m))
        # values bottom-up (right to left): an op combines the values at p+1 and at its right child
        value = operand.copy()
        for p in range(width - 3, -1, -1):
            x, y = value[p + 1], value[right[p], rows]
            combined = np.choose(op[p], (x + y, x - y, x * y)) % c.mod
            value[p] = np.where(is_op[p], combined, operand[p])
        expr = np.where(is_op, OP0 + op, self.val0 + operand).T  # [M, W]
        value = value[0]
        items = np.concatenate(
            [np.full((m, 1), BOS), (LEN0 + ell - 1)[:, None], expr, np.full((m, 1), ANS), (self.val0 + value)[:, None]], axis=1
        )
        valid = np.concatenate([np.ones((m, 2), bool), np.arange(width)[None, :] < 2 * ell[:, None] + 1, np.ones((m, 2), bool)], axis=1)
        tag = np.zeros(items.shape, np.int64)
        tag[:, -1] = ell
        mask = valid if c.loss_on == "all" else tag > 0
        return build_instances(items, valid, mask, tag)

    def split_of(self, inst: Instances) -> np.ndarray:
        """One-operation expressions are the operation tables, knowledge every later expression needs: they all
        train (val/test draw ℓ >= 2). Longer expressions are partitioned by hash as usual."""
        out = instance_split(inst)
        if self.cfg.l_max > 1:
            out[inst.lengths == 2 * 1 + 5] = 0  # <bos> <len> op a b <ans> v
        return out

    def evaluate(self, model: Any, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Teacher-forced accuracy of the answer value per expression length ℓ (``acc_l{ℓ}``); ``acc`` = at ℓ = L."""
        lens, hits = [], []
        for b in range(n_batches):
            tokens, _, tag, doc = self.windows("test", seed, 0, b, batch_size, packing="pad")
            pred, _ = teacher_forced(model, tokens, self.doc_ids_if_masked(doc))
            tg = tag[:, 1:]
            lens.append(tg[tg > 0]), hits.append((pred == tokens[:, 1:])[tg > 0])
        out = grouped_mean(np.concatenate(lens), np.concatenate(hits), "acc_l")
        return {"acc": out.get(f"acc_l{self.cfg.l_max}", float("nan")), **out}

    def decode(self, tokens: list[int]) -> str:
        def one(t: int) -> str:
            if t >= self.val0:
                return str(t - self.val0)
            if t >= LEN0:
                return f"<len{t - LEN0 + 1}>"
            if t >= OP0:
                return OPS[t - OP0]
            return {PAD: "<pad>", BOS: "\n<bos>", ANS: "<ans>"}[t]

        return " ".join(one(int(t)) for t in tokens)


def evaluate_prefix(tokens: list[int], task: ManoTask) -> tuple[int, int]:
    """Independent solver: recursive-descent parse of one prefix expression -> (value, number of operations)."""
    pos = 0

    def parse() -> tuple[int, int]:
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t >= task.val0:
            return t - task.val0, 0
        if not OP0 <= t < LEN0:
            raise ValueError(f"unexpected token {t}")
        (a, na), (b, nb) = parse(), parse()
        return int(apply_op(t - OP0, a, b, task.cfg.mod)), na + nb + 1

    value, n_ops = parse()
    if pos != len(tokens):
        raise ValueError("trailing tokens after the expression")
    return value, n_ops


def check(tokens: list[int], task: ManoTask) -> bool:
    """True iff ``<bos> <len_ℓ> expr <ans> v`` has ℓ operations and v is its value."""
    try:
        value, n_ops = evaluate_prefix(tokens[2:-2], task)
    except (ValueError, IndexError):
        return False
    return tokens[0] == BOS and tokens[1] == LEN0 + n_ops - 1 and tokens[-2] == ANS and tokens[-1] == task.val0 + value

"""Depo: mental reasoning depth — k-hop lookup on a permutation cycle [spec §2.1; P App A.1].

An instance (n nodes with distinct multi-token names, a random directed cycle over them)::

    <bos> x1 y1 ... xn yn  <q_k1> s1 <ans> a1  ...  <q_kt> st <ans> at

lists the n edges "x -> y" in random order, then t = min(n_queries, n) queries on distinct start nodes s_j,
each asking for the k_j-th successor a_j, k_j ~ U[1, K]. Loss on ``<ans>`` and the answer tokens (spec; the
released code labels the same tokens). Train sizes n ~ P(n) ∝ 1/(n+√N) on {n_min..N}; test uses n = N.

Variants: depo1 = names of 1–2 tokens over vocab 50, N ∈ {225, 300, 375}, K = 8; depo2 = names of 5–7
tokens over vocab 4 (the paper's value; the released code defaults to 3), N ∈ {75, 100, 125}, K = 16.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from archlab.tasks import register_task
from archlab.tasks.common import (
    check_name_space,
    PAD,
    Instances,
    NameVocab,
    SyntheticConfig,
    SyntheticTask,
    apply_preset,
    build_instances,
    grouped_mean,
    node_names,
    random_perm_rows,
    render_tokens,
    sample_sizes,
    span_correct,
    teacher_forced,
)

BOS, ANS, SEP = 1, 2, 3
QUERY0 = 4  # <q_k> = QUERY0 + k - 1

DEPO_PRESETS: dict[str, dict[str, Any]] = {
    "depo1": dict(n_max=225, k_max=8, name_min_len=1, name_max_len=2, mini_vocab=50),
    "depo2": dict(n_max=75, k_max=16, name_min_len=5, name_max_len=7, mini_vocab=4),
}


class DepoConfig(SyntheticConfig):
    name: Literal["depo"] = "depo"
    variant: Literal["depo1", "depo2"] = Field("depo1", description="preset for the fields below that are not given")
    n_max: int = Field(225, ge=3, description="N: largest cycle; test instances use n = N")
    n_min: int = Field(3, ge=2)
    k_max: int = Field(8, ge=1, description="K: hops are drawn from 1..K")
    name_min_len: int = Field(1, ge=1)
    name_max_len: int = Field(2, ge=1)
    mini_vocab: int = Field(50, ge=2, description="choices per name token (inner and final ids each)")
    n_queries: int = Field(10, ge=1, description="queries per instance: min(n_queries, n)")
    edge_sep: bool = Field(False, description="end every edge with <sep> (the released code's option; off in the paper)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(cls, data, DEPO_PRESETS)

    @model_validator(mode="after")
    def _check(self) -> "DepoConfig":
        check_name_space(self.n_min, self.n_max, self.name_min_len, self.name_max_len, self.mini_vocab)
        return self


@register_task("depo", DepoConfig)
class DepoTask(SyntheticTask):
    cfg: DepoConfig

    def __init__(self, cfg: DepoConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        self.names = NameVocab(QUERY0 + cfg.k_max, cfg.mini_vocab, cfg.name_min_len, cfg.name_max_len)
        self.n_special = QUERY0 + cfg.k_max

    @property
    def vocab_size(self) -> int:
        return self.n_special + self.names.n_tokens

    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        c = self.cfg
        n = np.full(count, c.n_max) if split == "test" else sample_sizes(rng, c.n_min, c.n_max, count)  # [M]
        # node j of instance i is cycle position j (its name is random); edge j: j -> succ j
        table, table_len, node_row = node_names(rng, self.names, n, self.n_special)  # node_row [M, W]
        m, w, q = count, int(n.max()), c.n_queries
        rows = np.arange(m)[:, None]
        succ = (np.arange(w)[None, :] + 1) % n[:, None]  # [M, W]
        edge = random_perm_rows(rng, n, w)  # [M, W] edge order
        per_edge = 3 if c.edge_sep else 2
        edges = np.stack([node_row[rows, edge], node_row[rows, succ[rows, edge]], np.full((m, w), SEP)], axis=2)[..., :per_edge]
        edges = edges.reshape(m, per_edge * w)
        edge_ok = np.repeat(np.arange(w)[None, :] < n[:, None], per_edge, axis=1)
        start = random_perm_rows(rng, n, max(w, q))[:, :q] % n[:, None]  # [M, Q] distinct while j < n
        k = rng.integers(1, c.k_max + 1, (m, q))
        answer = (start + k) % n[:, None]
        queries = np.stack([QUERY0 + k - 1, node_row[rows, start], np.full((m, q), ANS), node_row[rows, answer]], axis=2)
        query_ok = np.repeat(np.arange(q)[None, :] < np.minimum(q, n)[:, None], 4, axis=1)
        items = np.concatenate([np.full((m, 1), BOS), edges, queries.reshape(m, 4 * q)], axis=1)
        valid = np.concatenate([np.ones((m, 1), bool), edge_ok, query_ok], axis=1)
        slot = np.arange(4 * q) % 4
        mask = np.concatenate([np.zeros((m, 1 + per_edge * w), bool), np.broadcast_to(slot >= 2, (m, 4 * q))], axis=1)
        tag = np.concatenate([np.zeros((m, 1 + per_edge * w), np.int64), np.where(slot == 3, np.repeat(k, 4, axis=1), 0)], axis=1)
        return build_instances(items, valid, mask, tag, table, table_len)

    def evaluate(self, model: Any, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Teacher-forced answers on test windows (n = N, whole instances): token accuracy per hop k [spec §2.1]
        and exact-answer accuracy per k (all answer tokens right = greedy decoding finds the answer)."""
        keys, hits, span_k, span_ok = [], [], [], []
        for b in range(n_batches):
            tokens, _, tag, doc = self.windows("test", seed, 0, b, batch_size, packing="pad")
            pred, _ = teacher_forced(model, tokens, self.doc_ids_if_masked(doc))
            tg, correct = tag[:, 1:], pred == tokens[:, 1:]
            keys.append(tg[tg > 0]), hits.append(correct[tg > 0])
            sk, so = span_correct(tg, correct)
            span_k.append(sk), span_ok.append(so)
        keys_a, hits_a = np.concatenate(keys), np.concatenate(hits)
        out = {"acc": float(hits_a.mean()), **grouped_mean(keys_a, hits_a, "acc_k")}
        out.update(grouped_mean(np.concatenate(span_k), np.concatenate(span_ok), "exact_k"))
        return out

    def decode(self, tokens: list[int]) -> str:
        specials = {PAD: "<pad>", BOS: "\n<bos>", ANS: "<ans>", SEP: ","}
        specials |= {QUERY0 + k - 1: f"<q{k}>" for k in range(1, self.cfg.k_max + 1)}
        return render_tokens(tokens, self.names, specials)


def solve(tokens: list[int], task: DepoTask) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Independent solver: parse one instance and re-derive every query's answer by walking the edges.

    Returns [(k, start name, derived answer name)]; raises ValueError if the instance is malformed or its
    edges are not one directed cycle over distinct names.
    """
    if not tokens or tokens[0] != BOS:
        raise ValueError("instance must start with <bos>")
    first_q = next((i for i, t in enumerate(tokens) if QUERY0 <= t < task.n_special), len(tokens))
    edge_part = tokens[1:first_q]
    if task.cfg.edge_sep:
        if edge_part[-1:] != [SEP] or any(len(task.names.split(e)) != 2 for e in _split_at(edge_part[:-1], SEP)):
            raise ValueError("with edge_sep every edge must be two names and <sep>")
        edge_part = [t for t in edge_part if t != SEP]
    names = task.names.split(edge_part)
    if len(names) % 2:
        raise ValueError("odd number of edge endpoints")
    succ = dict(zip(names[0::2], names[1::2]))
    if len(succ) != len(names) // 2 or set(succ.values()) != set(succ):
        raise ValueError("edges do not form a permutation of distinct names")
    node, steps = names[0], 0  # one cycle: walking from any node returns after exactly n steps
    while True:
        node, steps = succ[node], steps + 1
        if node == names[0]:
            break
    if steps != len(succ):
        raise ValueError("edges form several cycles")
    out, i = [], first_q
    while i < len(tokens):
        k = tokens[i] - QUERY0 + 1
        j = tokens.index(ANS, i)
        (start,) = task.names.split(tokens[i + 1 : j])
        node = start
        for _ in range(k):
            node = succ[node]
        out.append((k, start, node))
        i = j + 1 + len(node)
    return out


def _split_at(tokens: list[int], sep: int) -> list[list[int]]:
    out: list[list[int]] = [[]]
    for t in tokens:
        if t == sep:
            out.append([])
        else:
            out[-1].append(t)
    return out


def check(tokens: list[int], task: DepoTask) -> bool:
    """True iff the instance's stated answers equal the independently derived ones."""
    try:
        answers = solve(tokens, task)
    except (ValueError, KeyError, IndexError):
        return False
    i, stated = 0, []
    while True:
        try:
            i = tokens.index(ANS, i) + 1
        except ValueError:
            break
        j = i
        while not task.names.is_final(tokens[j]):
            j += 1
        stated.append(tuple(tokens[i : j + 1]))
    return len(stated) == len(answers) > 0 and all(a == s for (_, _, a), s in zip(answers, stated))

"""Brevo: mental reasoning breadth — topological sort of the sub-DAG a query depends on [spec §2.2; P App A.2].

An instance::

    <bos> p1 c1 ... pm cm <query> q <ans> a1 ... ap <eos>

lists every edge "c depends on p" of a random DAG over n named nodes, shuffled. The answer is every node q
depends on (its ancestors) plus q itself, in a valid topological order; q is necessarily last. Loss on
``<ans>``, the answer and ``<eos>`` (spec §2.2; four distinct special ids as the paper states — the released
code reuses one id for ``<ans>`` and ``<eos>``).

DAG [SYN brevo.py]: the first L ~ U{1..⌈(n−1)/4⌉+1} nodes of a random order are leaves; each later node picks
U{1..min(#eligible, 4)} distinct parents among earlier nodes whose out-degree is still below 4. The query is
uniform over the non-leaf nodes in the last quarter of the order (the paper's description; the released code
effectively always takes the last node). The answer lists the required nodes by depth (longest path from a
leaf), ties in random order: a valid topological order with leaves first and q last (spec §2.2).

Variants: brevo1 = single-token names (N ids), N ∈ {70, 90, 110}; brevo2 = names of 2–4 tokens over vocab 4,
N ∈ {30, 40, 50}. Train n ~ P(n) ∝ 1/(n+√N); test n = N. Instances longer than a window are skipped (rare;
only brevo2 at N = 50 can exceed 1536 tokens).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from archlab.tasks.base import register_task
from archlab.tasks.instances import PAD, Instances, build_instances, segment_positions
from archlab.tasks.names import NameVocab, check_name_space, node_names, render_tokens
from archlab.tasks.sampling import sample_sizes
from archlab.tasks.scoring import greedy_complete
from archlab.tasks.synthetic import SyntheticConfig, SyntheticTask, apply_preset

BOS, QUERY, ANS, EOS = 1, 2, 3, 4
N_SPECIAL = 5

BREVO_PRESETS: dict[str, dict[str, Any]] = {
    "brevo1": dict(n_max=70, name_min_len=1, name_max_len=1, mini_vocab=None),
    "brevo2": dict(n_max=30, name_min_len=2, name_max_len=4, mini_vocab=4),
}

Name = tuple[int, ...]


class BrevoConfig(SyntheticConfig):
    name: Literal["brevo"] = "brevo"
    variant: Literal["brevo1", "brevo2"] = Field("brevo1", description="preset for the fields below that are not given")
    n_max: int = Field(70, ge=3, description="N: largest DAG; test instances use n = N")
    n_min: int = Field(3, ge=3)
    name_min_len: int = Field(1, ge=1)
    name_max_len: int = Field(1, ge=1)
    mini_vocab: int | None = Field(None, ge=2, description="choices per name token; None = n_max (single-token names)")
    max_degree: int = Field(4, ge=1, description="largest in- and out-degree")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(cls, data, BREVO_PRESETS)

    @model_validator(mode="after")
    def _check(self) -> "BrevoConfig":
        check_name_space(self.n_min, self.n_max, self.name_min_len, self.name_max_len, self.vocab)
        return self

    @property
    def vocab(self) -> int:
        return self.n_max if self.mini_vocab is None else self.mini_vocab


@register_task("brevo", BrevoConfig)
class BrevoTask(SyntheticTask):
    cfg: BrevoConfig

    def __init__(self, cfg: BrevoConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        self.names = NameVocab(N_SPECIAL, cfg.vocab, cfg.name_min_len, cfg.name_max_len)

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.names.n_tokens

    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        c, d = self.cfg, self.cfg.max_degree
        n = np.full(count, c.n_max) if split == "test" else sample_sizes(rng, c.n_min, c.n_max, count)  # [M]
        n = np.sort(n)[::-1]  # largest first: the instances still growing at node j are a prefix (shuffled at the end)
        m, w = count, int(n.max())
        rows, cols = np.arange(m), np.arange(w)
        table, table_len, node_row = node_names(rng, self.names, n, N_SPECIAL)  # node_row [M, W]: name of node j

        # DAG over nodes in order 0..n-1: nodes < L are leaves, later ones take parents among earlier ones.
        # Column w is a sentinel ("no parent") in parents / out_deg / depth / need.
        n_leaves = rng.integers(1, -(-(n - 1) // 4) + 2)  # U{1..ceil((n-1)/4)+1}
        takes_parents = (cols[None, :] >= n_leaves[:, None]) & (cols[None, :] < n[:, None])  # [M, W]
        parents = np.full((m, w, d), w)  # [M, W, D]
        out_deg = np.zeros((m, w + 1), np.int64)
        depth = np.zeros((m, w + 1), np.int64)  # longest path from a leaf
        depth[:, w] = -1
        u_par, r1 = rng.random((m, w)), rows[:, None]
        growing = np.searchsorted(-n, -np.arange(w), side="left")  # [W] number of instances with n > j
        for j in range(1, w):
            a = growing[j]  # rows :a have node j
            eligible = out_deg[:a, :j] < d  # [A, j]
            order = np.argsort(np.where(eligible, rng.random((a, j)), 2.0), axis=1)[:, :d]  # uniform ordered picks
            # U{1..min(#eligible, d)} parents: pick i is taken iff i <= floor(u * min(#eligible, d))
            n_ok = np.minimum(eligible.sum(1), d)
            take = (np.arange(order.shape[1]) <= u_par[:a, j, None] * n_ok[:, None]) & takes_parents[:a, j, None]
            par = np.where(take, order, w)  # [A, <=D]
            parents[:a, j, : par.shape[1]] = par
            out_deg[r1[:a], par] += 1
            depth[:a, j] = depth[r1[:a], par].max(1) + 1

        # query: a non-leaf node in the last quarter; answer set: its ancestors and itself
        lo = np.maximum(n_leaves, (3 * n) // 4)
        query = lo + (rng.random(m) * (n - lo)).astype(np.int64)
        need = np.zeros((m, w + 1), bool)
        need[rows, query] = True
        for j in range(w - 1, 0, -1):
            a = growing[j]
            need[r1[:a], parents[:a, j]] |= need[:a, j, None]
        need = need[:, :w]

        # answer order: by depth, ties in random order -> leaves first, q last
        key = np.where(need, depth[:, :w] + rng.random((m, w)), np.inf)
        answer = np.where(np.arange(w)[None, :] < need.sum(1)[:, None], np.argsort(key, axis=1), -1)  # [M, W]

        # edges (parent, child), shuffled within each instance
        r, slot = np.nonzero(parents.reshape(m, w * d) < w)  # grouped by instance
        child, par = slot // d, parents.reshape(m, w * d)[r, slot]
        shuffle = np.lexsort((rng.random(len(r)), r))
        r, child, par = r[shuffle], child[shuffle], par[shuffle]
        n_edges = np.bincount(r, minlength=m)
        edges = np.zeros((m, int(n_edges.max()), 2), np.int64)  # [M, E, 2]
        pos = segment_positions(n_edges)
        edges[r, pos, 0], edges[r, pos, 1] = node_row[r, par], node_row[r, child]
        edge_ok = np.repeat(np.arange(edges.shape[1])[None, :] < n_edges[:, None], 2, axis=1)

        items = np.concatenate(
            [np.full((m, 1), BOS), edges.reshape(m, -1), np.full((m, 1), QUERY), node_row[rows, query][:, None],
             np.full((m, 1), ANS), node_row[rows[:, None], np.maximum(answer, 0)], np.full((m, 1), EOS)], axis=1)  # fmt: skip
        valid = np.concatenate([np.ones((m, 1), bool), edge_ok, np.ones((m, 3), bool), answer >= 0, np.ones((m, 1), bool)], axis=1)
        mask = np.zeros(items.shape, bool)
        mask[:, 3 + edge_ok.shape[1] :] = True  # <ans> answer <eos>
        shuffle = rng.permutation(m)
        return build_instances(items[shuffle], valid[shuffle], mask, np.zeros(items.shape, np.int64), table, table_len)

    def evaluate(self, model: Any, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Greedy answers after ``<ans>`` on test instances (n = N); correct iff a valid topological order of
        exactly the required node set (no partial credit) [spec §2.2]. Also accuracy per answer size
        (buckets ≤1, ≤2, ≤4, ...) and per depth (BFS distance from the query to its nearest leaf)."""
        inst = list(self.instances("test", seed, 0, 0, n_batches * batch_size))
        ok, size, depth = [], [], []
        for lo in range(0, len(inst), batch_size):
            prompts, problems = [], []
            for tokens in inst[lo : lo + batch_size]:
                cut = int(np.nonzero(tokens == ANS)[0][0]) + 1
                prompts.append(tokens[:cut])
                problems.append(parse_problem(tokens[:cut].tolist(), self))
            max_new = self.cfg.n_max * self.cfg.name_max_len + 1
            for (edges, q), gen in zip(problems, greedy_complete(model, prompts, max_new, EOS)):
                ok.append(answer_ok(edges, q, gen.tolist(), self))
                size.append(len(required(edges, q)))
                depth.append(graph_depth(edges, q))
        ok_a = np.array(ok)
        bucket = 2 ** np.ceil(np.log2(np.array(size))).astype(np.int64)
        out: dict[str, Any] = {"acc": float(ok_a.mean())}
        out |= {f"acc_size_le{b}": float(ok_a[bucket == b].mean()) for b in np.unique(bucket)}
        out |= {f"acc_depth{k}": float(ok_a[np.array(depth) == k].mean()) for k in np.unique(depth)}
        return out

    def decode(self, tokens: list[int]) -> str:
        specials = {PAD: "<pad>", BOS: "\n<bos>", QUERY: "<query>", ANS: "<ans>", EOS: "<eos>"}
        return render_tokens(tokens, self.names, specials)


# ------------------------------------------------------------------------------ independent checker (pure Python)


def parse_problem(tokens: list[int], task: BrevoTask) -> tuple[list[tuple[Name, Name]], Name]:
    """``<bos> edges <query> q <ans>`` (anything after ``<ans>`` ignored) -> (edges [(parent, child)], q)."""
    if tokens[0] != BOS:
        raise ValueError("instance must start with <bos>")
    iq, ia = tokens.index(QUERY), tokens.index(ANS)
    names = task.names.split(tokens[1:iq])
    if len(names) % 2:
        raise ValueError("odd number of edge endpoints")
    (q,) = task.names.split(tokens[iq + 1 : ia])
    return list(zip(names[0::2], names[1::2])), q


def required(edges: list[tuple[Name, Name]], q: Name) -> set[Name]:
    """q and every node it (transitively) depends on."""
    parents: dict[Name, list[Name]] = {}
    for p, c in edges:
        parents.setdefault(c, []).append(p)
    seen, stack = {q}, [q]
    while stack:
        for p in parents.get(stack.pop(), []):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def graph_depth(edges: list[tuple[Name, Name]], q: Name) -> int:
    """BFS distance from q, walking to parents, to the nearest node without parents [SYN compute_graph_depth]."""
    parents: dict[Name, list[Name]] = {}
    for p, c in edges:
        parents.setdefault(c, []).append(p)
    frontier, dist, seen = deque([q]), {q: 0}, {q}
    while frontier:
        x = frontier.popleft()
        if not parents.get(x):
            return dist[x]
        for p in parents[x]:
            if p not in seen:
                seen.add(p)
                dist[p] = dist[x] + 1
                frontier.append(p)
    raise ValueError("no leaf above the query: the edges have a cycle")


def answer_ok(edges: list[tuple[Name, Name]], q: Name, answer_tokens: list[int], task: BrevoTask) -> bool:
    """True iff answer_tokens (optionally ending in ``<eos>``) name every required node exactly once, in an
    order where each node comes after all of its parents."""
    if answer_tokens and answer_tokens[-1] == EOS:
        answer_tokens = answer_tokens[:-1]
    try:
        answer = task.names.split(answer_tokens)
    except ValueError:
        return False
    need = required(edges, q)
    if len(answer) != len(need) or set(answer) != need:
        return False
    pos = {x: i for i, x in enumerate(answer)}
    return all(pos[p] < pos[c] for p, c in edges if c in need)


def check(tokens: list[int], task: BrevoTask) -> bool:
    """True iff a whole generated instance is well formed (a DAG with degrees ≤ max_degree, distinct names)
    and its stated answer is correct."""
    try:
        edges, q = parse_problem(tokens, task)
        ia = tokens.index(ANS)
        if tokens[-1] != EOS or EOS in tokens[ia + 1 : -1]:
            return False
        graph_depth(edges, q)  # raises on a cycle reachable from q
    except ValueError:
        return False
    indeg, outdeg = Counter(c for _, c in edges), Counter(p for p, _ in edges)
    d = task.cfg.max_degree
    return (
        _is_acyclic(edges)
        and len(set(edges)) == len(edges)
        and max(indeg.values()) <= d
        and max(outdeg.values()) <= d
        and answer_ok(edges, q, tokens[ia + 1 :], task)
    )


def _is_acyclic(edges: list[tuple[Name, Name]]) -> bool:
    children: dict[Name, list[Name]] = {}
    indeg: dict[Name, int] = {}
    for p, c in edges:
        children.setdefault(p, []).append(c)
        indeg[c] = indeg.get(c, 0) + 1
        indeg.setdefault(p, 0)
    ready = [x for x, k in indeg.items() if k == 0]
    seen = 0
    while ready:
        x = ready.pop()
        seen += 1
        for c in children.get(x, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return seen == len(indeg)


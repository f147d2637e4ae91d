"""Depo: generated answers re-derived by an independent solver, exact loss masks, exact evaluation, learning."""

from pathlib import Path

import pytest
import torch

from archlab.config import ModelConfig, load_config
from archlab.model.lm import LM
from archlab.tasks import TASKS, build_task
from archlab.tasks.depo import ANS, BOS, QUERY0, SEP, DepoConfig, check, solve

ROOT = Path(__file__).resolve().parents[2]


def make(seq_len: int = 256, **kw):
    return build_task(TASKS.validate({"name": "depo", **kw}), seq_len)


@pytest.mark.parametrize(
    "kw,seq_len", [({"n_max": 20, "k_max": 8}, 256), ({"variant": "depo2", "n_max": 12, "k_max": 16}, 512), ({"n_max": 9, "edge_sep": True}, 256)]
)
def test_independent_solver_agrees_with_every_answer(kw, seq_len):
    task = make(seq_len, **kw)
    cfg = task.cfg
    for split, count in (("train", 1000), ("test", 150)):
        for tokens in task.instances(split, 0, 0, 0, count):
            tokens = tokens.tolist()
            assert check(tokens, task)
            qa = solve(tokens, task)
            starts = [s for _, s, _ in qa]
            first_q = next(i for i, t in enumerate(tokens) if QUERY0 <= t < task.n_special)
            n_edges = len(task.names.split([t for t in tokens[1:first_q] if t != SEP])) // 2
            assert (tokens[1:first_q].count(SEP) == n_edges) == cfg.edge_sep
            assert len(set(starts)) == len(starts) == min(cfg.n_queries, n_edges)  # distinct starts
            assert all(1 <= k <= cfg.k_max for k, _, _ in qa)
            assert cfg.n_min <= n_edges <= cfg.n_max and (split == "train" or n_edges == cfg.n_max)


def test_checker_rejects_a_wrong_answer_or_a_broken_cycle():
    task = make(n_max=10)
    tokens = task.instances("train", 0, 0, 0, 1)[0].tolist()
    bad = list(tokens)
    i = len(bad) - 1  # last token = end of the last answer name: swap it for another final token
    bad[i] = task.names.offset + task.names.n_inner + (bad[i] - task.names.offset - task.names.n_inner + 1) % task.names.v
    assert check(tokens, task) and not check(bad, task)
    first_q = next(i for i, t in enumerate(tokens) if QUERY0 <= t < task.n_special)
    names = task.names.split(tokens[1:first_q])
    names[3] = names[1]  # the second edge now points where the first does: not a permutation
    broken = [BOS] + [t for name in names for t in name] + tokens[first_q:]
    assert not check(broken, task)


def test_presets_fill_only_missing_fields():
    d2 = DepoConfig(variant="depo2")
    assert (d2.n_max, d2.k_max, d2.name_min_len, d2.name_max_len, d2.mini_vocab) == (75, 16, 5, 7, 4)
    assert DepoConfig(variant="depo2", n_max=125).n_max == 125
    assert DepoConfig().k_max == 8 and make(2048).vocab_size == 4 + 8 + 100  # pad bos ans sep, queries, names
    with pytest.raises(ValueError):
        DepoConfig(n_max=400, mini_vocab=2, name_max_len=2)  # 2 + 4 names < 400


def expected_mask(row: list[int], task) -> tuple[list[bool], list[int]]:
    """Independent scan of a window: <ans> and the answer name after it are targets; tag = hop of the query."""
    mask, tag, k, inside = [], [], 0, False
    for t in row:
        if QUERY0 <= t < task.n_special:
            k = t - QUERY0 + 1
        if t == ANS:
            mask.append(True), tag.append(0)
            inside = True
            continue
        mask.append(inside), tag.append(k if inside else 0)
        if inside and task.names.is_final(t):
            inside = False
    return mask, tag


def test_loss_mask_is_exactly_ans_and_answer_tokens():
    task = make(n_max=16)
    for packing in ("truncate", "pad"):
        tokens, mask, tag, _ = task.windows("train", 0, 0, 0, 16, packing=packing)
        for row, m, tg in zip(tokens.tolist(), mask, tag):
            em, et = expected_mask(row, task)
            assert m.tolist() == em and tg.tolist() == et


class Oracle(torch.nn.Module):
    """Solves Depo from the prefix: one-hot logits on the true answer tokens (teacher forced), 0 elsewhere."""

    def __init__(self, task, extra_hops: int = 0):
        super().__init__()
        self.task, self.extra = task, extra_hops
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        task, (b, t) = self.task, ids.shape
        logits = torch.zeros(b, t, task.vocab_size)
        for r, row in enumerate(ids.tolist()):
            bos = [i for i, x in enumerate(row) if x == BOS] + [t]
            for s, e in zip(bos, bos[1:]):
                seg = row[s:e]
                fq = next((i for i, x in enumerate(seg) if QUERY0 <= x < task.n_special), None)
                if fq is None:
                    continue
                names = task.names.split(seg[1:fq])
                succ = dict(zip(names[0::2], names[1::2]))
                i = fq
                while i < len(seg) and ANS in seg[i:]:
                    j = seg.index(ANS, i)
                    node = tuple(seg[i + 1 : j])
                    for _ in range(seg[i] - QUERY0 + 1 + self.extra):
                        node = succ[node]
                    for p, tok in enumerate(node):
                        if s + j + p < t:
                            logits[r, s + j + p, tok] = 1.0
                    i = next((x for x in range(j + 1, len(seg)) if QUERY0 <= seg[x] < task.n_special), len(seg))
        return logits, None


def test_evaluate_is_exact_for_an_oracle_and_low_for_a_wrong_one():
    task = make(256, n_max=12, k_max=4)
    res = task.evaluate(Oracle(task), seed=0, n_batches=2, batch_size=4)
    assert res["acc"] == 1.0 and all(res[f"acc_k{k}"] == 1.0 and res[f"exact_k{k}"] == 1.0 for k in range(1, 5))
    wrong = task.evaluate(Oracle(task, extra_hops=1), seed=0, n_batches=2, batch_size=4)
    assert all(wrong[f"exact_k{k}"] < 0.2 for k in range(1, 5))
    torch.manual_seed(0)
    lm = LM(ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=1, mixer={"name": "attention", "n_heads": 2}))
    rand = task.evaluate(lm, seed=0, n_batches=1, batch_size=4)
    assert set(rand) == set(res) and rand["acc"] < 0.2


def test_tiny_recipe_learns_one_hop_within_a_minute(tmp_path):
    """The tiny recipe with 1-hop queries only, 300 steps: answers far above chance (~1 in 4 names)."""
    from archlab.train import train

    overrides = [f"out_dir={tmp_path}", "name=t", "data.k_max=1", "train.steps=300", "train.eval_every=0", "train.eval_batches=4"]
    res = train(load_config(ROOT / "configs" / "depo_tiny.yaml", overrides), resume="never")
    assert res.eval["acc_k1"] > 0.4, res.eval

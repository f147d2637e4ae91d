"""Lano: grammar construction, a CYK parser cross-checked against a top-down one, generation-accuracy evaluation."""

import numpy as np
import pytest
import torch

from archlab.tasks import TASKS, build_task
from archlab.tasks.lano import BOS, N_TERMINALS, TERM0, LanoConfig, cyk_accepts, derives, make_cfg


def make(seq_len: int = 128, **kw):
    return build_task(TASKS.validate({"name": "lano", **kw}), seq_len)


@pytest.mark.parametrize("variant,levels,root", [("cfg3f", 7, 22), ("cfg3j", 8, 25), ("cfg3k", 8, 25)])
def test_presets_build_leveled_cfg3_grammars(variant, levels, root):
    cfg = LanoConfig(variant=variant)
    g = make_cfg(cfg)
    assert g.root == root and len(g.levels) == levels and [len(lv) for lv in g.levels] == [1] + [3] * (levels - 1)
    below = list(g.levels[1:]) + [tuple(range(1, N_TERMINALS + 1))]
    for level, children in zip(g.levels, below):
        for a in level:
            rules = g.rules[a]
            assert cfg.rules_min <= len(rules) <= cfg.rules_max and len(set(rules)) == len(rules)
            assert all(len(r) in (2, 3) and set(r) <= set(children) for r in rules)
    assert abs(np.log(g.expected_len() / cfg.target_len)) < 0.15
    assert make_cfg(cfg) == g and make_cfg(cfg.model_copy(update={"grammar_seed": 1})) != g  # deterministic in the seed


def test_sampled_lengths_match_the_grammar():
    task = make(2048, variant="cfg3f")
    lengths = task.instances("train", 0, 0, 0, 400).lengths - 1
    assert abs(lengths.mean() / task.grammar.expected_len() - 1) < 0.1
    assert lengths.min() >= 2 ** 7


def test_cyk_agrees_with_top_down_parser():
    task = make(variant="cfg3f", levels=3, target_len=14, rules_max=3)
    g, rng = task.grammar, np.random.default_rng(0)
    pos = [s[1:] - TERM0 + 1 for s in task.instances("train", 0, 0, 0, 80)]
    neg = []
    for s in pos:
        m = s.copy()
        m[rng.integers(len(m))] = rng.integers(1, 4)  # may or may not stay in the language
        neg += [m, rng.integers(1, 4, len(s)), s[:-1], np.r_[s, s[:2]]]
    verdict = cyk_accepts(g, pos + neg)
    assert verdict[: len(pos)].all()
    truth = np.array([derives(g, list(s)) for s in neg])
    assert np.array_equal(verdict[len(pos) :], truth) and 0 < truth.mean() < 0.7


def test_cyk_accepts_full_size_cfg3f_sentences_and_rejects_shuffles():
    task = make(512, variant="cfg3f")
    sents = sorted((s[1:] - TERM0 + 1 for s in task.instances("train", 0, 0, 0, 30)), key=len)[:2]
    shuffled = [np.random.default_rng(0).permutation(s) for s in sents]
    assert cyk_accepts(task.grammar, sents + shuffled).tolist() == [True, True, False, False]


class Scripted(torch.nn.Module):
    """Emits a fixed token sequence after <bos> regardless of sampling (logits ±30)."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.vocab, self.script = vocab, script
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, cache=None):
        start = 0 if cache is None else cache["pos"]
        t = ids.shape[1]
        logits = torch.full((ids.shape[0], t, self.vocab), -30.0)
        for i in range(t):
            p = start + i  # position of the token read; predicts script[p]
            logits[:, i, self.script[min(p, len(self.script) - 1)]] = 30.0
        if cache is not None:
            cache["pos"] = start + t
        return logits, cache

    def generate(self, ids, max_new_tokens, temperature=0.0, top_k=None, eos_id=None, generator=None):
        cache, out = {"pos": 0}, ids
        logits, _ = self(ids, cache)
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits[:, -1] / max(temperature, 1e-6), -1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt], 1)
            logits, _ = self(nxt, cache)
        return out


def test_generation_accuracy_counts_exactly_the_valid_sentences():
    task = make(48, levels=3, target_len=14, rules_max=3)
    good = (task.instances("train", 0, 0, 0, 1)[0]).tolist()  # <bos> sentence
    v = task.vocab_size
    res = task.evaluate(Scripted(v, good[1:] + [BOS]), seed=0, n_batches=1, batch_size=2)
    assert res == {"gen_acc": 1.0, "gen_len": len(good) - 1}
    assert task.evaluate(Scripted(v, good[1:-1] + [BOS]), seed=0, n_batches=1, batch_size=2)["gen_acc"] == 0.0  # cut short
    assert task.evaluate(Scripted(v, good[1:]), seed=0, n_batches=1, batch_size=2)["gen_acc"] == 0.0  # never ends


def test_loss_on_all_tokens_and_bos_separates_sentences():
    task = make(128, levels=4, target_len=30)
    tokens, mask, _, _ = task.windows("train", 0, 0, 0, 4)
    assert mask.all() and tokens[:, 0].tolist() == [BOS] * 4 and set(np.unique(tokens)) <= {BOS, *range(TERM0, TERM0 + 3)}

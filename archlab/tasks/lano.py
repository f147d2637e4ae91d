"""Lano: hierarchical language structure — sentences of a synthetic context-free grammar [spec §2.5; Part 1].

Grammars of the cfg3 family, built here deterministically from ``grammar_seed`` (the paper's grammar files are
not copied): terminals {1, 2, 3}; ``levels`` levels of non-terminals, the root alone at the top and 3 per
level below it; every non-terminal has ``rules_min..rules_max`` distinct rules whose right-hand sides are 2–3
symbols of the next level down (terminals below the last level). Symbols are numbered bottom-up as in
Part 1, so the root of a 7-level grammar is 22 (cfg3f) and of an 8-level one 25 (cfg3j, cfg3k).

To hit the paper's sentence lengths (cfg3f ≈ 100–500 tokens, cfg3k about twice that) a right-hand side has
2 symbols with probability 3 − target_len^(1/levels), and among ``N_CANDIDATES`` grammars drawn from the seed
(every non-terminal must be used) the one whose expected length is closest to ``target_len`` is kept.
Sentences are sampled top-down with uniformly chosen rules; an instance is ``<bos>`` + sentence; sentences
too long for a window are skipped. Loss on all tokens. Evaluation: sample from ``<bos>`` at temperature 1
and accept a sentence iff the CYK parser below derives it from the root.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from archlab.tasks.base import register_task
from archlab.tasks.instances import PAD, Instances
from archlab.tasks.scoring import inference
from archlab.tasks.synthetic import SyntheticConfig, SyntheticTask, apply_preset

BOS = 1
TERM0 = 2  # terminal t in {1, 2, 3} is token TERM0 + t - 1
N_TERMINALS = 3
NT_PER_LEVEL = 3
N_CANDIDATES = 64

LANO_PRESETS: dict[str, dict[str, Any]] = {
    "cfg3f": dict(levels=7, rules_min=2, rules_max=4, target_len=280),
    "cfg3j": dict(levels=8, rules_min=3, rules_max=3, target_len=450),
    "cfg3k": dict(levels=8, rules_min=2, rules_max=4, target_len=560),
}


class LanoConfig(SyntheticConfig):
    name: Literal["lano"] = "lano"
    variant: Literal["cfg3f", "cfg3j", "cfg3k"] = Field("cfg3f", description="preset for the fields below that are not given")
    levels: int = Field(7, ge=1, description="levels of non-terminals, the root's included")
    rules_min: int = Field(2, ge=1)
    rules_max: int = Field(4, ge=1)
    target_len: float = Field(280, ge=2, description="expected sentence length the grammar is chosen for")
    grammar_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(cls, data, LANO_PRESETS)

    @model_validator(mode="after")
    def _check(self) -> "LanoConfig":
        if not self.rules_min <= self.rules_max:
            raise ValueError("need rules_min <= rules_max")
        if not 2**self.levels <= self.target_len <= 3**self.levels:
            raise ValueError(f"target_len must lie in [2^levels, 3^levels] = [{2**self.levels}, {3**self.levels}]")
        return self


@dataclass(frozen=True)
class CFG:
    """A leveled grammar. Symbols 1..3 are terminals; ``levels[0]`` = [root], ``levels[-1]`` rewrite to terminals."""

    levels: tuple[tuple[int, ...], ...]
    rules: dict[int, tuple[tuple[int, ...], ...]]

    @property
    def root(self) -> int:
        return self.levels[0][0]

    def expected_len(self) -> float:
        """Expected sentence length under uniform rule choice."""
        e = {t: 1.0 for t in range(1, N_TERMINALS + 1)}
        for level in reversed(self.levels):
            for a in level:
                e[a] = sum(e[s] for rhs in self.rules[a] for s in rhs) / len(self.rules[a])
        return e[self.root]

    @cached_property
    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n_rules [S], rhs [S, R, 3] padded with 0, rhs_len [S, R]) indexed by symbol id."""
        n_sym, r_max = self.root + 1, max(len(r) for r in self.rules.values())
        n_rules = np.zeros(n_sym, np.int64)
        rhs = np.zeros((n_sym, r_max, 3), np.int64)
        rhs_len = np.zeros((n_sym, r_max), np.int64)
        for a, rules in self.rules.items():
            n_rules[a] = len(rules)
            for r, body in enumerate(rules):
                rhs[a, r, : len(body)] = body
                rhs_len[a, r] = len(body)
        return n_rules, rhs, rhs_len


def make_cfg(cfg: LanoConfig) -> CFG:
    """The grammar of ``cfg``: the best of N_CANDIDATES random leveled grammars (see the module docstring)."""
    p_two = min(1.0, max(0.0, 3 - cfg.target_len ** (1 / cfg.levels)))
    best, best_gap = None, float("inf")
    for attempt in range(N_CANDIDATES):
        rng = random.Random(f"{cfg.grammar_seed}/{attempt}")  # scalar draws: faster than numpy
        sizes = [1] + [NT_PER_LEVEL] * (cfg.levels - 1)
        first = N_TERMINALS + 1 + NT_PER_LEVEL * (cfg.levels - 1)  # bottom-up numbering: root is the largest id
        levels, nxt = [], first
        for size in sizes:
            levels.append(tuple(range(nxt, nxt - size, -1))[::-1])
            nxt -= size
        below = levels[1:] + [tuple(range(1, N_TERMINALS + 1))]
        rules: dict[int, tuple[tuple[int, ...], ...]] = {}
        for level, children in zip(levels, below):
            for a in level:
                bodies: list[tuple[int, ...]] = []
                want = rng.randint(cfg.rules_min, cfg.rules_max)
                while len(bodies) < want:
                    body = tuple(rng.choices(children, k=2 if rng.random() < p_two else 3))
                    if body not in bodies:
                        bodies.append(body)
                rules[a] = tuple(bodies)
        used = {s for bodies in rules.values() for body in bodies for s in body}
        if not all(s in used for lv in below for s in lv):
            continue
        grammar = CFG(tuple(levels), rules)
        gap = abs(np.log(grammar.expected_len() / cfg.target_len))
        if gap < best_gap:
            best, best_gap = grammar, gap
    if best is None:
        raise ValueError("no grammar of the requested shape uses all its symbols; change grammar_seed or rules")
    return best


def cyk_accepts(grammar: CFG, sentences: list[np.ndarray], device: torch.device | str = "cpu") -> np.ndarray:
    """[S] bool: is each sentence (terminals 1..3) derivable from the root?

    A real parser (CYK on the leveled grammar): for every symbol A a boolean span matrix D_A[i, j] = "A
    derives w[i:j]", built level by level from the one below by boolean matrix products (A -> B C D gives
    D_B · D_C · D_D), batched over sentences padded to one length. O(n³) per rule, as Part 1's DP parser.
    """
    out = np.zeros(len(sentences), bool)
    order = np.argsort([len(s) for s in sentences])
    lo = 0
    while lo < len(order):  # chunks of similar length, about 4M matrix entries each
        hi = lo + 1
        while hi < len(order) and (hi - lo + 1) * (len(sentences[order[hi]]) + 1) ** 2 <= 4_000_000:
            hi += 1
        chunk = order[lo:hi]
        out[chunk] = _cyk_chunk(grammar, [sentences[i] for i in chunk], device)
        lo = hi
    return out


def _cyk_chunk(grammar: CFG, sentences: list[np.ndarray], device: torch.device | str) -> np.ndarray:
    n = max(len(s) for s in sentences)
    words = torch.zeros(len(sentences), n, dtype=torch.long)
    for i, s in enumerate(sentences):
        words[i, : len(s)] = torch.as_tensor(s)
    words, idx = words.to(device), torch.arange(n, device=device)
    span: dict[int, torch.Tensor] = {}  # symbol of the level below -> [S, n+1, n+1] 0/1
    for t in range(1, N_TERMINALS + 1):
        span[t] = torch.zeros(len(sentences), n + 1, n + 1, device=device)
        span[t][:, idx, idx + 1] = (words == t).float()
    for level in reversed(grammar.levels):
        prefix: dict[tuple[int, ...], torch.Tensor] = {}  # products shared by rules with a common prefix

        def derive(body: tuple[int, ...]) -> torch.Tensor:
            if len(body) == 1:
                return span[body[0]]
            if body not in prefix:
                prefix[body] = (derive(body[:-1]) @ span[body[-1]]).clamp_(max=1.0)
            return prefix[body]

        span = {a: torch.stack([derive(body) for body in grammar.rules[a]]).amax(0) for a in level}
    lens = torch.tensor([len(s) for s in sentences], device=device)
    return span[grammar.root][torch.arange(len(sentences), device=device), 0, lens].cpu().numpy() > 0


@register_task("lano", LanoConfig)
class LanoTask(SyntheticTask):
    cfg: LanoConfig

    def __init__(self, cfg: LanoConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        self.grammar = make_cfg(cfg)

    @property
    def vocab_size(self) -> int:
        return TERM0 + N_TERMINALS

    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        n_rules, rhs, rhs_len = self.grammar.tables
        sym = np.full(count, self.grammar.root)  # [K] symbols of all sentences, sentence-major
        sent = np.arange(count)  # [K] sentence of each symbol
        for _ in self.grammar.levels:
            rule = (rng.random(len(sym)) * n_rules[sym]).astype(np.int64)
            k = rhs_len[sym, rule]
            body = rhs[sym, rule]  # [K, 3]
            sym = body[np.arange(3)[None, :] < k[:, None]]
            sent = np.repeat(sent, k)
        lengths = np.bincount(sent, minlength=count) + 1  # + <bos>
        tokens = np.full(int(lengths.sum()), BOS, np.int64)
        is_term = np.ones(len(tokens), bool)
        is_term[np.cumsum(lengths) - lengths] = False
        tokens[is_term] = TERM0 + sym - 1
        return Instances(tokens, np.ones(len(tokens), bool), np.zeros(len(tokens), np.int32), lengths)

    def evaluate(self, model: Any, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Generation accuracy [spec §2.5]: the fraction of samples the grammar derives. A sample is drawn from
        ``<bos>`` at temperature 1 (seeded by ``seed``) up to the next ``<bos>``, within seq_len − 1 tokens."""
        ok, lengths = [], []
        with inference(model) as device:
            gen = torch.Generator(device=device).manual_seed(seed)
            for _ in range(n_batches):
                ids = torch.full((batch_size, 1), BOS, dtype=torch.long, device=device)
                out = model.generate(ids, self.seq_len - 1, temperature=1.0, eos_id=BOS, generator=gen)[:, 1:].cpu().numpy()
                sentences, valid = [], []
                for row in out:
                    end = np.nonzero(row == BOS)[0]
                    s = row[: end[0]] if len(end) else row
                    good = len(end) > 0 and len(s) > 0 and bool(((s >= TERM0) & (s < TERM0 + N_TERMINALS)).all())
                    sentences.append(s - TERM0 + 1 if good else np.ones(1, np.int64))
                    valid.append(good)
                    lengths.append(len(s))
                ok.append(cyk_accepts(self.grammar, sentences, device) & np.array(valid))
        ok_a = np.concatenate(ok)
        return {"gen_acc": float(ok_a.mean()), "gen_len": float(np.mean(lengths))}

    def decode(self, tokens: list[int]) -> str:
        return "".join({PAD: "_", BOS: "\n"}.get(int(t), str(int(t) - TERM0 + 1)) for t in tokens)


def derives(grammar: CFG, sentence: list[int]) -> bool:
    """Independent membership test (memoised top-down recursion over spans), for checking the parser."""
    n = len(sentence)

    @lru_cache(maxsize=None)
    def gen(a: int, i: int, j: int) -> bool:
        if a <= N_TERMINALS:
            return j == i + 1 and sentence[i] == a
        return any(splits(body, i, j) for body in grammar.rules[a])

    @lru_cache(maxsize=None)
    def splits(body: tuple[int, ...], i: int, j: int) -> bool:
        if len(body) == 1:
            return gen(body[0], i, j)
        return any(gen(body[0], i, k) and splits(body[1:], k, j) for k in range(i + 1, j - len(body) + 2))

    return n > 0 and gen(grammar.root, 0, n)

"""Capo: knowledge capacity — bioS(N) biographies and bits per parameter [spec §2.3; Part 3.1/3.3].

A fixed population of N individuals, drawn once from ``population_seed``: a unique full name (first ×
middle × last; N0 = product of the three list sizes), a gender, a birth date (month × day 1–28 × year), a
birth city, a university, a major and an employer; the work city is the employer's headquarters. All word
lists are made up here from syllables, deterministically (nothing is downloaded).

Every exposure of a person renders the six attributes as six sentences with a fresh random template each
(five per attribute) and, by default, a fresh random sentence order (Part 3.3's bioS(N)); the first sentence
names the person in full, later ones use the pronoun. Tokens are whole words of the own vocabulary below.
Loss on all tokens. Training draws people uniformly at random, so a run of S steps of B windows of T
tokens shows each biography about S·B·T / (N · mean length) times (the paper: 100 exposures).

Splits: there is no held-out population — the test set of a capacity experiment *is* the training set
(how much of it was stored), so train/val/test all render the same N people (with their own random draws of
people, templates and order). Evaluation: Part 3.3 Thm 3.2, with losses summed over a name's / a value's
tokens (nats) and averaged over people::

    bits = N·max(0, log2((N0 − N) / e^loss_name)) + N·Σ_a max(0, log2(|D_a| / e^loss_a))

over the attributes birth date, birth city, university, major and employer (work city is excluded: it is
a function of the employer, so counting it would count the employer→city table N times); the clamps at 0
keep the lower bound valid when a loss is worse than uniform. ``loss_name`` is the loss of the full name at
the start of a biography. Reported: bits, bits per parameter (all model parameters), per-attribute loss and
exact recall (all tokens of the value right under teacher forcing).
"""

from __future__ import annotations

import math
from functools import cached_property, lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from archlab.tasks import register_task
from archlab.tasks.common import (
    Instances,
    SyntheticConfig,
    SyntheticTask,
    build_instances,
    random_perm_rows,
    span_correct,
    teacher_forced,
)

ATTRS = ("birth_date", "birth_city", "university", "major", "employer", "work_city")
BITS_ATTRS = ATTRS[:5]
TAG_NAME = 1  # tag of the name tokens; attribute a has tag 2 + a

# "{s}" = subject (full name or pronoun), "{p}" = possessive pronoun, "{v}" = the value
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{s} was born on {v} .",
        "{s} came into this world on {v} .",
        "{s} celebrates {p} birthday on {v} .",
        "{s} entered life on {v} .",
        "{s} arrived on {v} , a day {p} family remembers .",
    ),
    "birth_city": (
        "{s} spent {p} early years in {v} .",
        "{s} was brought up in {v} .",
        "{s} grew up in {v} .",
        "{s} owes {p} roots to {v} .",
        "{s} was born in {v} .",
    ),
    "university": (
        "{s} received mentorship and guidance from faculty members at {v} .",
        "{s} graduated from {v} .",
        "{s} studied at {v} .",
        "{s} completed {p} education at {v} .",
        "{s} attended {v} .",
    ),
    "major": (
        "{s} completed {p} degree in {v} .",
        "{s} focused on {v} during {p} studies .",
        "{s} majored in {v} .",
        "{s} specialized in {v} .",
        "{s} developed a passion for {v} .",
    ),
    "employer": (
        "{s} worked for {v} .",
        "{s} had a job at {v} .",
        "{s} was employed by {v} .",
        "{s} built a career at {v} .",
        "{s} joined {v} .",
    ),
    "work_city": (
        "{s} was employed in {v} .",
        "{s} worked in {v} .",
        "{s} commuted to work in {v} .",
        "{s} had a professional life in {v} .",
        "{s} spent {p} working years in {v} .",
    ),
}
N_TEMPLATES = 5
assert all(len(t) == N_TEMPLATES for t in TEMPLATES.values())
PRONOUNS = (("He", "his"), ("She", "her"))
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")
N_DAYS = 28
CITY_SUFFIX = ("ville", "ton", "burg", "field", "port", "ford", "dale", "mouth")
EMPLOYER_SUFFIX = ("Corp", "Labs", "Group", "Systems", "Partners")
MAJOR_SUFFIX = ("logy", "nomics", "graphy", "matics", "sophy", "tecture")
CONSONANTS = "b c d f g h j k l m n p r s t v w z".split()
VOWELS = "a e i o u".split()


class CapoConfig(SyntheticConfig):
    name: Literal["capo"] = "capo"
    n_people: int = Field(50_000, ge=1, description="N (paper: 50K, 100K, 200K, 500K, 1M, 2M)")
    n_first: int = Field(400, ge=1)
    n_middle: int = Field(400, ge=1)
    n_last: int = Field(1000, ge=1)
    n_years: int = Field(200, ge=1, description="birth years 1900 .. 1900 + n_years - 1")
    n_cities: int = Field(200, ge=1)
    n_universities: int = Field(300, ge=1)
    n_majors: int = Field(100, ge=1)
    n_employers: int = Field(263, ge=1)
    shuffle_sentences: bool = Field(True, description="random sentence order per exposure (Part 3.3 bioS(N))")
    population_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "CapoConfig":
        if self.n_people > self.n_first * self.n_middle * self.n_last:
            raise ValueError("n_people exceeds the number of distinct full names n_first * n_middle * n_last")
        return self


@lru_cache(maxsize=None)
def template_parts(attr: str, t: int, gender: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words between subject and value, words after the value) of template t of ``attr``."""
    words = TEMPLATES[attr][t].replace("{p}", PRONOUNS[gender][1]).split()
    i = words.index("{v}")
    return tuple(words[1:i]), tuple(words[i + 1 :])


def knowledge_bits(n: int, n0: int, loss_name: float, attrs: dict[str, tuple[float, int]]) -> float:
    """Part 3.3 Thm 3.2 lower bound on stored bits: N people out of N0 names, with summed name loss ``loss_name``
    and ``attrs[a] = (summed value loss, domain size)`` (losses in nats, averaged over people); each term ≥ 0."""
    bits = n * max(0.0, math.log2(max(n0 - n, 1)) - loss_name / math.log(2))
    return bits + sum(n * max(0.0, math.log2(size) - loss / math.log(2)) for loss, size in attrs.values())


def pseudo_words(rng: np.random.Generator, count: int, syllables: tuple[int, int], suffixes: tuple[str, ...], taken: set[str]) -> list[str]:
    """``count`` new capitalised words of consonant-vowel syllables (+ a suffix), none in ``taken`` (updated)."""
    out: list[str] = []
    while len(out) < count:
        n_syl = int(rng.integers(syllables[0], syllables[1] + 1))
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(n_syl))
        word = (word + (rng.choice(suffixes) if suffixes else "")).capitalize()
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


@register_task("capo", CapoConfig)
class CapoTask(SyntheticTask):
    cfg: CapoConfig
    hash_split = False  # every split renders the same population (see the module docstring)

    def __init__(self, cfg: CapoConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        self._build_vocab()
        self._build_population()
        self._build_pieces()

    # ---------------------------------------------------------------------------------------------- world

    def _build_vocab(self) -> None:
        c = self.cfg
        rng = np.random.default_rng([c.population_seed, 1])
        fixed = ["<pad>", "<bos>", ".", ","] + [w for pair in PRONOUNS for w in pair] + list(MONTHS) + ["University"] + list(EMPLOYER_SUFFIX)
        fixed += sorted({w for ts in TEMPLATES.values() for t in ts for w in t.split() if not w.startswith("{")} - set(fixed))
        fixed += [str(d) for d in range(1, N_DAYS + 1)] + [str(1900 + y) for y in range(c.n_years)]
        taken = set(fixed)
        self.first = pseudo_words(rng, c.n_first, (2, 2), (), taken)
        self.middle = pseudo_words(rng, c.n_middle, (2, 3), (), taken)
        self.last = pseudo_words(rng, c.n_last, (2, 3), ("son", "er", "man", "ley", "wood", ""), taken)
        self.cities = pseudo_words(rng, c.n_cities, (1, 2), CITY_SUFFIX, taken)
        self.uni_stems = pseudo_words(rng, c.n_universities, (2, 3), (), taken)
        self.majors = pseudo_words(rng, c.n_majors, (1, 2), MAJOR_SUFFIX, taken)
        self.emp_stems = pseudo_words(rng, c.n_employers, (2, 3), (), taken)
        self.words = fixed + self.first + self.middle + self.last + self.cities + self.uni_stems + self.majors + self.emp_stems
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.hq = rng.integers(0, c.n_cities, c.n_employers)  # [n_employers] city of each employer
        self.emp_suffix = rng.integers(0, len(EMPLOYER_SUFFIX), c.n_employers)

    def _build_population(self) -> None:
        c, n = self.cfg, self.cfg.n_people
        rng = np.random.default_rng([c.population_seed, 2])
        full = rng.choice(c.n_first * c.n_middle * c.n_last, size=n, replace=False)  # distinct full names
        self.name_idx = np.stack([full // (c.n_middle * c.n_last), full // c.n_last % c.n_middle, full % c.n_last], 1)  # [N, 3]
        self.gender = rng.integers(0, 2, n)
        employer = rng.integers(0, c.n_employers, n)
        self.values = np.stack(  # [N, 6] value index of every attribute, in its domain
            [rng.integers(0, len(MONTHS) * N_DAYS * c.n_years, n), rng.integers(0, c.n_cities, n),
             rng.integers(0, c.n_universities, n), rng.integers(0, c.n_majors, n), employer, self.hq[employer]], 1)  # fmt: skip

    @cached_property
    def word_index(self) -> dict[str, dict[str, int]]:
        """{list name: {word: index in that list}} for the made-up word lists."""
        lists = ("first", "middle", "last", "cities", "uni_stems", "majors", "emp_stems")
        return {k: {w: i for i, w in enumerate(getattr(self, k))} for k in lists}

    @cached_property
    def person_index(self) -> dict[tuple[int, int, int], int]:
        """{(first, middle, last) name indices: person}."""
        return {tuple(map(int, row)): i for i, row in enumerate(self.name_idx)}

    def domain_size(self, attr: str) -> int:
        c = self.cfg
        sizes = {"birth_date": len(MONTHS) * N_DAYS * c.n_years, "birth_city": c.n_cities, "university": c.n_universities,
                 "major": c.n_majors, "employer": c.n_employers, "work_city": c.n_cities}  # fmt: skip
        return sizes[attr]

    def value_words(self, attr: str, v: int) -> list[str]:
        """The words of value index ``v`` of ``attr``."""
        if attr == "birth_date":
            md, year = divmod(v, self.cfg.n_years)
            month, day = divmod(md, N_DAYS)
            return [MONTHS[month], str(day + 1), ",", str(1900 + year)]
        if attr in ("birth_city", "work_city"):
            return [self.cities[v]]
        if attr == "university":
            return [self.uni_stems[v], "University"]
        if attr == "major":
            return [self.majors[v]]
        return [self.emp_stems[v], EMPLOYER_SUFFIX[self.emp_suffix[v]]]

    def _build_pieces(self) -> None:
        """The piece table: every token alone, an empty piece, template fragments, attribute values."""
        rows: list[list[int]] = [[i] for i in range(len(self.words))] + [[]]
        self.empty_row = len(self.words)
        self.frag_base = len(rows)  # row of (attr a, template t, gender g, part k) = base + ((a*T + t)*2 + g)*2 + k
        for attr in ATTRS:
            for t in range(N_TEMPLATES):
                for g in range(2):
                    for part in template_parts(attr, t, g):
                        rows.append([self.ids[w] for w in part])
        self.value_base = np.zeros(len(ATTRS), np.int64)
        for a, attr in enumerate(ATTRS[:5]):  # work_city shares the city rows of birth_city
            self.value_base[a] = len(rows)
            rows += [[self.ids[w] for w in self.value_words(attr, v)] for v in range(self.domain_size(attr))]
        self.value_base[5] = self.value_base[1]
        self.piece_len = np.array([len(r) for r in rows], np.int64)
        self.pieces = np.zeros((len(rows), int(self.piece_len.max())), np.int64)
        for i, r in enumerate(rows):
            self.pieces[i, : len(r)] = r

    # ---------------------------------------------------------------------------------------------- data

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        m, n_attr = count, len(ATTRS)
        person = rng.integers(0, self.cfg.n_people, m)
        g = self.gender[person]
        order = random_perm_rows(rng, np.full(m, n_attr), n_attr) if self.cfg.shuffle_sentences else np.tile(np.arange(n_attr), (m, 1))
        tpl = rng.integers(0, N_TEMPLATES, (m, n_attr))
        frag = self.frag_base + (((order * N_TEMPLATES + tpl) * 2 + g[:, None]) * 2)  # [M, 6] mid fragment row
        first_id = self.ids[self.first[0]]  # names are contiguous in the vocabulary: first, middle, last
        name_rows = first_id + self.name_idx[person] + np.array([0, self.cfg.n_first, self.cfg.n_first + self.cfg.n_middle])
        subject = np.full((m, n_attr, 3), self.empty_row)
        subject[:, :, 0] = np.where(g == 0, self.ids["He"], self.ids["She"])[:, None]
        subject[:, 0] = name_rows
        value = self.value_base[order] + self.values[person[:, None], order]
        sentences = np.concatenate([subject, frag[..., None], value[..., None], frag[..., None] + 1], axis=2)  # [M, 6, 6]
        items = np.concatenate([np.full((m, 1), self.ids["<bos>"]), sentences.reshape(m, -1)], axis=1)
        tag = np.zeros((m, n_attr, 6), np.int64)
        tag[:, 0, :3] = TAG_NAME
        tag[:, :, 4] = 2 + order
        tag = np.concatenate([np.zeros((m, 1), np.int64), tag.reshape(m, -1)], axis=1)
        ones = np.ones(items.shape, bool)
        return build_instances(items, ones, ones, tag, self.pieces, self.piece_len)

    def evaluate(self, model: Any, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Bits of knowledge (Part 3.3) and per-attribute recall on test windows of whole biographies."""
        n_tags = 2 + len(ATTRS)
        loss, count, exact = np.zeros(n_tags), np.zeros(n_tags), np.zeros(n_tags)
        for b in range(n_batches):
            tokens, _, tag, doc = self.windows("test", seed, 0, b, batch_size, packing="pad")
            pred, nll = teacher_forced(model, tokens, self.doc_ids_if_masked(doc))
            tg = tag[:, 1:]
            loss += np.bincount(tg.ravel(), weights=nll.ravel(), minlength=n_tags)
            span_tag, span_ok = span_correct(tg, pred == tokens[:, 1:])
            count += np.bincount(span_tag, minlength=n_tags)
            exact += np.bincount(span_tag, weights=span_ok, minlength=n_tags)
        mean = loss / np.maximum(count, 1)  # summed loss per name / per value, averaged over occurrences
        c = self.cfg
        bits = knowledge_bits(
            c.n_people, c.n_first * c.n_middle * c.n_last, float(mean[TAG_NAME]),
            {a: (float(mean[2 + ATTRS.index(a)]), self.domain_size(a)) for a in BITS_ATTRS},
        )  # fmt: skip
        params = sum(p.numel() for p in model.parameters())
        out: dict[str, Any] = {"bits": bits, "params": params, "bits_per_param": bits / params, "loss_name": float(mean[TAG_NAME])}
        for i, a in enumerate(ATTRS):
            out[f"loss_{a}"] = float(mean[2 + i])
            out[f"acc_{a}"] = float(exact[2 + i] / max(count[2 + i], 1))
        return out

    def decode(self, tokens: list[int]) -> str:
        text = " ".join("\n" if t == self.ids["<bos>"] else self.words[int(t)] for t in tokens)
        return text.replace(" .", ".").replace(" ,", ",").replace("\n ", "\n")

    def encode(self, text: str) -> list[int]:
        """Word-level tokenisation of text in this vocabulary (punctuation as separate words)."""
        return [self.ids[w] for w in text.replace(".", " .").replace(",", " ,").split()]


def parse_biography(tokens: list[int], task: CapoTask) -> tuple[int, dict[str, int]]:
    """Independent reader: (person index, {attr: value index}) of one biography; ValueError if malformed.

    Finds the person by full name, then each sentence's attribute by matching a template, and reads the
    value back through the word lists.
    """
    words = [task.words[t] for t in tokens]
    if words[0] != "<bos>" or words[-1] != ".":
        raise ValueError("a biography is <bos> sentences ending in '.'")
    ix = task.word_index
    person = task.person_index[(ix["first"][words[1]], ix["middle"][words[2]], ix["last"][words[3]])]
    pron = PRONOUNS[task.gender[person]][0]
    sentences, cur = [], []
    for w in words[1:]:
        cur.append(w)
        if w == ".":
            sentences.append(cur)
            cur = []
    found: dict[str, int] = {}
    for i, sent in enumerate(sentences):
        body = sent[3:] if i == 0 else sent[1:]
        if i and sent[0] != pron:
            raise ValueError(f"pronoun {sent[0]!r} does not match the person")
        for attr in ATTRS:
            for t in range(len(TEMPLATES[attr])):
                mid, post = template_parts(attr, t, int(task.gender[person]))
                if tuple(body[: len(mid)]) == mid and tuple(body[len(body) - len(post) :]) == post and len(body) > len(mid) + len(post):
                    value = body[len(mid) : len(body) - len(post)]
                    matches = [v for v in _candidates(task, attr, value) if task.value_words(attr, v) == value]
                    if matches and attr not in found:
                        found[attr] = matches[0]
    if set(found) != set(ATTRS):
        raise ValueError(f"attributes found: {sorted(found)}")
    return person, found


def _candidates(task: CapoTask, attr: str, value: list[str]) -> list[int]:
    """Value indices whose first word matches (cheap pre-filter for parse_biography)."""
    w = value[0]
    if attr == "birth_date":
        if w not in MONTHS or len(value) != 4 or not value[1].isdigit() or not value[3].isdigit():
            return []
        return [(MONTHS.index(w) * N_DAYS + int(value[1]) - 1) * task.cfg.n_years + int(value[3]) - 1900]
    lists = {"birth_city": "cities", "work_city": "cities", "university": "uni_stems", "major": "majors", "employer": "emp_stems"}
    index = task.word_index[lists[attr]]
    return [index[w]] if w in index else []


def check(tokens: list[int], task: CapoTask) -> bool:
    """True iff the biography states exactly the person's true attributes."""
    try:
        person, found = parse_biography(tokens, task)
    except (ValueError, KeyError):
        return False
    return all(found[a] == task.values[person, i] for i, a in enumerate(ATTRS))

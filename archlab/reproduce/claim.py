"""Claim files: one YAML per paper claim under ``configs/reproduce/`` (the paper's claim, setting and number; our
runs per budget; which arms to compare on which metric and in which direction; report options).

``kind: sweep`` claims are one or more sweeps (a recipe, overrides, grid, seeds, as in ``archlab sweep`` files)
compared arm against arm; ``kind: recurrence`` is the retrofitted-recurrence pipeline
(:mod:`archlab.reproduce.recurrence`), whose budget holds its stages' recipes instead of sweeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from archlab.config import ConfigError
from archlab.sweep import SweepPlan

REPO = Path(__file__).resolve().parents[2]
CLAIMS_DIR = REPO / "configs" / "reproduce"
RESULTS_DIR = Path("results") / "reproduce"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paper(Strict):
    claim: str
    setting: str
    number: str


class SweepSpec(Strict):
    """One sweep, as an ``archlab sweep`` file: ``base`` is relative to the claim file."""

    base: str | None = None
    overrides: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]]
    seeds: int = Field(ge=1)

    def plan(self, claim_file: Path) -> SweepPlan:
        base = Path(os.path.normpath(claim_file.parent / self.base)) if self.base else None
        grid = {k: ["" if v is None else v for v in vs] for k, vs in self.grid.items()}
        return SweepPlan(base, list(self.overrides), grid, self.seeds)


class Comparison(Strict):
    """treatment arm - baseline arm on ``metric``, each at its best LR, paired by seed. ``at`` pins the other swept
    keys (e.g. the depth); together they must name exactly one arm each. ``decides``: part of the verdict."""

    name: str
    sweep: str | None = None  # default: the budget's first sweep
    metric: str
    higher_is_better: bool
    treatment: dict[str, Any]
    baseline: dict[str, Any]
    at: dict[str, Any] = Field(default_factory=dict)
    decides: bool = True


class SweepReport(Strict):
    """Optional sections: ``by`` (a swept key: metric at the best LR per arm against it, e.g. depth),
    ``stability`` (largest stable LR per arm), ``first_block_grad`` (block-0 gradient norm, needs train.log_norms),
    ``curves`` (task metrics, i.e. eval.json keys, against step at the best LR: recorded during training with
    ``train.eval_task``; ``acquired``: the report gives the first step at which their seed mean reaches this)."""

    lr_key: str = "optim.lr"
    by: str | None = None
    stability: bool = False
    first_block_grad: bool = False
    curves: list[str] = Field(default_factory=list)
    acquired: float = 0.5


class SweepBudget(Strict):
    """``compare``, when given, replaces the claim's comparisons for this budget (e.g. other depths)."""

    setting: str
    sweeps: dict[str, SweepSpec]
    compare: list[Comparison] | None = None

    @model_validator(mode="after")
    def _nonempty(self) -> "SweepBudget":
        if not self.sweeps:
            raise ValueError("a budget needs at least one sweep")
        return self


class RecurrenceBudget(Strict):
    """The pipeline's stages: pretrain a Llama-shaped model (``pretrain`` recipe, one run), retrofit it into the
    prelude / core / coda of the ``heal`` recipe's ``model.recurrence``, heal for each of ``heal_steps`` (LR grid on
    ``lr_key`` x seeds), continue the static model (``static`` recipe) for the same training FLOPs with the same
    grid and seeds, and sweep the test-time recurrence ``rs``. Recipes are relative to the claim file;
    ``overrides`` go on the healing and the static runs."""

    setting: str
    pretrain: str
    pretrain_overrides: list[str] = Field(default_factory=list)
    heal: str
    static: str
    overrides: list[str] = Field(default_factory=list)
    heal_steps: list[int] = Field(min_length=1)
    lr_key: str
    lrs: list[float] = Field(min_length=1)
    seeds: int = Field(ge=1)
    rs: list[int] = Field(min_length=1)

    def recipe(self, claim_file: Path, which: str) -> Path:
        return Path(os.path.normpath(claim_file.parent / getattr(self, which)))


class Claim(Strict):
    name: str
    title: str
    paper: Paper
    kind: Literal["sweep", "recurrence"]
    budgets: dict[str, SweepBudget | RecurrenceBudget]
    compare: list[Comparison] = Field(default_factory=list)
    report: SweepReport = Field(default_factory=SweepReport)
    notes: str = ""
    path: Path

    @model_validator(mode="before")
    @classmethod
    def _budgets_by_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("budgets"), dict):
            model = RecurrenceBudget if data.get("kind") == "recurrence" else SweepBudget
            data = {**data, "budgets": {k: model.model_validate(v) for k, v in data["budgets"].items()}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "Claim":
        if self.kind == "sweep":
            for budget_name, budget in self.budgets.items():
                if not self.comparisons(budget_name):
                    raise ValueError(f"budget {budget_name!r}: a sweep claim needs at least one entry in 'compare'")
                for c in self.comparisons(budget_name):
                    if c.sweep is not None and c.sweep not in budget.sweeps:
                        raise ValueError(f"compare {c.name!r}: budget {budget_name!r} has no sweep {c.sweep!r}")
        return self

    def comparisons(self, budget: str) -> list[Comparison]:
        own = getattr(self.budgets[budget], "compare", None)
        return own if own is not None else self.compare

    def budget(self, name: str) -> SweepBudget | RecurrenceBudget:
        if name not in self.budgets:
            raise ConfigError(f"claim {self.name!r} has no budget {name!r}; it has: {', '.join(self.budgets)}")
        return self.budgets[name]


def claim_names() -> list[str]:
    return sorted(p.stem for p in CLAIMS_DIR.glob("*.yaml"))


def load_claim(name: str, claims_dir: Path = CLAIMS_DIR) -> Claim:
    """The claim ``name`` (``claims_dir/name.yaml``), validated; unknown names and bad files are ConfigErrors."""
    path = claims_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in claims_dir.glob("*.yaml"))
        raise ConfigError(f"unknown claim {name!r}; known claims: {', '.join(known) or 'none'} (files in {claims_dir})")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a claim file is a mapping")
    try:
        return Claim.model_validate({**tree, "name": name, "path": path})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None

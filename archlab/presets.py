"""Named architectures and task budgets for ``archlab scorecard``.

An architecture is a ``model`` section (a nested dict of model keys) laid over each task's recipe; a budget
level names, per task, the recipe, the token budget of one run, the LR grid and the number of seeds
[Physics of LM 4.1 §2-§3: fixed data, several LRs, best of the grid reported].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.config import ConfigError

TASKS = ("depo", "brevo", "capo", "mano", "lano")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Arch:
    """A named architecture: ``model`` keys laid over the budget's model (the architecture's keys win).
    ``rope_fraction``: partial RoPE on that fraction of each head's dims, resolved against the budget's head_dim."""

    name: str
    model: dict[str, Any]
    rope_fraction: float | None = None


def _attention(position: str, canon: str) -> dict[str, Any]:
    return {"mixer": {"name": "attention", "position": position}, "canon": canon}


# [spec §1.6, §3.2] Transformers: RoPE / NoPE / partial RoPE (all heads x 1/4 dims: the released code's
# rope_dim; the paper's text variant "half heads x half dims" is not expressible with one rope_dim) each ± ABCD.
# Linear models: GLA without conv (fla's playground default), Mamba2 and GDN with their own conv1d (Canon-b),
# each against Canon-AbCD(res). Mixer shapes are the paper's playground ones [spec §1.6 "Synthetic-playground"].
_GLA = {"name": "gla", "n_heads": 4, "expand_k": 0.5, "expand_v": 1.0}
_MAMBA2 = {"name": "mamba2", "d_state": 64, "n_heads": 16, "expand": 2, "n_groups": 1}
_GDN = {"name": "gdn", "n_heads": 4, "expand_v": 2.0}
PAPER_4_1: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("rope", _attention("rope", "")),
        Arch("rope-canon", _attention("rope", "ABCD")),
        Arch("nope", _attention("nope", "")),
        Arch("nope-canon", _attention("nope", "ABCD")),
        Arch("prope", _attention("rope", ""), rope_fraction=0.25),
        Arch("prope-canon", _attention("rope", "ABCD"), rope_fraction=0.25),
        Arch("gla", {"mixer": _GLA, "canon": ""}),
        Arch("gla-canon", {"mixer": _GLA, "canon": "AbCD"}),
        Arch("mamba2", {"mixer": _MAMBA2, "canon": "b"}),
        Arch("mamba2-canon", {"mixer": _MAMBA2, "canon": "AbCD"}),
        Arch("gdn", {"mixer": _GDN, "canon": "b"}),
        Arch("gdn-canon", {"mixer": _GDN, "canon": "AbCD"}),
    ]
}
PRESETS: dict[str, dict[str, Arch]] = {"paper-4.1": PAPER_4_1}


@dataclass(frozen=True)
class TaskBudget:
    """One task at one budget level. ``overrides`` (dotted) go on top of ``recipe``; the run's step count is
    ``tokens // (batch_size * seq_len)`` of the resolved config."""

    recipe: str  # file name under configs/
    tokens: int  # training tokens of one run
    lrs: tuple[float, ...]
    seeds: int
    overrides: tuple[str, ...] = field(default=())


# The headline metric of each task (higher is better for all five) and the extra columns of the matrix.
HEADLINE = {"depo": "acc_k{k_max}", "brevo": "acc", "capo": "bits_per_param", "mano": "acc_l{l_max}", "lano": "gen_acc"}

# tiny: the tiny recipes' 2-layer d=64 models on small instances, windows of 64 tokens, 300 steps of 16 windows
# (Capo: 100 people x ~80 exposures); 2 LRs x 2 seeds. Sized so that 4 architectures x 5
# tasks (80 runs, 1 CPU thread each, 2 at a time) finish in about an hour on 2 shared CPU cores.
_TINY_COMMON = ("train.seq_len=64", "train.batch_size=16", "train.eval_every=0", "train.log_every=25", "train.ckpt_every=150")
_TINY_TOKENS, _TINY_LRS = 300 * 16 * 64, (3e-3, 1e-2)
TINY = {
    "depo": TaskBudget("depo_tiny.yaml", _TINY_TOKENS, _TINY_LRS, 2, _TINY_COMMON),
    "brevo": TaskBudget("brevo_tiny.yaml", _TINY_TOKENS, _TINY_LRS, 2, ("data.n_max=6", *_TINY_COMMON)),
    "capo": TaskBudget("capo_tiny.yaml", _TINY_TOKENS, _TINY_LRS, 2, ("data.n_people=100", *_TINY_COMMON)),
    "mano": TaskBudget("mano_tiny.yaml", _TINY_TOKENS, _TINY_LRS, 2, _TINY_COMMON),
    "lano": TaskBudget("lano_tiny.yaml", _TINY_TOKENS, _TINY_LRS, 2, ("train.eval_batches=2", *_TINY_COMMON)),
}

# small: the paper's smallest model (8L512D, 8 heads of 64) at the paper's easiest data size and shorter runs;
# 5 tasks x 3 LRs x 2 seeds sized for about one GPU-day per architecture (an estimate from FLOPs, not measured).
_SMALL_MODEL = ("model.d_model=512", "model.n_layers=8", "model.mixer.n_heads=8", "train.ckpt_every=2000", "optim.warmup_steps=500")
SMALL = {
    "depo": TaskBudget("depo_paper.yaml", 20_000 * 64 * 1024, (5e-4, 1e-3, 2e-3), 2,
                       ("data.n_max=100", "data.k_max=4", "train.batch_size=64", "train.seq_len=1024", *_SMALL_MODEL)),
    "brevo": TaskBudget("brevo_paper.yaml", 20_000 * 64 * 1024, (5e-4, 1e-3, 2e-3), 2,
                        ("data.n_max=30", "train.batch_size=64", *_SMALL_MODEL)),
    "capo": TaskBudget("capo_paper.yaml", 20_000 * 12 * 512, (5e-4, 1e-3), 2, ("data.n_people=10000", *_SMALL_MODEL)),
    "mano": TaskBudget("mano_paper.yaml", 20_000 * 64 * 1024, (2e-4, 5e-4, 1e-3), 2, ("data.l_max=6", *_SMALL_MODEL)),
    "lano": TaskBudget("lano_paper.yaml", 20_000 * 96 * 512, (3e-4, 5e-4, 1e-3), 2, _SMALL_MODEL),
}

# paper: the recipes' own sizes (12L768D; Depo1 N=225, Brevo1 N=70, bioS 50K, Mano L=10, cfg3f), the paper's
# step counts and LR grids [spec §2.1-§2.5]; 2 seeds everywhere (the paper gives 2 only for Mano).
PAPER = {
    "depo": TaskBudget("depo_paper.yaml", 87_500 * 128 * 2048, (3e-4, 5e-4, 1e-3, 2e-3), 2),
    "brevo": TaskBudget("brevo_paper.yaml", 100_000 * 256 * 1024, (3e-4, 5e-4, 1e-3, 2e-3), 2),
    "capo": TaskBudget("capo_paper.yaml", 39_000 * 12 * 512, (5e-4, 1e-3), 2),
    "mano": TaskBudget("mano_paper.yaml", 80_000 * 64 * 1024, (1e-4, 2e-4, 3e-4, 5e-4), 2),
    "lano": TaskBudget("lano_paper.yaml", 100_000 * 96 * 512, (2e-4, 3e-4, 5e-4, 1e-3), 2),
}
BUDGETS: dict[str, dict[str, TaskBudget]] = {"tiny": TINY, "small": SMALL, "paper": PAPER}


def preset_archs(preset: str, names: list[str] | None = None) -> list[Arch]:
    """The preset's architectures, or the named subset in the order given."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    archs = PRESETS[preset]
    if not names:
        return list(archs.values())
    bad = [n for n in names if n not in archs]
    if bad:
        raise ConfigError(f"--arch {', '.join(bad)} not in preset {preset!r}; known: {', '.join(archs)}")
    return [archs[n] for n in names]

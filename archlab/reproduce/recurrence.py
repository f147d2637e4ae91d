"""The retrofitted-recurrence claim as a resumable pipeline (spec shared/specs/recurrence.md):

1. ``pretrain/``: one run of the pretrain recipe (a Llama-shaped model), a one-run sweep;
2. ``llama/``: its final checkpoint as an HF ``LlamaForCausalLM`` directory (needs transformers);
3. ``retrofit/``: :func:`archlab.retrofit.retrofit` into the heal recipe's prelude / core / coda;
4. ``heal/``: a sweep over healing lengths ``train.steps`` x LR grid x seeds, starting from the retrofit;
5. ``static/``: the pretrained model trained on with the same optimiser for the training FLOPs of each healing
   length (steps from the FLOPs of every sampled (n, k) draw, mean over seeds), same LR grid and seeds;
6. the loss of every healed run at each test-time r (``heal/<run>/recurrence_sweep.json``).

Every stage skips what exists; the sweeps skip finished runs. Paths handed to the runs (``model.init_from``) are
``out`` as given, so run from the repository root with the default relative ``--out`` to keep the sweep
directories valid from any checkout.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from archlab.checkpoint import MODEL_FILE, latest_intact, load_model_weights
from archlab.config import RunConfig, load_config
from archlab.plots import plot_recurrence_sweep
from archlab.report import best_lr_per_arm
from archlab.reproduce import analysis as an
from archlab.reproduce.claim import Claim, Comparison, RecurrenceBudget
from archlab.reproduce.figures import plot_points
from archlab.reproduce.render import command_line, effect_dict, fmt_effect, fmt_values, header, log_sitting, rel_path, write_outputs
from archlab.reproduce.sections import EDGE_NOTE, lr_cell
from archlab.stats import paired_effect
from archlab.sweep import DB_FILE, SweepPlan, load_results, prepare, run_plan

RUN = "seed=0"  # the pretraining run's name in its one-run sweep
SWEEP_JSON = "recurrence_sweep.json"


def _meta_model(cfg: RunConfig):
    from archlab.tasks import build_task
    from archlab.train import build_model

    with torch.device("meta"):
        return build_model(cfg, build_task(cfg.data, cfg.train.seq_len))


def training_flops(cfg: RunConfig) -> float:
    """Training FLOPs of a run: for a recurrent model from the (n, k) draw of every micro-batch (a pure function
    of seed and step; no-grad iterations count as a forward pass), else FLOPs/token x tokens."""
    model, cfg = _meta_model(cfg)
    tc, rc = cfg.train, cfg.model.recurrence
    if rc is None:
        return model.flops_per_token(tc.seq_len) * tc.steps * tc.batch_size * tc.seq_len
    from archlab.model.recurrence import sample_depth

    tokens = tc.batch_size // tc.grad_accum * tc.seq_len
    total = 0.0
    for step in range(tc.steps):
        for i in range(tc.grad_accum):
            n, k = sample_depth(rc, cfg.seed, step, i, tc.steps)
            total += model.flops_per_token(tc.seq_len, n + k, k) * tokens
    return total


class Pipeline:
    """The stages' plans and paths for one budget into ``out``."""

    def __init__(self, claim: Claim, budget: RecurrenceBudget, out: Path):
        self.b, self.out = budget, out
        self.recipes = {w: budget.recipe(claim.path, w) for w in ("pretrain", "heal", "static")}
        self.pretrain_plan = SweepPlan(self.recipes["pretrain"], list(budget.pretrain_overrides), {}, 1)
        pre_cfg = load_config(self.recipes["pretrain"], budget.pretrain_overrides)
        self.pretrain_ckpt = out / "pretrain" / RUN / f"step_{pre_cfg.train.steps}"
        self.heal_plan = SweepPlan(self.recipes["heal"], [*budget.overrides, f"model.init_from={out / 'retrofit'}"],
                                   {"train.steps": list(budget.heal_steps), budget.lr_key: list(budget.lrs)}, budget.seeds)
        self.flops = {h: self.heal_flops(h) for h in budget.heal_steps}
        self.matched = {h: self.matched_steps(h) for h in budget.heal_steps}
        self.static_plan = SweepPlan(self.recipes["static"], [*budget.overrides, f"model.init_from={self.pretrain_ckpt}"],
                                     {"train.steps": [self.matched[h] for h in budget.heal_steps], budget.lr_key: list(budget.lrs)},
                                     budget.seeds)
        self.heal_cfg = load_config(self.recipes["heal"], budget.overrides)
        if self.heal_cfg.model.recurrence is None:
            raise ValueError(f"{self.recipes['heal']}: the heal recipe needs a model.recurrence section")

    def heal_flops(self, h: int) -> float:
        """Mean over seeds of the training FLOPs of healing for ``h`` steps."""
        return statistics.fmean(training_flops(load_config(self.recipes["heal"], [*self.b.overrides, f"train.steps={h}", f"seed={s}"]))
                                for s in range(self.b.seeds))

    def matched_steps(self, h: int) -> int:
        cfg = load_config(self.recipes["static"], self.b.overrides)
        per_step = training_flops(cfg) / cfg.train.steps
        return max(1, round(self.flops[h] / per_step))

    def run(self, jobs: int, on_done) -> list[dict[str, Any]]:
        """Every stage that is not done yet; returns the sweep rows run this time."""
        rows = []
        if not (self.pretrain_ckpt / MODEL_FILE).is_file():  # also when only its results row survived (no checkpoints in git)
            (self.out / "pretrain" / DB_FILE).unlink(missing_ok=True)
        rows += run_plan(self.out / "pretrain", self.pretrain_plan, 1, on_done=_label("pretrain", on_done))
        self.retrofit()
        rows += run_plan(self.out / "heal", self.heal_plan, jobs, on_done=_label("heal", on_done))
        rows += run_plan(self.out / "static", self.static_plan, jobs, on_done=_label("static", on_done))
        self.r_sweeps()
        return rows

    def retrofit(self) -> None:
        from archlab import hf_llama
        from archlab import retrofit as rf
        from archlab.model.recurrence import build_lm

        llama, target = self.out / "llama", self.out / "retrofit"
        if (target / MODEL_FILE).is_file():
            return
        cfg = load_config(self.out / "pretrain" / RUN / "config.yaml")
        model = build_lm(cfg.model)
        load_model_weights(model, self.pretrain_ckpt)
        hf_llama.to_llama(model).save_pretrained(llama)
        rc = self.heal_cfg.model.recurrence
        model, layers = rf.retrofit(llama, (rc.prelude, rc.core, rc.coda), None, rc.adapter_init, 0,
                                    rc.model_dump(exclude={"prelude", "core", "coda", "adapter_init"}))
        rf.save(model, target, llama, layers)

    def r_sweeps(self) -> None:
        """recurrence_sweep.json of the unhealed retrofit and of every finished healing run that lacks one."""
        sweep_dir = self.out / "heal"
        done = [r for r in load_results(sweep_dir) if r["status"] == "done"] if (sweep_dir / DB_FILE).is_file() else []
        targets = [(self.out / "retrofit", self.out / "retrofit", self.heal_cfg)]
        for row in done:
            run_dir = sweep_dir / row["name"]
            ckpt, _ = latest_intact(run_dir)
            if ckpt is not None:
                targets.append((run_dir, ckpt.path, load_config(run_dir / "config.yaml")))
        for where, weights, cfg in targets:
            if not (where / SWEEP_JSON).is_file():
                (where / SWEEP_JSON).write_text(json.dumps(r_sweep(cfg, weights, self.b.rs), indent=1))


def r_sweep(cfg: RunConfig, weights: Path, rs: list[int]) -> list[dict[str, Any]]:
    """Loss on the run's val batches at each test-time r."""
    from archlab.evaluate import recurrence_sweep
    from archlab.tasks import build_task
    from archlab.train import build_model

    task = build_task(cfg.data, cfg.train.seq_len)
    model, cfg = build_model(cfg, task)  # vocab_size from the task where the recipe leaves it unset
    load_model_weights(model, weights)
    bs = cfg.train.batch_size // cfg.train.grad_accum
    return recurrence_sweep(model.eval(), task, cfg.seed, rs, cfg.train.eval_batches, bs, cfg.train.seq_len)


def _label(stage: str, on_done):
    return (lambda spec, row, i, n: on_done(stage, spec, row, i, n)) if on_done else None


def run(claim: Claim, budget_name: str, out: Path, jobs: int, execute: bool = True, on_done=None) -> Path:
    budget = claim.budget(budget_name)
    assert isinstance(budget, RecurrenceBudget)
    pipe = Pipeline(claim, budget, out)
    out.mkdir(parents=True, exist_ok=True)
    if execute:
        started, c0 = time.time(), time.process_time()
        rows = pipe.run(jobs, on_done)
        if rows:
            log_sitting(out, started, len(rows), sum(r.get("cpu_time") or 0.0 for r in rows), time.process_time() - c0)
    else:
        for stage, plan in (("pretrain", pipe.pretrain_plan), ("heal", pipe.heal_plan), ("static", pipe.static_plan)):
            prepare(out / stage, plan)
    return write_report(claim, budget_name, pipe, jobs)


def _rows(out: Path, stage: str) -> list[dict[str, Any]]:
    return load_results(out / stage) if (out / stage / DB_FILE).is_file() else []


def _best_sweeps(pipe: Pipeline, rows: list[dict[str, Any]], h: int) -> list[list[dict[str, Any]]]:
    """The r sweeps of healing length h at its best LR, one per seed."""
    lr_key = pipe.b.lr_key
    best = best_lr_per_arm([r for r in rows if r["status"] == "done" and r["params"]["train.steps"] == h], "val_loss",
                           lr_key, False, seeds=pipe.b.seeds)
    runs = next(iter(best.values()), [])
    paths = [pipe.out / "heal" / r["name"] / SWEEP_JSON for r in runs]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def _mean_sweep(sweeps: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"r": pts[0]["r"], "flops_per_token": pts[0]["flops_per_token"], "loss": statistics.fmean(p["loss"] for p in pts)}
            for pts in zip(*sweeps)]


def write_report(claim: Claim, budget_name: str, pipe: Pipeline, jobs: int) -> Path:
    b, out, lr_key = pipe.b, pipe.out, pipe.b.lr_key
    rows = {stage: _rows(out, stage) for stage in ("pretrain", "heal", "static")}
    results = []
    for h in b.heal_steps:
        c = Comparison(name=f"healed {h} steps vs static +{pipe.matched[h]} steps (equal training FLOPs)", metric="val_loss",
                       higher_is_better=False, treatment={"train.steps": h}, baseline={"train.steps": pipe.matched[h]},
                       decides=h == max(b.heal_steps))
        t = an.Side(pipe.heal_plan, rows["heal"], an.find_arm(an.planned_arms(pipe.heal_plan, lr_key), c.treatment, c.name))
        s = an.Side(pipe.static_plan, rows["static"], an.find_arm(an.planned_arms(pipe.static_plan, lr_key), c.baseline, c.name))
        results.append(an.compare_sides(c, t, s, lr_key))
    verdict = an.claim_verdict(results)
    all_rows = [r for rs in rows.values() for r in rs]
    planned = 1 + len(pipe.heal_plan.specs()) + len(pipe.static_plan.specs())
    n_done = sum(r["status"] == "done" for r in all_rows)
    cpu = {stage: sum(r.get("cpu_time") or 0.0 for r in rs) for stage, rs in rows.items()}
    status = (f"{n_done} of {planned} runs finished, {len(all_rows) - n_done} failed; CPU-minutes in the runs: "
              + ", ".join(f"{k} {v / 60:.1f}" for k, v in cpu.items()) + f" (total {sum(cpu.values()) / 60:.1f}; r sweeps "
              "and surgery in the driver: `sittings.jsonl`, driver_cpu_s).")
    decisive = results[-1]
    measured = f"{decisive.comparison.name}: val loss (nats/byte, at r = {pipe.heal_cfg.model.recurrence.mean_recurrence}) {fmt_effect(decisive.effect)}."
    lines = header(claim, budget_name, command_line(claim.name, budget_name, jobs, out), verdict, measured, status)
    lines += ["## Healed recurrent model vs static model at equal training FLOPs, by healing length", "",
              "Each arm at its best LR (every seed finished); effect = healed − static per seed (the same seed = the same "
              "data order), 95% Student-t interval. Healed loss at r = mean recurrence (the training mean).", "",
              "| healing steps | training FLOPs (mean over seeds) | static steps | healed: lr, mean ± sd | static: lr, mean ± sd | "
              "effect (95% CI) | verdict |", "|---|---|---|---|---|---|---|"]
    for h, r in zip(b.heal_steps, results):
        lines.append(f"| {h} | {pipe.flops[h]:.3e} | {pipe.matched[h]} | {lr_cell(r.treatment_lr, r.treatment_edge)}: "
                     f"{fmt_values(r.treatment_values)} | {lr_cell(r.baseline_lr, r.baseline_edge)}: {fmt_values(r.baseline_values)} | "
                     f"{fmt_effect(r.effect)} | **{r.verdict}**{'' if r.comparison.decides else ' (trend)'} |")
    if any(r.treatment_edge or r.baseline_edge for r in results):
        lines += ["", EDGE_NOTE]
    lines += ["", "Effect at each common LR (no selection): " + "; ".join(
        f"{h} steps: " + ", ".join(f"lr {lr:g} {'–' if e is None else f'{e.mean:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]'}" for lr, e in r.per_lr)
        for h, r in zip(b.heal_steps, results)), ""]
    plot_points({"healed − static": [(h, r.effect.mean, r.effect.lo, r.effect.hi) for h, r in zip(b.heal_steps, results) if r.effect]},
                "healing steps", "healed − static val loss (nats/byte)", "equal training FLOPs (95% t-interval; < 0: recurrence wins)",
                out / "effect_vs_healing.png", log2=True, zero=True)
    lines += ["![effect vs healing length](effect_vs_healing.png)", ""]
    lines += r_section(pipe, rows)
    lines += ["## Method", "",
              f"Pretraining: `{rel_path(pipe.recipes['pretrain'])}` {' '.join(b.pretrain_overrides)} (one run, seed 0). Retrofit "
              f"`archlab.retrofit` into the heal recipe's (prelude, core, coda); healing `{rel_path(pipe.recipes['heal'])}`, static "
              f"`{rel_path(pipe.recipes['static'])}` with `{' '.join(b.overrides)}`; LR grid `{lr_key}` ∈ {b.lrs} × {b.seeds} seeds "
              "for both. The static model's steps match the healing run's training FLOPs, summed over every sampled (n, k) "
              "draw (no-grad iterations as a forward pass; mean over seeds). Best LR per arm chosen on the same runs "
              "(optimistic for both arms; common-LR effects above)."]
    summary = {"claim": claim.name, "budget": budget_name, "verdict": verdict, "runs_planned": planned, "runs_done": n_done,
               "cpu_s": cpu, "matched_steps": pipe.matched,
               "comparisons": [{"name": r.comparison.name, "heal_steps": h, "decides": r.comparison.decides, "verdict": r.verdict,
                                "healed_lr": r.treatment_lr, "static_lr": r.baseline_lr, "healed_lr_edge": r.treatment_edge,
                                "static_lr_edge": r.baseline_edge, "healed": r.treatment_values,
                                "static": r.baseline_values, "effect": effect_dict(r.effect)} for h, r in zip(b.heal_steps, results)]}
    return write_outputs(out, lines, lines[2], summary)


def r_section(pipe: Pipeline, rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Loss against test-time r: the unhealed retrofit, each healing length at its best LR (mean over seeds), the
    r = M vs r = 1 paired effect; plot with the static models."""
    b, m = pipe.b, pipe.heal_cfg.model.recurrence.mean_recurrence
    curves: dict[str, list[dict[str, Any]]] = {}
    retro = pipe.out / "retrofit" / SWEEP_JSON
    if retro.is_file():
        curves["retrofit, not healed"] = json.loads(retro.read_text())
    lines = ["## Loss against test-time recurrence r (val, nats/byte)", "", "| model | " + " | ".join(f"r = {r}" for r in b.rs)
             + f" | r = {m} − r = 1 (95% CI) |", "|---|" + "---|" * (len(b.rs) + 1)]
    if retro.is_file():
        lines.append("| retrofit, not healed | " + " | ".join(f"{p['loss']:.4f}" for p in curves["retrofit, not healed"]) + " | |")
    for h in b.heal_steps:
        sweeps = _best_sweeps(pipe, rows["heal"], h)
        if len(sweeps) < 2:
            continue
        curves[f"healed {h} steps"] = mean = _mean_sweep(sweeps)
        at = {r: i for i, r in enumerate(b.rs)}
        effect = paired_effect([s[at[m]]["loss"] - s[at[1]]["loss"] for s in sweeps]) if m in at and 1 in at else None
        lines.append(f"| healed {h} steps (best LR, {len(sweeps)} seeds) | " + " | ".join(f"{p['loss']:.4f}" for p in mean)
                     + f" | {fmt_effect(effect)} |")
    static_cfg = load_config(pipe.recipes["static"], b.overrides)
    fpt = _meta_model(static_cfg)[0].flops_per_token(static_cfg.train.seq_len) / 3  # forward = training / 3
    static = {}
    pre = [r for r in rows["pretrain"] if r["status"] == "done"]
    if pre:
        static["pretrained (before healing)"] = {"loss": pre[0]["val_loss"], "flops_per_token": fpt}
    for h in b.heal_steps:
        done = [r for r in rows["static"] if r["status"] == "done" and r["params"]["train.steps"] == pipe.matched[h]]
        best = next(iter(best_lr_per_arm(done, "val_loss", b.lr_key, False, seeds=b.seeds).values()), [])
        if best:
            static[f"static +{pipe.matched[h]} steps"] = {"loss": statistics.fmean(r["val_loss"] for r in best), "flops_per_token": fpt}
    lines += [""] + [f"- {k}: {v['loss']:.4f}" for k, v in static.items()] + [""]
    if curves:
        plot_recurrence_sweep(curves, pipe.out / "loss_vs_r.png", "loss", static)
        lines += ["![loss vs r](loss_vs_r.png)", ""]
    return lines

"""The architecture scorecard: every architecture through DEPO, BREVO, CAPO, MANO and LANO at a fixed budget.

Layout of the output directory: one sweep per (architecture, task) cell in ``OUT/<arch>/<task>/`` (the LR grid
x seeds, built on :mod:`archlab.sweep`, so it resumes: finished runs are skipped), with the cell's resolved
recipe ``cell.yaml`` and ``cell.json`` (what the matrix needs). ``scorecard.md`` holds the matrix (best of the
LR grid per cell, mean ± std over seeds) and the compute per cell; ``heatmap.png`` and ``task_<task>.png``
the plots.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from archlab.config import ConfigError, apply_overrides, build_config
from archlab.presets import BUDGETS, CONFIGS, HEADLINE, TASKS, Arch, TaskBudget
from archlab.report import mean_std, metric_of
from archlab.sweep import DB_FILE, RunSpec, finished_runs, load_results, open_db, run_sweep

CELL_YAML, CELL_JSON, MATRIX_MD = "cell.yaml", "cell.json", "scorecard.md"
LR_KEY = "optim.lr"


@dataclass(frozen=True)
class Cell:
    """One (architecture, task) sweep: what runs and how its results are read."""

    arch: str
    task: str
    lrs: list[float]
    seeds: int
    steps: int
    tokens_per_run: int  # steps * batch_size * seq_len
    headline: str  # metric that picks the best LR (higher is better)
    columns: list[str]  # metrics shown in the matrix
    flops_per_token: float


def load_arch(path: Path) -> Arch:
    """An architecture file: ``name`` (default: the file's stem) and a ``model`` section."""
    if not path.is_file():
        raise ConfigError(f"architecture file {str(path)!r} does not exist")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict) or not isinstance(tree.get("model"), dict):
        raise ConfigError(f"{path}: an architecture file needs a 'model' section (a mapping of model keys)")
    extra = sorted(set(tree) - {"name", "model"})
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(extra)}; an architecture file has only 'name' and 'model'")
    return Arch(str(tree.get("name", path.stem)), tree["model"])


def merge_model(base: dict[str, Any], arch: dict[str, Any]) -> dict[str, Any]:
    """The architecture's model keys over the budget's; a different mixer name replaces the mixer section."""
    out = {**base, **{k: v for k, v in arch.items() if k != "mixer"}}
    if "mixer" in arch:
        base_mixer = base.get("mixer", {})
        same = arch["mixer"].get("name", base_mixer.get("name")) == base_mixer.get("name")
        out["mixer"] = {**base_mixer, **arch["mixer"]} if same else dict(arch["mixer"])
    return out


def cell_tree(arch: Arch, task: str, budget: TaskBudget, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved config of one cell (LR and seed are set per run): recipe + budget overrides + the caller's
    overrides (e.g. ``data.doc_mask=true``) + architecture, with ``train.steps = tokens // (batch_size * seq_len)``."""
    tree = apply_overrides(yaml.safe_load((CONFIGS / budget.recipe).read_text()), [*budget.overrides, *overrides])
    tree["model"] = merge_model(tree.get("model", {}), arch.model)
    cfg = build_config(tree)
    if arch.rope_fraction is not None:
        head_dim = cfg.model.mixer.resolved_head_dim(cfg.model.d_model)
        tree["model"]["mixer"]["rope_dim"] = max(2, int(head_dim * arch.rope_fraction) // 2 * 2)
    per_step = cfg.train.batch_size * cfg.train.seq_len
    steps = budget.tokens // per_step
    if steps < 1:
        raise ConfigError(f"{task}: budget of {budget.tokens} tokens is less than one step ({per_step} tokens)")
    tree["train"]["steps"] = steps
    tree.pop("name", None)
    return build_config(tree).to_dict()


def cell_columns(task: str, data: dict[str, Any]) -> tuple[str, list[str]]:
    """(headline metric, matrix columns) of a task, from its data config [spec §2: Depo k=K and K/2, Mano per ℓ]."""
    headline = HEADLINE[task].format(**data)
    if task == "depo":
        k = data["k_max"]
        return headline, [headline] + ([f"acc_k{k // 2}"] if k > 1 else [])
    if task == "mano":  # one-operation expressions are all training data (no test instances): ℓ >= 2
        return headline, [f"acc_l{ell}" for ell in range(min(2, data["l_max"]), data["l_max"] + 1)]
    return headline, [headline]


def flops_per_token(tree: dict[str, Any]) -> float:
    """Training FLOPs per token of the cell's model (built on the meta device: no memory, no init)."""
    import torch

    from archlab.tasks import build_task
    from archlab.train import build_model

    cfg = build_config(tree)
    with torch.device("meta"):
        model, cfg = build_model(cfg, build_task(cfg.data, cfg.train.seq_len))
    return float(model.flops_per_token(cfg.train.seq_len))


def plan(archs: list[Arch], budget: str, tasks: list[str], out: Path, overrides: tuple[str, ...] = ()) -> list[tuple[Cell, Path]]:
    """Validate every cell and write its ``cell.yaml`` / ``cell.json``; refuses to reuse a cell directory made
    with a different recipe. Ordered task-major, so a cut-short scorecard has whole task columns. ``overrides``
    (dotted ``key=value``) apply to every cell, e.g. ``data.doc_mask=true``."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ConfigError(f"unknown task(s) {', '.join(bad)}; known: {', '.join(TASKS)}")
    out = out.resolve()
    names = [a.name for a in archs]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"architecture names must be unique and at least one: {names}")
    cells = []
    for task in tasks:
        b = BUDGETS[budget][task]
        for arch in archs:
            try:
                tree = cell_tree(arch, task, b, tuple(overrides))
            except ConfigError as err:
                raise ConfigError(f"{arch.name} x {task}: {err}") from None
            headline, columns = cell_columns(task, tree["data"])
            per_step = tree["train"]["batch_size"] * tree["train"]["seq_len"]
            cell = Cell(arch.name, task, list(b.lrs), b.seeds, tree["train"]["steps"], tree["train"]["steps"] * per_step,
                        headline, columns, flops_per_token(tree))
            cells.append((cell, _write_cell(out / arch.name / task, tree, cell)))
    return cells


def _write_cell(cell_dir: Path, tree: dict[str, Any], cell: Cell) -> Path:
    text = yaml.safe_dump(tree, sort_keys=False)
    path = cell_dir / CELL_YAML
    if path.is_file() and path.read_text() != text:
        raise ConfigError(f"{path}: this cell was made with a different recipe or budget; use another --out")
    cell_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (cell_dir / CELL_JSON).write_text(json.dumps(asdict(cell), indent=2))
    return cell_dir


def finished(cells: list[tuple[Cell, Path]]) -> int:
    """How many of the cells' runs are already done (they will be skipped)."""
    n = 0
    for _, cell_dir in cells:
        if (cell_dir / DB_FILE).is_file():
            db = open_db(cell_dir)
            n += len(finished_runs(db))
            db.close()
    return n


OnDone = Callable[[str, RunSpec, dict[str, Any]], None]


def run_scorecard(cells: list[tuple[Cell, Path]], jobs: int, on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Run the cells one after another, each cell's LR grid x seeds ``jobs`` runs at a time (CPU threads shared
    fairly by the sweep); returns the rows run this time (finished runs are skipped)."""
    rows = []
    for cell, cell_dir in cells:
        label = f"{cell.arch} x {cell.task}"
        report = (lambda spec, row, i, n, label=label: on_done(label, spec, row)) if on_done else None
        rows += run_sweep(cell_dir, cell_dir / CELL_YAML, [], {LR_KEY: cell.lrs}, cell.seeds, jobs, on_done=report,
                          label=f"{cell_dir.resolve().parent.parent.name}/{cell.arch}/{cell.task}")  # run groups OUT/ARCH/TASK/lr=...
    return rows


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    best_lr: float | None
    values: dict[str, list[float]]  # column -> per-seed values at the best LR
    runs_done: int
    runs_failed: int
    tokens: int  # trained, over every run of the cell
    wall_time: float  # seconds, over every run of the cell
    done: list[dict[str, Any]]  # the finished runs' rows (every LR)


def summarize(cell: Cell, rows: list[dict[str, Any]]) -> CellResult:
    """Best LR by mean headline over seeds (higher is better), the columns at that LR, and the cell's compute."""
    done = [r for r in rows if r["status"] == "done"]
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in done:
        by_lr.setdefault(r["params"][LR_KEY], []).append(r)
    scored = {lr: statistics.fmean(v) for lr, rs in by_lr.items() if (v := [m for r in rs if (m := metric_of(r, cell.headline)) is not None])}
    best = max(scored, key=scored.__getitem__) if scored else None
    values = {c: [m for r in by_lr.get(best, []) if (m := metric_of(r, c)) is not None] for c in cell.columns}
    return CellResult(cell, best, values, len(done), len(rows) - len(done), sum(r["tokens"] or 0 for r in done),
                      sum(r["wall_time"] or 0.0 for r in rows), done)


def collect(out: Path) -> list[CellResult]:
    """Every cell under ``out`` with results, in arch-then-task order of creation (cell.json files)."""
    results = []
    for path in sorted(out.glob(f"*/*/{CELL_JSON}")):
        cell = Cell(**json.loads(path.read_text()))
        rows = load_results(path.parent) if (path.parent / "results.sqlite").is_file() else []
        results.append(summarize(cell, rows))
    return results


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def matrix_markdown(results: list[CellResult], arch_order: list[str] | None = None) -> str:
    """Two tables, architectures x task metrics: the scores (best LR, mean ± std over seeds) and the compute."""
    archs = arch_order or list(dict.fromkeys(r.cell.arch for r in results))
    tasks = [t for t in TASKS if any(r.cell.task == t for r in results)]
    at = {(r.cell.arch, r.cell.task): r for r in results}
    cols = [(t, c) for t in tasks for c in next(r for r in results if r.cell.task == t).cell.columns]
    lines = ["| architecture | " + " | ".join(f"{t} {c}" for t, c in cols) + " |", "|---|" + "---|" * len(cols)]
    for a in archs:
        lines.append(f"| {a} | " + " | ".join(_fmt(at[(a, t)].values[c]) if (a, t) in at else "–" for t, c in cols) + " |")
    lines += ["", "Compute per cell (all LRs x seeds): best LR; runs done (failed); tokens trained; training PFLOPs "
              "(FLOPs/token x tokens); wall-clock minutes summed over runs.", "",
              "| architecture | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for a in archs:
        parts = []
        for t in tasks:
            r = at.get((a, t))
            if r is None:
                parts.append("–")
                continue
            failed = f" ({r.runs_failed})" if r.runs_failed else ""
            pflops = r.cell.flops_per_token * r.tokens / 1e15
            parts.append(f"lr {r.best_lr:g}; {r.runs_done}{failed} runs; {r.tokens / 1e6:.1f}M tok; "
                         f"{pflops:.3g} PF; {r.wall_time / 60:.1f} min" if r.best_lr is not None else f"0{failed} runs")
        lines.append(f"| {a} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def _headline_mean(r: CellResult | None) -> float:
    values = r.values[r.cell.headline] if r else []
    return statistics.fmean(values) if values else float("nan")


def plot_heatmap(results: list[CellResult], path: Path) -> None:
    """Architectures x headline metrics; colour = value scaled to [0, 1] within each column, text = mean."""
    from archlab.plots import plt

    archs = list(dict.fromkeys(r.cell.arch for r in results))
    tasks = [t for t in TASKS if any(r.cell.task == t for r in results)]
    at = {(r.cell.arch, r.cell.task): r for r in results}
    means = [[_headline_mean(at.get((a, t))) for t in tasks] for a in archs]
    scaled = []
    for row in means:
        scaled.append([])
        for j, v in enumerate(row):
            col = [m[j] for m in means if m[j] == m[j]]
            lo, hi = (min(col), max(col)) if col else (0.0, 1.0)
            scaled[-1].append((v - lo) / (hi - lo) if hi > lo and v == v else 0.5 if v == v else float("nan"))
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 0.5 * len(archs) + 1.5), dpi=120)
    ax.imshow(scaled, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(means):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if v != v else f"{v:.3f}", ha="center", va="center", color="w" if scaled[i][j] < 0.6 else "k", fontsize=8)
    heads = {t: next(r.cell.headline for r in results if r.cell.task == t) for t in tasks}
    ax.set_xticks(range(len(tasks)), [f"{t}\n{heads[t]}" for t in tasks], fontsize=8)
    ax.set_yticks(range(len(archs)), archs, fontsize=8)
    ax.set_title("scorecard (best LR, mean over seeds; colour scaled per column)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_task(results: list[CellResult], task: str, path: Path) -> None:
    """Headline metric against LR per architecture (the whole grid, mean ± std over seeds), and for tasks with
    several matrix columns (Depo k, Mano ℓ) those columns at the best LR."""
    from archlab.plots import plt

    cells = [r for r in results if r.cell.task == task]
    many = len(cells[0].cell.columns) > 1
    fig, axes = plt.subplots(1, 2 if many else 1, figsize=(11 if many else 6, 4), dpi=120, squeeze=False)
    for r in cells:
        pts = []
        for lr in sorted({x["params"][LR_KEY] for x in r.done}):
            vals = [m for x in r.done if x["params"][LR_KEY] == lr and (m := metric_of(x, r.cell.headline)) is not None]
            if vals:
                pts.append((lr, *mean_std(vals)))
        if pts:
            xs, ms, ss = zip(*pts)
            axes[0][0].errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=r.cell.arch)
        if many:
            xs = [int(re.sub(r"\D", "", c)) for c in r.cell.columns]
            stats = [mean_std(r.values[c]) if r.values[c] else (float("nan"), 0.0) for c in r.cell.columns]
            axes[0][1].errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=r.cell.arch)
            axes[0][1].set_xticks(xs)
    axes[0][0].set(xscale="log", xlabel="learning rate", ylabel=cells[0].cell.headline, title=f"{task}: {cells[0].cell.headline} vs LR")
    if many:
        axes[0][1].set(xlabel="k (hops)" if task == "depo" else "ℓ (operations)", ylabel="accuracy", title=f"{task}: per column at the best LR")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, title: str, arch_order: list[str] | None = None) -> Path:
    """``scorecard.md`` + ``heatmap.png`` + ``task_<task>.png`` from whatever has finished under ``out``."""
    results = [r for r in collect(out) if arch_order is None or r.cell.arch in arch_order]
    if arch_order:
        results.sort(key=lambda r: arch_order.index(r.cell.arch))
    if not results:
        raise FileNotFoundError(f"{out}: no scorecard cells (cell.json) found")
    lines = [f"# Scorecard: {title}", "", "Best of the LR grid per cell (by the first metric of each task), mean ± std "
             "over seeds at that LR. Higher is better everywhere.", "", matrix_markdown(results, arch_order), "",
             "![heatmap](heatmap.png)", ""]
    plot_heatmap(results, out / "heatmap.png")
    for task in [t for t in TASKS if any(r.cell.task == t for r in results)]:
        plot_task(results, task, out / f"task_{task}.png")
        lines.append(f"![{task}](task_{task}.png)")
    path = out / MATRIX_MD
    path.write_text("\n".join(lines) + "\n")
    return path

"""Sweeps: a grid of dotted overrides x seeds -> run directories, one row per run in ``results.sqlite``.

Runs go to parallel local processes (default), to a Ray cluster (``backend="ray"``), or out as a list of shell
/ ``torchrun`` commands for a scheduler (``emit_commands``) whose finished runs ``collect`` later adds to the
table. Resumable: finished runs are skipped, interrupted ones resume from their newest checkpoint; a failed
run is recorded with its error and never stops the sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from archlab.config import ConfigError, load_config, parse_value
from archlab.tracking import require_loggers

SWEEP_FILE, DB_FILE, COMMANDS_FILE = "sweep.json", "results.sqlite", "commands.sh"
BACKENDS = ("local", "ray")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    config_hash TEXT,
    params TEXT,          -- JSON: swept key -> value (seed included)
    seed INTEGER,
    status TEXT,          -- done | failed
    final_loss REAL,
    best_loss REAL,
    val_loss REAL,
    metrics TEXT,         -- JSON: every number in eval.json
    tokens INTEGER,
    wall_time REAL,
    error TEXT,
    finished TEXT,
    cpu_time REAL         -- CPU seconds of the run's process (user + system, all its threads)
)
"""
COLUMNS = ["name", "config_hash", "params", "seed", "status", "final_loss", "best_loss", "val_loss", "metrics",
           "tokens", "wall_time", "error", "finished", "cpu_time"]


@dataclass(frozen=True)
class RunSpec:
    name: str
    params: dict[str, Any]  # swept key -> value, incl. "seed"
    overrides: tuple[str, ...]

    @property
    def arm(self) -> str:
        """The name without the seed ('' for a grid of seeds only): the runs of one arm differ only in their seed."""
        return run_name({k: v for k, v in self.params.items() if k != "seed"})


@dataclass
class SweepPlan:
    """What to sweep: a recipe (optional), fixed overrides, a grid, seeds; ``report`` holds report options;
    ``label`` names the sweep in run groups (None: the sweep directory's name)."""

    base: Path | None = None
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: int = 1
    report: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def specs(self) -> list[RunSpec]:
        return expand(self.grid, self.seeds)

    def config(self, spec: RunSpec):
        return load_config(self.base, [*self.overrides, *spec.overrides])

    def meta(self) -> dict[str, Any]:
        """What identifies the sweep: the recipe (path and content hash), overrides, grid and seeds."""
        base_sha = recipe_hash(self.base) if self.base else None
        return json.loads(json.dumps({"base": str(self.base) if self.base else None, "base_sha": base_sha,
                                      "overrides": self.overrides, "grid": self.grid, "seeds": self.seeds}))


def recipe_hash(path: Path) -> str:
    """Hash of a recipe's parsed YAML, so that editing its comments or layout keeps its sweeps resumable."""
    tree = yaml.safe_load(path.read_text())
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _comparable(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both plans without what does not identify a sweep. The recipe is compared by content when both record its
    hash, so a sweep directory stays resumable from another checkout (another absolute path to the same recipe)."""
    old, new = {k: v for k, v in old.items() if k != "report"}, {k: v for k, v in new.items() if k != "report"}
    if old.get("base_sha") and new.get("base_sha"):
        old.pop("base"), new.pop("base")
    else:
        old.pop("base_sha", None), new.pop("base_sha", None)
    return old, new


def same_plan(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two sweep.json plans agree."""
    old, new = _comparable(old, new)
    return old == new


def grows_plan(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """``new`` only adds to ``old``: the same recipe and overrides, the same swept keys, every old value still in
    the grid and at least as many seeds. The finished runs of ``old`` are then runs of ``new`` (a run's name and
    config follow from its values), e.g. an LR grid widened because the best LR sat at its edge."""
    old, new = _comparable(old, new)
    rest = [k for k in old.keys() | new.keys() if k not in ("grid", "seeds")]
    if any(old.get(k) != new.get(k) for k in rest) or old["grid"].keys() != new["grid"].keys():
        return False
    return new["seeds"] >= old["seeds"] and all(v in new["grid"][k] for k, vs in old["grid"].items() for v in vs)


SWEEP_FILE_KEYS = {"base", "overrides", "grid", "seeds", "report"}
REPORT_KEYS = {"metric", "lr_key", "higher_is_better", "compare"}


def is_sweep_file(path: Path) -> bool:
    """A YAML with a top-level ``grid`` is a sweep file; anything else is a run recipe."""
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(tree, dict) and "grid" in tree


def load_sweep_file(path: Path) -> SweepPlan:
    """Sweep file: ``base`` (recipe path, relative to this file), ``overrides`` (list), ``grid`` (key -> list),
    ``seeds`` (int), ``report`` (options for ``archlab report``: metric, lr_key, higher_is_better)."""
    tree = yaml.safe_load(path.read_text())
    unknown = set(tree) - SWEEP_FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep-file key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_FILE_KEYS)}")
    grid = tree["grid"]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists of values")
    seeds = tree.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"{path}: 'seeds' must be a positive integer, got {seeds!r}")
    report = tree.get("report") or {}
    if not isinstance(report, dict) or set(report) - REPORT_KEYS:
        raise ConfigError(f"{path}: 'report' takes only {sorted(REPORT_KEYS)}, got {report!r}")
    base = tree.get("base")
    return SweepPlan(Path(os.path.normpath(path.parent / base)) if base else None, [str(o) for o in tree.get("overrides") or []],
                     {str(k): ["" if x is None else x for x in v] for k, v in grid.items()}, seeds, report)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['optim.lr=1e-3,3e-3', 'model.canon=,ABCD'] -> {'optim.lr': [1e-3, 3e-3], 'model.canon': ['', 'ABCD']}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not of the form key=v1,v2,...")
        key, values = item.split("=", 1)
        if key in grid:
            raise ConfigError(f"--grid key {key!r} given twice")
        grid[key] = [parse_value(v) for v in values.split(",")]
    return grid


def build_plan(recipe: Path | None, overrides: list[str], grid: list[str], seeds: int | None) -> SweepPlan:
    """The plan of a sweep file or a run recipe (or the defaults), plus fixed overrides, ``--grid`` items and seeds."""
    if recipe is not None and not recipe.is_file():
        raise ConfigError(f"config file {str(recipe)!r} does not exist")
    plan = load_sweep_file(recipe) if recipe is not None and is_sweep_file(recipe) else SweepPlan(recipe)
    extra = parse_grid(grid)
    for key in extra.keys() & plan.grid.keys():
        raise ConfigError(f"--grid key {key!r} is already in the sweep file's grid")
    plan.overrides, plan.grid = [*plan.overrides, *overrides], {**plan.grid, **extra}
    plan.seeds = seeds or plan.seeds
    return plan


def _slug(value: Any) -> str:
    text = "none" if value == "" or value is None else str(value)
    return "".join(c if c.isalnum() or c in ".-+" else "_" for c in text)


def run_name(params: dict[str, Any]) -> str:
    """{'optim.lr': 0.003, 'model.canon': 'ABCD', 'seed': 1} -> 'lr=0.003_canon=ABCD_seed=1'."""
    return "_".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in params.items())


def expand(grid: dict[str, list[Any]], seeds: int) -> list[RunSpec]:
    """Cartesian product of the grid x seeds 0..seeds-1, with readable run names (seed last: an arm's runs sort together)."""
    keys = list(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        for seed in range(seeds):
            params = {**dict(zip(keys, combo)), "seed": seed}
            overrides = tuple(f"{k}={'' if v is None else v}" for k, v in params.items())
            specs.append(RunSpec(run_name(params), params, overrides))
    return specs


def config_hash(tree: dict[str, Any]) -> str:
    tree = json.loads(json.dumps(tree))
    tree.pop("name", None)
    tree.pop("out_dir", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def open_db(sweep_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(sweep_dir / DB_FILE, timeout=30, check_same_thread=False)
    db.execute(SCHEMA)
    if "cpu_time" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}:  # a table from before cpu_time
        db.execute("ALTER TABLE runs ADD COLUMN cpu_time REAL")
    return db


def finished_runs(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM runs WHERE status = 'done'")}


def save_row(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               [row.get(c) for c in COLUMNS])
    db.commit()


def train_command(spec: RunSpec, plan: SweepPlan, sweep_dir: Path, threads: int, nproc: int = 1) -> list[str]:
    """The command line that trains one run: ``python -m archlab.cli train ...`` or, with nproc > 1,
    ``torchrun --standalone --nproc_per_node=N -m archlab.cli train ...``."""
    launcher = [sys.executable, "-m"] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    group = "/".join(p for p in (plan.label or sweep_dir.resolve().name, spec.arm) if p)  # W&B / TensorBoard run group
    return [*launcher, "archlab.cli", "train", *([str(plan.base)] if plan.base else []), f"train.group={json.dumps(group)}",
            *plan.overrides, *spec.overrides, f"train.threads={threads}", f"name={spec.name}", f"out_dir={sweep_dir}"]


def collect_row(spec: RunSpec, plan: SweepPlan, sweep_dir: Path, returncode: int | None = 0,
                wall_time: float | None = None, cpu_time: float | None = None) -> dict[str, Any]:
    """The results row of one run from its run directory (metrics.jsonl, eval.json, log.txt)."""
    run_dir = sweep_dir / spec.name
    row: dict[str, Any] = {"name": spec.name, "params": json.dumps(spec.params), "seed": spec.params["seed"],
                           "wall_time": wall_time, "cpu_time": cpu_time, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "config_hash": config_hash(plan.config(spec).to_dict())}
    if returncode != 0 or not (run_dir / "eval.json").is_file():
        log = run_dir / "log.txt"
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else ["no eval.json, no log.txt"]
        return {**row, "status": "failed", "error": " | ".join(tail)[-2000:]}
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    ev = json.loads((run_dir / "eval.json").read_text())
    return {**row, "status": "done", "final_loss": records[-1]["loss"], "best_loss": min(r["loss"] for r in records),
            "val_loss": ev.get("loss"), "metrics": json.dumps(ev), "tokens": records[-1]["tokens"], "error": None}


def run_one(spec: RunSpec, plan: SweepPlan, sweep_dir: Path, threads: int) -> dict[str, Any]:
    """Train one run in a child process; return its results row (with the child's own CPU time, from wait4:
    on a shared machine wall time measures the neighbours too)."""
    run_dir = sweep_dir / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(run_dir / "log.txt", "a") as log:
        proc = subprocess.Popen(train_command(spec, plan, sweep_dir, threads), stdout=log, stderr=subprocess.STDOUT,
                                env=env, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return collect_row(spec, plan, sweep_dir, proc.returncode, time.time() - t0, usage.ru_utime + usage.ru_stime)


def _local(todo: list[RunSpec], plan: SweepPlan, sweep_dir: Path, jobs: int, threads: int) -> Iterator[tuple[RunSpec, dict]]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, s, plan, sweep_dir, threads): s for s in todo}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _ray(todo: list[RunSpec], plan: SweepPlan, sweep_dir: Path, jobs: int, threads: int) -> Iterator[tuple[RunSpec, dict]]:
    """One Ray task per run (``num_cpus=threads``); the sweep directory must be on a filesystem the workers share.
    Connects to ``RAY_ADDRESS`` when set, else starts a local Ray instance. ``jobs`` caps the runs in flight."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs the 'ray' package: pip install 'archlab[ray]'") from None
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    remote = ray.remote(num_cpus=threads)(run_one)
    pending, queue = {}, list(todo)
    while queue or pending:
        while queue and len(pending) < jobs:
            spec = queue.pop(0)
            pending[remote.remote(spec, plan, sweep_dir, threads)] = spec
        ready, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(ready[0]), ray.get(ready[0])


def prepare(sweep_dir: Path, plan: SweepPlan) -> list[RunSpec]:
    """Validate every run's config, create the sweep dir, check it was made by the same plan or
    one this plan grows (:func:`grows_plan`); return all specs."""
    specs = plan.specs()
    for spec in specs:  # validate every config before any work
        plan.config(spec)
    meta_path, new = sweep_dir / SWEEP_FILE, plan.meta()
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        old.pop("report", None)
        if not (same_plan(old, new) or grows_plan(old, new)):
            raise ConfigError(f"{meta_path}: this sweep directory was made with different settings ({old}); use another "
                              "directory (a plan may only grow: more grid values or seeds, the rest unchanged)")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps({**new, "report": plan.report}, indent=2))
    return specs


def run_plan(
    sweep_dir: Path,
    plan: SweepPlan,
    jobs: int = 1,
    backend: str = "local",
    on_done: Callable[[RunSpec, dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not yet done on ``backend``; returns the rows of this invocation."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {list(BACKENDS)}")
    specs = prepare(sweep_dir, plan)
    if backend == "local":  # the child processes have this interpreter's packages: a missing tracker fails here, once
        require_loggers(sorted({name for spec in specs for name in plan.config(spec).train.loggers}))
    db = open_db(sweep_dir)
    todo = [s for s in specs if s.name not in finished_runs(db)]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    runner = _local if backend == "local" else _ray
    rows = []
    for i, (spec, row) in enumerate(runner(todo, plan, sweep_dir, jobs, threads), 1):
        save_row(db, row)
        rows.append(row)
        if on_done:
            on_done(spec, row, i, len(todo))
    db.close()
    return rows


def run_sweep(sweep_dir: Path, base: Path | None, overrides: list[str], grid: dict[str, list[Any]], seeds: int,
              jobs: int, on_done: Callable[[RunSpec, dict[str, Any], int, int], None] | None = None,
              backend: str = "local", label: str | None = None) -> list[dict[str, Any]]:
    """``run_plan`` with the plan given as its parts."""
    return run_plan(sweep_dir, SweepPlan(base, overrides, grid, seeds, label=label), jobs, backend, on_done)


def emit_commands(sweep_dir: Path, plan: SweepPlan, nproc: int = 1, threads: int = 1) -> list[str]:
    """Write ``commands.sh`` (one line per unfinished run, for a scheduler or ``xargs -P``) and return its lines.
    After they ran, ``collect`` adds their results to the table."""
    specs = prepare(sweep_dir, plan)
    db = open_db(sweep_dir)
    done = finished_runs(db)
    db.close()
    lines = [f"mkdir -p {shlex.quote(str(sweep_dir / s.name))} && OMP_NUM_THREADS={threads} "
             + shlex.join(train_command(s, plan, sweep_dir, threads, nproc))
             + f" >> {shlex.quote(str(sweep_dir / s.name / 'log.txt'))} 2>&1"
             for s in specs if s.name not in done]
    (sweep_dir / COMMANDS_FILE).write_text("".join(line + "\n" for line in lines))
    return lines


def collect(sweep_dir: Path, plan: SweepPlan) -> tuple[list[dict[str, Any]], list[str]]:
    """Add the runs that finished outside ``run_plan`` (e.g. from ``commands.sh``) to the table.
    Returns (new rows, names of runs not finished yet)."""
    specs = prepare(sweep_dir, plan)
    db = open_db(sweep_dir)
    done = finished_runs(db)
    rows, missing = [], []
    for spec in specs:
        if spec.name in done:
            continue
        if (sweep_dir / spec.name / "eval.json").is_file():
            row = collect_row(spec, plan, sweep_dir)
            save_row(db, row)
            rows.append(row)
        else:
            missing.append(spec.name)
    db.close()
    return rows, missing


def load_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """All rows of a sweep's results table, JSON columns decoded."""
    path = sweep_dir / DB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results table (is {str(sweep_dir)!r} a sweep directory?)")
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY name")]
    db.close()
    for r in rows:
        r["params"] = json.loads(r["params"] or "{}")
        r["metrics"] = json.loads(r["metrics"] or "{}")
    return rows

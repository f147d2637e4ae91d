"""Sweeps: a grid of dotted overrides x seeds -> run directories, run in parallel local processes,
one row per run in ``results.sqlite``. Resumable: finished runs are skipped, interrupted ones resume from
their newest checkpoint; a failed run is recorded with its error and never stops the sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archlab.config import ConfigError, load_config, parse_value

SWEEP_FILE, DB_FILE = "sweep.json", "results.sqlite"

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
    finished TEXT
)
"""


@dataclass(frozen=True)
class RunSpec:
    name: str
    params: dict[str, Any]  # swept key -> value, incl. "seed"
    overrides: tuple[str, ...]


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


def _slug(value: Any) -> str:
    text = "none" if value == "" or value is None else str(value)
    return "".join(c if c.isalnum() or c in ".-+" else "_" for c in text)


def expand(grid: dict[str, list[Any]], seeds: int) -> list[RunSpec]:
    """Cartesian product of the grid x seeds 0..seeds-1, with readable run names."""
    keys = list(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        for seed in range(seeds):
            params = {**dict(zip(keys, combo)), "seed": seed}
            name = "_".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in params.items())
            overrides = tuple(f"{k}={'' if v is None else v}" for k, v in params.items())
            specs.append(RunSpec(name, params, overrides))
    return specs


def config_hash(tree: dict[str, Any]) -> str:
    tree = json.loads(json.dumps(tree))
    tree.pop("name", None)
    tree.pop("out_dir", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def open_db(sweep_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(sweep_dir / DB_FILE, timeout=30, check_same_thread=False)
    db.execute(SCHEMA)
    return db


def finished_runs(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM runs WHERE status = 'done'")}


def run_one(spec: RunSpec, base: Path | None, overrides: list[str], sweep_dir: Path, threads: int) -> dict[str, Any]:
    """Train one run in a child process; return its results row."""
    run_dir = sweep_dir / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "archlab.cli", "train", *([str(base)] if base else []), *overrides, *spec.overrides,
           f"train.threads={threads}", f"name={spec.name}", f"out_dir={sweep_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    row: dict[str, Any] = {"name": spec.name, "params": json.dumps(spec.params), "seed": spec.params["seed"],
                           "wall_time": time.time() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    row["config_hash"] = config_hash(load_config(base, [*overrides, *spec.overrides]).to_dict())
    if proc.returncode != 0:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
        return {**row, "status": "failed", "error": " | ".join(tail)[-2000:]}
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    ev = json.loads((run_dir / "eval.json").read_text())
    return {**row, "status": "done", "final_loss": records[-1]["loss"], "best_loss": min(r["loss"] for r in records),
            "val_loss": ev.get("loss"), "metrics": json.dumps(ev), "tokens": records[-1]["tokens"], "error": None}


def save_row(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = ["name", "config_hash", "params", "seed", "status", "final_loss", "best_loss", "val_loss", "metrics",
            "tokens", "wall_time", "error", "finished"]
    db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
               [row.get(c) for c in cols])
    db.commit()


def run_sweep(
    sweep_dir: Path,
    base: Path | None,
    overrides: list[str],
    grid: dict[str, list[Any]],
    seeds: int,
    jobs: int,
    on_done: Callable[[RunSpec, dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not yet done; returns the rows of this invocation."""
    specs = expand(grid, seeds)
    for spec in specs:  # validate every config before any work
        load_config(base, [*overrides, *spec.overrides])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    meta = {"base": str(base) if base else None, "overrides": overrides, "grid": grid, "seeds": seeds}
    meta_path = sweep_dir / SWEEP_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != json.loads(json.dumps(meta)):
            raise ConfigError(f"{meta_path}: this sweep directory was made with different settings ({old}); use another directory")
    meta_path.write_text(json.dumps(meta, indent=2))
    db = open_db(sweep_dir)
    todo = [s for s in specs if s.name not in finished_runs(db)]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    rows = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, s, base, overrides, sweep_dir, threads): s for s in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            row = fut.result()
            save_row(db, row)
            rows.append(row)
            if on_done:
                on_done(futures[fut], row, i, len(todo))
    db.close()
    return rows


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

"""Rows of the GPU check: a spec (name + check function), its outcome, and the runner that time-boxes a section.

A check returns an :class:`Outcome` (pass or fail, numbers, a message) or raises :class:`Skip` when it cannot
run on this machine (the message says why). Any other exception becomes a failed row with the error text, and
the next row runs.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Literal

import torch

Mode = Literal["full", "quick", "dry-run"]
Status = Literal["pass", "fail", "skip"]


class Skip(Exception):
    """Raised by a check that does not apply here (no fla, no transformers, no C++ compiler)."""


@dataclass(frozen=True)
class Context:
    """What every check gets: the mode (sizes), the device, a scratch directory and the bf16 peak for MFU."""

    mode: Mode
    device: torch.device
    work: Path
    peak_tflops: float


@dataclass
class Outcome:
    ok: bool
    numbers: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class RowSpec:
    name: str
    check: Callable[[], Outcome]


@dataclass(frozen=True)
class ConfigRow:
    """A row that trains with config overrides (sections train, compile); ``quick=False`` rows run only in full mode."""

    name: str
    overrides: list[str]
    quick: bool = False


def selected(rows: list[ConfigRow], mode: Mode) -> list[ConfigRow]:
    return rows if mode == "full" else [r for r in rows if r.quick]


@dataclass
class Row:
    section: str
    name: str
    status: Status
    numbers: dict[str, float]
    message: str
    seconds: float


def run_row(section: str, spec: RowSpec) -> Row:
    """Run one check; an exception is a failed row carrying the error's last line, not a stopped script."""
    t0 = time.perf_counter()
    try:
        out = spec.check()
        numbers = {k: float(v) for k, v in out.numbers.items()}
        bad = [k for k, v in numbers.items() if not math.isfinite(v)]
        status: Status = "pass" if out.ok and not bad else "fail"
        message = out.message + (f"; not finite: {', '.join(bad)}" if bad else "")
    except Skip as why:
        status, numbers, message = "skip", {}, str(why)
    except Exception as err:  # noqa: BLE001 -- a failing row must not stop the others
        status, numbers = "fail", {}
        message = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300] or type(err).__name__
        traceback.print_exc()
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return Row(section, spec.name, status, numbers, message.strip("; "), time.perf_counter() - t0)


def run_section(section: str, specs: list[RowSpec], budget_s: float, report: Callable[[Row], None]) -> list[Row]:
    """Run the rows in order until the section's time box is spent; the rows left are skipped, saying so.

    A row that has started finishes (a kernel cannot be interrupted safely), so a section may overrun by one row.
    """
    t0, rows = time.perf_counter(), []
    for spec in specs:
        spent = time.perf_counter() - t0
        if spent > budget_s:
            row = Row(section, spec.name, "skip", {}, f"time box of {budget_s:.0f} s spent ({spent:.0f} s) before this row", 0.0)
        else:
            row = run_row(section, spec)
        report(row)
        rows.append(row)
    return rows


def run_sections(sections: list[ModuleType], ctx: Context, report: Callable[[Row], None]) -> tuple[list[Row], list[dict]]:
    """Every row of every section in order; (rows, per-section {name, title, seconds, budget_s})."""
    rows, timings = [], []
    for section in sections:
        t0, budget = time.perf_counter(), section.BUDGET_S[ctx.mode]
        rows += run_section(section.NAME, section.specs(ctx), budget, report)
        timings.append({"name": section.NAME, "title": section.TITLE, "seconds": time.perf_counter() - t0, "budget_s": budget})
        print(f"  {section.NAME}: {timings[-1]['seconds']:.0f} s (time box {budget} s)", flush=True)
    return rows, timings

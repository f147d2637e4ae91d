"""The plots of claim reports: effects with intervals, means with bars against a swept key (depth, healing
length), task metrics during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archlab.plots import plt
from archlab.reproduce.analysis import ComparisonResult

Point = tuple[Any, float, float, float]  # x, mean, low, high


def _finish(fig: Any, ax: Any, path: Path, legend: bool = True) -> None:
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_effects(results: list[ComparisonResult], path: Path) -> None:
    """Forest plot: every comparison's effect with its 95% interval, signed so that right = better for the treatment."""
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(results) + 1.5), dpi=120)
    for i, r in enumerate(results):
        if r.effect is None:
            continue
        s = 1 if r.comparison.higher_is_better else -1
        lo, hi = sorted((s * r.effect.lo, s * r.effect.hi))
        ax.errorbar([s * r.effect.mean], [i], xerr=[[s * r.effect.mean - lo], [hi - s * r.effect.mean]], fmt="o",
                    capsize=4, color="C0" if r.comparison.decides else "C7")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(results)), [f"{r.comparison.name} ({r.comparison.metric})" for r in results], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="improvement of treatment over baseline (95% t-interval; > 0 = better)", title="effects (blue: decides the verdict)")
    _finish(fig, ax, path, legend=False)


def plot_points(series: dict[str, list[Point]], xlabel: str, ylabel: str, title: str, path: Path, log2: bool,
                zero: bool = False) -> None:
    """One line per label through (x, mean) with bars from low to high; ``zero``: a line at y = 0."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, pts in series.items():
        if pts:
            xs, ms, lo, hi = zip(*pts)
            ax.errorbar(xs, ms, yerr=[[m - a for m, a in zip(ms, lo)], [b - m for m, b in zip(ms, hi)]], marker="o", capsize=3, label=label)
    if zero:
        ax.axhline(0, color="k", lw=0.8)
    if log2:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _finish(fig, ax, path)


def plot_panels(panels: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> None:
    """One panel per key: a line per label through (step, value)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=120, squeeze=False)
    for ax, (key, lines) in zip(axes[0], panels.items()):
        for label, (steps, values) in lines.items():
            ax.plot(steps, values, marker=".", label=label)
        ax.set(xlabel="step", ylabel=key, title=key)
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""Matplotlib figures (Agg backend: works without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, key: str = "loss", title: str = "") -> Path:
    """One line per label: metric ``key`` against step, from metrics.jsonl records."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, records in curves.items():
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_recurrence_sweep(
    curves: dict[str, list[dict[str, Any]]], path: Path, metric: str = "loss", static: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Two panels: ``metric`` vs test-time recurrence r, and vs forward FLOPs/token (rows of evaluate.recurrence_sweep).

    ``static``: non-recurrent models (label -> {'flops_per_token', metric}), drawn as a dashed line / a star.
    """
    fig, (ax_r, ax_f) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120)
    for label, rows in curves.items():
        ax_r.plot([row["r"] for row in rows], [row[metric] for row in rows], "o-", label=label)
        ax_f.plot([row["flops_per_token"] for row in rows], [row[metric] for row in rows], "o-", label=label)
    for i, (label, point) in enumerate((static or {}).items()):
        color = f"C{len(curves) + i}"
        ax_r.axhline(point[metric], ls="--", color=color, label=label)
        ax_f.plot([point["flops_per_token"]], [point[metric]], "*", ms=12, color=color, label=label)
    ax_r.set_xscale("log", base=2)
    ax_f.set_xscale("log")
    for ax, xlabel in ((ax_r, "test-time recurrences r"), (ax_f, "forward FLOPs / token")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

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

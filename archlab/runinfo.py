"""What goes into ``run.json``: versions, git commit, device, command line — enough to reproduce a run."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_commit(start: Path | None = None) -> str | None:
    """HEAD commit of the repository holding archlab (plus '-dirty' if it has changes), or None."""
    where = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=where, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def installed_versions() -> dict[str, str]:
    """Every installed distribution and its version (``pip freeze``-level)."""
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def run_info(device: torch.device, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "packages": installed_versions(),
        **extra,
    }

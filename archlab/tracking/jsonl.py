"""``metrics.jsonl``: the run's own record of its metrics (read by report, sweeps and resume), always written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archlab.checkpoint import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (left by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    write_text_atomic(path, "".join(line + "\n" for line in keep))  # a kill here must not lose the kept lines


class JsonlLogger:
    """One JSON line per logged record, as is (nested norms and micro_batch_args included), flushed at once.
    Opening drops the lines past ``start_step``. The final evaluation goes to eval.json, not here."""

    def __init__(self, path: Path, start_step: int):
        truncate_metrics(path, start_step)
        self._file = open(path, "a")

    def log(self, step: int, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        self._file.close()

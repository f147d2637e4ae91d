"""The logger interface, and the base of the external trackers (numbers by '/'-joined path)."""

from __future__ import annotations

from typing import Any, Protocol


class MetricLogger(Protocol):
    def log(self, step: int, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (``step`` is also ``record['step']``)."""

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        """The final evaluation (eval.json) at the last step."""

    def close(self, failed: bool = False) -> None: ...


def scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record by '/'-joined path: ``{'norms': {'act_rms': [0.5, None]}} -> {'norms/act_rms/0': 0.5}``.
    Lists of numbers are indexed; strings, None and lists of anything else (micro_batch_args) are left out."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, list) and all(v is None or isinstance(v, (int, float)) for v in value):
            out.update(scalars(dict(enumerate(value)), f"{name}/"))
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    return out


class Tracker:
    """An external tracker: gets each record's numbers (``step`` aside) and the final evaluation as ``eval/...``."""

    def log(self, step: int, record: dict[str, Any]) -> None:
        self.write(step, scalars({k: v for k, v in record.items() if k != "step"}))

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        self.write(step, scalars({"eval": metrics}))

    def write(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

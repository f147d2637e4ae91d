"""Metric logging: ``metrics.jsonl`` always, plus the trackers named in ``train.loggers`` (TensorBoard, W&B).

Every logger gets the same records as ``metrics.jsonl`` (on the main process only), the final evaluation, and
is closed once (``failed=True`` when training raised). A tracker's module imports its package at the top and
is imported only when named, so archlab needs neither package unless asked; a missing one is a
:class:`ConfigError` naming the extra, raised by :func:`require_loggers` before any run directory exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from archlab.config import ConfigError
from archlab.tracking.base import MetricLogger
from archlab.tracking.jsonl import METRICS_FILE, JsonlLogger

if TYPE_CHECKING:
    from archlab.config import RunConfig

# logger name (a value of train.loggers; also its package's name) -> (module, class)
TRACKERS = {
    "tensorboard": ("archlab.tracking.tensorboard_logger", "TensorBoardLogger"),
    "wandb": ("archlab.tracking.wandb_logger", "WandbLogger"),
}


def tracker_class(name: str) -> type:
    """The tracker class registered as ``name``, importing its package; ConfigError if that is not installed
    (a package that is there but fails to import raises its own error)."""
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"train.loggers=[{name}] needs the {name} package: pip install 'archlab[track]'")
    module_name, class_name = TRACKERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def require_loggers(names: Iterable[str]) -> None:
    """Raise ConfigError now if a named tracker's package is missing (call before any work)."""
    for name in names:
        tracker_class(name)


class Loggers:
    """Fans every call out to its loggers; as a context manager, closes them (``failed`` when the block raised)."""

    def __init__(self, items: Iterable[MetricLogger] = ()):
        self.items = list(items)

    def log(self, step: int, record: dict[str, Any]) -> None:
        for logger in self.items:
            logger.log(step, record)

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        for logger in self.items:
            logger.log_eval(step, metrics)

    def close(self, failed: bool = False) -> None:
        for logger in self.items:
            logger.close(failed)

    def __enter__(self) -> "Loggers":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.close(failed=exc_type is not None)


def open_loggers(cfg: "RunConfig", run_dir: Path, start_step: int) -> Loggers:
    """metrics.jsonl (truncated to ``start_step``) and the trackers of ``cfg.train.loggers``, for the main process.
    ``cfg`` is the resolved config; the trackers record it as hyperparameters."""
    loggers = Loggers([JsonlLogger(run_dir / METRICS_FILE, start_step)])
    try:
        for name in cfg.train.loggers:
            loggers.items.append(tracker_class(name)(cfg, run_dir, start_step))
    except BaseException:
        loggers.close(failed=True)
        raise
    return loggers


__all__ = ["METRICS_FILE", "TRACKERS", "Loggers", "MetricLogger", "open_loggers", "require_loggers", "tracker_class"]

"""TensorBoard: event files in the run directory itself, so ``tensorboard --logdir DIR`` lists each run by its
directory name (a sweep's runs by arm, then seed). The resolved config goes to the HPARAMS tab (one session
per run; ``train.group`` = the session group, so the seeds of a sweep arm are aggregated) and, as YAML, to TEXT.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from archlab.config import flatten
from archlab.tracking.base import Tracker

if TYPE_CHECKING:
    from archlab.config import RunConfig


def session_start(hparams: dict[str, Any], group: str) -> Summary:
    """The hparams plugin's session start: bools, numbers and strings as they are, lists as text, None left out."""
    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        elif value is not None:
            info.hparams[key].string_value = str(value)
    meta = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_start_info=info))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_START_INFO_TAG, metadata=meta)])


class TensorBoardLogger(Tracker):
    def __init__(self, cfg: "RunConfig", run_dir: Path, start_step: int):
        # purge_step: a resumed run hides what a killed run logged after its checkpoint, as metrics.jsonl drops it
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step + 1)
        tree = cfg.to_dict()
        self.writer.file_writer.add_summary(session_start(flatten(tree), cfg.train.group or ""), start_step)
        text = yaml.safe_dump(tree, sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), start_step)  # a code block

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()

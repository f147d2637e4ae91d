"""``archlab train`` in a child process that can freeze at a chosen point, so a test can kill -9 it there.

    ARCHLAB_FAULT_PAUSE=<point>:<n> python tests/faults/driver.py train <overrides...>

points (n counts occurrences, from 1):
  step   - inside the n-th optimiser step: gradients computed and clipped, update not applied
  model  - n-th checkpoint write: model.safetensors written into the temporary folder, nothing else yet
  state  - n-th checkpoint write: temporary folder complete (state.json written), not yet renamed
  rename - n-th checkpoint write: renamed into place, older checkpoints not yet pruned
When it freezes, the driver creates the file ARCHLAB_FAULT_MARKER and sleeps until killed.
Without ARCHLAB_FAULT_PAUSE it is plain ``archlab``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import archlab.checkpoint as ckpt
from archlab.cli import main
from archlab.optim import Optimizers


def freeze_after(fn: Callable[..., Any], nth: int, marker: Path, when: Callable[..., bool] = lambda *a: True) -> Callable[..., Any]:
    """``fn`` that, on its nth call matching ``when``, runs and then freezes (marker file, endless sleep)."""
    calls = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        out = fn(*args, **kwargs)
        if when(*args):
            calls += 1
            if calls == nth:
                marker.write_text(str(os.getpid()))
                while True:
                    time.sleep(60)
        return out

    return wrapped


def install(spec: str, marker: Path) -> None:
    point, nth = spec.split(":")
    n = int(nth)
    if point == "step":
        Optimizers.clip = freeze_after(Optimizers.clip, n, marker)
    elif point == "model":
        ckpt.save_file = freeze_after(ckpt.save_file, n, marker)
    elif point == "state":
        ckpt.write_json_atomic = freeze_after(ckpt.write_json_atomic, n, marker, lambda path, *_: path.name == ckpt.STATE_FILE)
    elif point == "rename":
        ckpt._fsync = freeze_after(ckpt._fsync, n, marker, lambda path: path.is_dir())
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    if os.environ.get("ARCHLAB_FAULT_PAUSE"):
        install(os.environ["ARCHLAB_FAULT_PAUSE"], Path(os.environ["ARCHLAB_FAULT_MARKER"]))
    main()

"""README "Extending" is true: its example mixer and task, imported from a module outside archlab, register
themselves, validate through load_config, train, evaluate and decode; the registry lines it names are the
ones that register the built-in mixers and tasks."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from archlab.config import ConfigError, load_config
from archlab.model.mixers import MIXERS
from archlab.run_dir import load_run
from archlab.tasks import TASKS
from archlab.train import train

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = (ROOT / "README.md").read_text().split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
PLUGINS = ("readme_mymix", "readme_reverse")  # module names of the two examples, in the README's order


def registry_line(package_init: str, package: str) -> list[str]:
    """The names of ``from <package> import a, b, ...`` in a package's __init__.py (the line a new part joins)."""
    text = (ROOT / package_init).read_text()
    return re.search(rf"^from {re.escape(package)} import ([\w, ]+)", text, re.M).group(1).replace(" ", "").split(",")


def test_registry_lines_are_where_the_readme_says():
    mixers = registry_line("archlab/model/mixers/__init__.py", "archlab.model.mixers")
    assert f"`from archlab.model.mixers import {', '.join(mixers)}` in `archlab/model/mixers/__init__.py`" in " ".join(EXTENDING.split())
    assert sorted(mixers) == MIXERS.names()  # importing the modules of that line is what registers the mixers
    assert "Add it to the import line in `archlab/tasks/__init__.py`" in " ".join(EXTENDING.split())
    assert sorted(registry_line("archlab/tasks/__init__.py", "archlab.tasks")) == TASKS.names()


@pytest.fixture
def readme_plugins(tmp_path, monkeypatch):
    """The README's ```python examples as modules in tmp_path, imported; the registries are restored afterwards."""
    examples = re.findall(r"```python\n(.*?)```", EXTENDING, re.S)
    assert len(examples) == len(PLUGINS)
    monkeypatch.setattr(MIXERS, "_entries", dict(MIXERS._entries))
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    (tmp_path / "plugins").mkdir()
    for name, code in zip(PLUGINS, examples):
        (tmp_path / "plugins" / f"{name}.py").write_text(code)
        importlib.import_module(name)
    yield
    for name in PLUGINS:
        sys.modules.pop(name, None)


def test_readme_examples_train_evaluate_and_decode(readme_plugins, tmp_path):
    assert "mymix" in MIXERS.names() and "reverse" in TASKS.names()
    cfg = load_config(None, ["model.mixer.name=mymix", "data.name=reverse", "model.d_model=32", "model.n_layers=2",
                             "train.steps=2", "train.batch_size=4", "train.seq_len=32", "train.eval_batches=1",
                             f"out_dir={tmp_path}", "name=toy"])
    assert (type(cfg.model.mixer).__name__, type(cfg.data).__name__) == ("MyMixConfig", "ReverseConfig")
    with pytest.raises(ConfigError, match="model.mixer.width: unknown key"):  # the plugin's config is as strict
        load_config(None, ["model.mixer.name=mymix", "model.mixer.width=3"])

    result = train(cfg)
    assert math.isfinite(result.final_loss) and 0.0 <= result.eval["acc"] <= 1.0

    _, model, task = load_run(Path(result.run_dir))
    ids = torch.randint(0, task.vocab_size, (2, 9))
    with torch.no_grad():
        full, _ = model(ids)
        cache = model.new_cache()
        steps = torch.cat([model(ids[:, i : i + 1], cache)[0] for i in range(ids.shape[1])], dim=1)
    assert (steps - full).abs().max() <= 1e-5  # the README's decode state (sum, count) continues the forward
    assert model.generate(ids[:, :3], 4, temperature=0.0).shape == (2, 7)

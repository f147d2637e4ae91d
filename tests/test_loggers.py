"""train.loggers: TensorBoard event files and W&B offline runs hold the values of metrics.jsonl and eval.json."""

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import wandb
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from typer.testing import CliRunner
from wandb.proto import wandb_internal_pb2

from archlab.cli import app
from archlab.config import ConfigError, load_config
from archlab.sweep import SweepPlan, run_plan, train_command
from archlab.tracking import Loggers
from archlab.tracking.base import scalars
from archlab.tracking.wandb_logger import run_id
from archlab.train import config_diff, read_metrics

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "depo_tiny.yaml"  # task metrics (acc_k1, acc_k2) in eval.json
TINY = ["model.d_model=32", "model.mixer.n_heads=2", "train.seq_len=64", "train.batch_size=2", "train.steps=4",
        "train.log_every=1", "train.eval_every=2", "train.eval_batches=1", "train.ckpt_every=2", "train.log_norms=true",
        "train.threads=1", "train.loggers=[tensorboard,wandb]", "train.group=sw/lr=0.003"]


@pytest.fixture(autouse=True)
def _quiet_offline_wandb(tmp_path, monkeypatch):
    """W&B offline, silent, no console capture, no git, its own config and cache directories under tmp_path."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
                       "WANDB_DISABLE_CODE": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(key, value)


def _train_cli(tmp_path: Path) -> Path:
    """``archlab train`` of the tiny DEPO run into tmp_path/run, with both trackers."""
    result = CliRunner().invoke(app, ["train", str(CONFIG), *TINY, f"out_dir={tmp_path}", "name=run"])
    wandb.teardown()  # what the CLI's exit does: W&B's service writes the rest of the .wandb file and stops
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def _expected(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> every number metrics.jsonl has at that step (norms per block), plus eval.json as eval/... at the end."""
    expected = {}
    for r in read_metrics(run_dir):
        values = {k: float(v) for k, v in r.items() if k not in ("step", "norms")}
        for stat, per_block in r["norms"].items():
            values.update({f"norms/{stat}/{i}": v for i, v in enumerate(per_block)})
        expected[r["step"]] = values
    expected[max(expected)].update({f"eval/{k}": float(v) for k, v in json.loads((run_dir / "eval.json").read_text()).items()})
    return expected


def _tensorboard(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _tb_scalars(ea: EventAccumulator) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for tag in ea.Tags()["scalars"]:
        for event in ea.Scalars(tag):
            assert tag not in out.setdefault(event.step, {}), f"{tag} logged twice at step {event.step}"
            out[event.step][tag] = event.value
    return out


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file (W&B's LevelDB-log format: a 7-byte header, 32 KiB blocks of CRC-checked chunks)."""
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc
        pos, pending = pos + 7 + length, pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def _wandb_run(offline_dir: Path) -> tuple:
    """(run record, step -> history row without W&B's own _keys) of one offline run directory."""
    (path,) = offline_dir.glob("run-*.wandb")
    records = _wandb_records(path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
            history[row.pop("_step")] = {k: float(v) for k, v in row.items() if not k.startswith("_")}
    return run, history


def _assert_same(got: dict[int, dict[str, float]], expected: dict[int, dict[str, float]], as_float32: bool) -> None:
    assert sorted(got) == sorted(expected)
    for step, values in expected.items():
        assert sorted(got[step]) == sorted(values), step
        want = {k: float(np.float32(v)) if as_float32 else v for k, v in values.items()}  # TensorBoard keeps float32
        assert got[step] == want, step


def test_tensorboard_and_wandb_hold_the_values_of_metrics_jsonl(tmp_path):
    run_dir = _train_cli(tmp_path)
    expected = _expected(run_dir)
    assert sorted(expected) == [1, 2, 3, 4] and "val_loss" in expected[2] and "norms/grad_norm/1" in expected[4]
    assert {"eval/loss", "eval/acc_k1", "eval/acc_k2"} <= set(expected[4])
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())

    ea = _tensorboard(run_dir)
    _assert_same(_tb_scalars(ea), expected, as_float32=True)
    start = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert start.session_start_info.group_name == "sw/lr=0.003"
    assert hparams["optim.lr"].number_value == cfg["optim"]["lr"] == 3e-3
    assert hparams["model.canon"].string_value == "ABCD" and hparams["model.vocab_size"].number_value == cfg["model"]["vocab_size"]
    assert hparams["train.log_norms"].bool_value is True and "model.ffn_dim" not in hparams  # None is left out

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run, history = _wandb_run(offline)
    _assert_same(history, expected, as_float32=False)  # W&B keeps float64: equal, not close
    assert (run.run_id, run.project, run.run_group, run.display_name) == (run_id(run_dir), "archlab", "sw/lr=0.003", "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["optim"] == cfg["optim"] and config["model"] == cfg["model"]


def test_resumed_run_hides_the_killed_runs_later_steps_and_continues_its_wandb_run(tmp_path):
    run_dir = _train_cli(tmp_path)
    first = read_metrics(run_dir)
    shutil.rmtree(run_dir / "step_4")  # as if killed after logging steps 3 and 4 but before their checkpoint
    (run_dir / "eval.json").unlink()
    _train_cli(tmp_path)  # resumes from step_2
    again = read_metrics(run_dir)
    assert [r["loss"] for r in again] == [r["loss"] for r in first]  # bit-exact resume
    assert again[2]["tok_per_s"] != first[2]["tok_per_s"]  # steps 3 and 4 were logged anew: their timings differ
    expected = _expected(run_dir)
    _assert_same(_tb_scalars(_tensorboard(run_dir)), expected, as_float32=True)  # one value per step, the new one

    offline = sorted((run_dir / "wandb").glob("offline-run-*"))  # offline-run-DATE_TIME-ID: oldest first
    assert len(offline) == 2
    (run1, history1), (run2, history2) = (_wandb_run(p) for p in offline)
    assert run1.run_id == run2.run_id == run_id(run_dir)
    assert sorted(history1) == [1, 2, 3, 4]
    _assert_same(history2, {s: v for s, v in expected.items() if s > 2}, as_float32=False)


def test_scalars_flattens_nested_numbers_and_leaves_out_the_rest():
    record = {"loss": 2.5, "tokens": 64, "norms": {"act_rms": [0.5, None], "grad_norm": [1.0, 2.0]},
              "micro_batch_args": [{"r": 3, "n_grad": 2}], "note": "text", "val": None}
    assert scalars(record) == {"loss": 2.5, "tokens": 64.0, "norms/act_rms/0": 0.5, "norms/grad_norm/0": 1.0, "norms/grad_norm/1": 2.0}


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_missing_package_is_one_line_naming_the_extra_before_any_run_dir(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails, as without the package
    message = f"train.loggers=[{package}] needs the {package} package: pip install 'archlab[track]'"
    result = CliRunner().invoke(app, ["train", f"train.loggers=[{package}]", f"out_dir={tmp_path}", "name=run"])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
    plan = SweepPlan(None, [f"train.loggers={package}", "train.steps=1"], {"optim.lr": [1e-3, 3e-3]}, seeds=2)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_plan(tmp_path / "sw", plan)
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["sweep.json"]  # no run directory


def test_unknown_or_repeated_logger_is_a_config_error_naming_the_key(tmp_path):
    result = CliRunner().invoke(app, ["train", "train.loggers=[tensorboard,mlflow]", f"out_dir={tmp_path}"])
    assert result.exit_code == 2 and "train.loggers.1: Input should be 'tensorboard' or 'wandb'" in result.output
    with pytest.raises(ConfigError, match=r"train.loggers: \['wandb', 'wandb'\] names a logger twice"):
        load_config(None, ["train.loggers=[wandb,wandb]"])
    assert load_config(None, ["train.loggers=wandb"]).train.loggers == ["wandb"]
    assert load_config(None, ["train.loggers=tensorboard,wandb"]).train.loggers == ["tensorboard", "wandb"]
    assert load_config(None, []).train.loggers == []


def test_logging_settings_do_not_block_resuming():
    plain = load_config(None, []).to_dict()
    tracked = load_config(None, ["train.loggers=[tensorboard,wandb]", "train.group=g", "train.wandb.mode=online",
                                 "train.wandb.project=p"]).to_dict()
    assert plain != tracked and config_diff(plain, tracked) == []


def test_sweep_groups_the_seeds_of_an_arm(tmp_path):
    plan = SweepPlan(None, ["train.steps=1"], {"optim.lr": [1e-3, 3e-3], "model.canon": ["", "ABCD"]}, seeds=2)
    groups = {}
    for spec in plan.specs():
        cmd = train_command(spec, plan, tmp_path / "sw", threads=1)
        groups[spec.name] = load_config(None, cmd[cmd.index("train") + 1 :]).train.group
    assert groups == {f"lr={lr}_canon={c}_seed={s}": f"sw/lr={lr}_canon={c}" for lr in ("0.001", "0.003")
                      for c in ("none", "ABCD") for s in (0, 1)}
    labelled = SweepPlan(None, [], {}, seeds=2, label="sc/rope/depo")  # seeds only: the group is the label
    commands = [train_command(spec, labelled, tmp_path, 1) for spec in labelled.specs()]
    assert [load_config(None, cmd[cmd.index("train") + 1 :]).train.group for cmd in commands] == ["sc/rope/depo"] * 2


def test_loggers_fan_out_and_close_failed_when_training_raised():
    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, step, record):
            self.calls.append(("log", step, record["loss"]))

        def log_eval(self, step, metrics):
            self.calls.append(("eval", step, metrics["loss"]))

        def close(self, failed=False):
            self.calls.append(("close", failed))

    a, b = Recorder(), Recorder()
    with Loggers([a, b]) as loggers:
        loggers.log(1, {"step": 1, "loss": 2.5})
        loggers.log_eval(1, {"loss": 2.25})
    with pytest.raises(RuntimeError), Loggers([b]):
        raise RuntimeError("diverged")
    assert a.calls == [("log", 1, 2.5), ("eval", 1, 2.25), ("close", False)]
    assert b.calls == a.calls + [("close", True)]

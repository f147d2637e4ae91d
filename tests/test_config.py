"""Bad configuration stops with one message naming the key; good ones resolve."""

import pytest
import yaml
from typer.testing import CliRunner

from archlab.cli import app
from archlab.config import ConfigError, load_config

BAD_OVERRIDES = [
    (["model.d_modle=64"], "model.d_modle: unknown key"),
    (["model.d_model=abc"], "model.d_model"),
    (["model.d_model=-4"], "model.d_model"),
    (["model.d_model=100", "model.mixer.n_heads=3"], "n_heads=3 does not divide model.d_model=100"),
    (["model.mixer.rope_dim=7"], "rope_dim=7 must be even"),
    (["model.mixer.rope_dim=128"], "rope_dim=128 must be even and <= head_dim"),
    (["model.mixer.n_heads=4", "model.mixer.n_kv_heads=3"], "not a multiple of n_kv_heads=3"),
    (["model.canon=ABX"], "invalid Canon letter"),
    (["model.canon=AA"], "repeated Canon letter"),
    (["model.mixer.name=transformerx"], "unknown mixer 'transformerx'"),
    (["data.name=nosuchtask"], "unknown task 'nosuchtask'"),
    (["optim.name=sgd"], "optim.name"),
    (["optim.betas=[0.9,1.5]"], "betas must lie in [0, 1)"),
    (["train.batch_size=10", "train.grad_accum=3"], "not divisible by grad_accum=3"),
    (["train.seq_len=8192"], "exceeds model.max_seq_len"),
    (["train.precision=fp8"], "train.precision"),
    (["model.residual=sideways"], "unknown residual style 'sideways'"),
    (["optim.lr=0"], "optim.lr"),
    (["nokey"], "not of the form key=value"),
    (["model.d_model.x=3"], "model.d_model: Input should be a valid integer"),
    (["model.mixer.position=alibi"], "model.mixer.position"),
]


@pytest.mark.parametrize("overrides,expected", BAD_OVERRIDES)
def test_bad_overrides_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_yaml_and_override_precedence(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"model": {"d_model": 96, "mixer": {"n_heads": 3}}, "optim": {"lr": 1e-3}}))
    cfg = load_config(path, ["optim.lr=3e-3", "model.canon=DCBA", "optim.name=muon"])
    assert (cfg.model.d_model, cfg.model.mixer.n_heads, cfg.optim.lr, cfg.optim.name) == (96, 3, 3e-3, "muon")
    assert cfg.model.canon == "ABCD"  # normalised order
    assert cfg.model.resolved_ffn_dim == 256  # 8*96/3 = 256, already a multiple of 64


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_cli_bad_config_exits_2_without_traceback_or_run_dir(tmp_path):
    result = CliRunner().invoke(app, ["train", "model.n_layers=zero", f"out_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "model.n_layers" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_data_show_highlights_loss_tokens():
    result = CliRunner().invoke(app, ["data", "show", "depo", "data.n_max=5", "data.k_max=2", "data.mini_vocab=8", "train.seq_len=64"])
    assert result.exit_code == 0, result.output
    assert "<ans>" in result.output and "tokens carry loss" in result.output
    bad = CliRunner().invoke(app, ["data", "show", "nosuch"])
    assert bad.exit_code == 2 and "unknown task 'nosuch'" in bad.output

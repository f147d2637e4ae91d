"""Malformed configs and overrides through the CLI: one line naming the problem, exit 2, no traceback, no run dir."""

import subprocess
import sys

import pytest
from fault_helpers import child_env
from typer.testing import CliRunner

from archlab.cli import app

# (overrides, text the one-line message must contain)
BAD_OVERRIDES = [
    (["model.d_model=abc"], "model.d_model: Input should be a valid integer"),
    (["model.d_model=12.5"], "model.d_model"),
    (["model.n_layers=-2"], "model.n_layers: Input should be greater than 0"),
    (["train.steps=0"], "train.steps: Input should be greater than 0"),
    (["train.batch_size=-1"], "train.batch_size"),
    (["train.seq_len=[1,2]"], "train.seq_len"),
    (["train.keep_last=0"], "train.keep_last"),
    (["train.nonfinite=ignore"], "train.nonfinite"),
    (["train.max_skipped_steps=-1"], "train.max_skipped_steps"),
    (["train.device=tpu"], "train.device"),
    (["train.device=cuda:0"], "train.device=cuda:0: CUDA is not available"),
    (["optim.lr=-1e-3"], "optim.lr"),
    (["optim.lr=inf"], "optim.lr: Input should be a finite number"),
    (["optim.lr=.nan"], "optim.lr"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay"),
    (["optim.betas=0.9"], "optim.betas"),
    (["optim.schedule=exponential"], "optim.schedule"),
    (["model.canon=abc"], "invalid Canon letter"),
    (["model.canon=ABCDE"], "invalid Canon letter(s) ['E']"),
    (["model.canon=BB"], "repeated Canon letter"),
    (["model.canon_kernel=1"], "model.canon_kernel"),
    (["model.residual=pre", "model.residual_alpha=2"], "residual_alpha is set but residual='pre' has no alpha"),
    (["model.d_model=64", "model.mixer.n_heads=5"], "does not divide"),
    (["model.mixer.n_heads=4", "model.mixer.n_kv_heads=0"], "model.mixer.n_kv_heads"),
    (["train.batch_size=6", "train.grad_accum=4"], "not divisible by grad_accum=4"),
    (["train.seq_len=64", "model.max_seq_len=32"], "exceeds model.max_seq_len"),
    (["model.vocab_size=10"], "model.vocab_size=10 is smaller than task 'text'"),
    (["model.multiplier_targets=[attention]"], "model.multiplier_targets"),
    (["model=3"], "model"),
    (["model.d_model.width=3"], "model.d_model"),
    (["mdoel.d_model=64"], "mdoel: unknown key"),
    (["model.mixer.nheads=4"], "model.mixer.nheads: unknown key"),
    (["model.mixer.name=rnn"], "unknown mixer 'rnn'"),
    (["data.name=depo", "data.k_max=0"], "data.k_max"),
    (["data.paths=[/nonexistent/file.py]"], "/nonexistent/file.py"),
    (["=3"], "malformed"),
    (["model..d_model=3"], "malformed"),
    (["just-a-word"], "not of the form key=value"),
]

# (recipe file content, text the message must contain)
BAD_RECIPES = [
    (b"model: [unclosed", "not valid YAML"),
    (b"- a\n- b\n", "top level must be a mapping"),
    (b"42\n", "top level must be a mapping"),
    (b"model: 5\n", "model"),
    (b"trainer:\n  steps: 3\n", "trainer: unknown key"),
    (b"optim:\n  lr: fast\n", "optim.lr"),
    (b"\xff\xfe\x00garbage\x80", "not valid"),
]


def assert_refused(result, expected, out_dir):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert not out_dir.exists()  # nothing half-made


@pytest.mark.parametrize("overrides,expected", BAD_OVERRIDES, ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_override(tmp_path, overrides, expected):
    out = tmp_path / "runs"
    assert_refused(CliRunner().invoke(app, ["train", f"out_dir={out}", "name=x", *overrides]), expected, out)


@pytest.mark.parametrize("content,expected", BAD_RECIPES, ids=[repr(c[:12]) for c, _ in BAD_RECIPES])
def test_bad_recipe_file(tmp_path, content, expected):
    recipe, out = tmp_path / "recipe.yaml", tmp_path / "runs"
    recipe.write_bytes(content)
    result = CliRunner().invoke(app, ["train", str(recipe), f"out_dir={out}"])
    assert_refused(result, expected, out)
    assert str(recipe) in result.output or expected.startswith(("model", "trainer", "optim"))


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\xff\xfe\x00garbage\x80")
    proc = subprocess.run([sys.executable, "-m", "archlab.cli", "train", str(recipe), f"out_dir={tmp_path}/runs"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {recipe}: not valid") and "Traceback" not in proc.stderr


# bad layer specs for `archlab retrofit` (model surgery) on a 4-layer Llama: (options, text the message must contain)
BAD_SURGERY = [
    (["--layers", "2,4"], "--layers: expected P,R,C"),
    (["--layers", "a,b,c"], "--layers: expected P,R,C"),
    (["--layers", "-1,2,2"], "--layers: expected P,R,C"),
    (["--layers", "2,2,2"], "--layers 2,2,2 needs 6 layers; the source model has 4"),
    (["--layers", "1,0,1"], "the core needs at least one layer"),
    (["--core", "1-x"], "--core: '1-x' is not a layer index or range"),
    (["--layers", "1,2,1", "--core", "2-7"], "layer indices [4, 5, 6, 7] are out of range"),
    (["--layers", "1,1,1", "--prelude", "0,1", "--core", "1,2"], "a source layer is used twice"),
    (["--layers", "1,2,1", "--adapter-init", "zeros"], "--adapter-init: expected default or identity, got 'zeros'"),
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("hf") / "llama"
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("options,expected", BAD_SURGERY, ids=[" ".join(o) for o, _ in BAD_SURGERY])
def test_bad_surgery_spec(tmp_path, llama_dir, options, expected):
    out = tmp_path / "retrofitted"
    assert_refused(CliRunner().invoke(app, ["retrofit", str(llama_dir), "--out", str(out), *options]), expected, out)

"""HF export: every architecture family loads with AutoModelForCausalLM and gives archlab's logits (fp32, <= 1e-5)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from archlab.checkpoint import load_model_weights
from archlab.cli import app
from archlab.config import ModelConfig, load_config
from archlab.formats import FORMATS
from archlab.hf import ArchlabForCausalLM, export_hf, load_hf
from archlab.model.recurrence import build_lm
from archlab.tokenizers import ByteTokenizer

V, D = 64, 32
FAMILIES = {
    "nope": dict(mixer={"name": "attention", "position": "nope"}),
    "partial_rope_qknorm_gqa": dict(mixer={"name": "attention", "n_kv_heads": 2, "rope_dim": 4, "qk_norm": True}),
    "gla_canon": dict(mixer={"name": "gla", "n_heads": 2}, canon="ABCDb"),
    "mamba2_canon": dict(mixer={"name": "mamba2", "n_heads": 4, "d_state": 16}, canon="AC"),
    "gdn_canon": dict(mixer={"name": "gdn", "n_heads": 2}, canon="BD"),
    "canon_abcd": dict(canon="ABCD"),
    "post": dict(residual="post"),
    "keel": dict(residual="keel", canon="AB"),
    "deepnorm": dict(residual="deepnorm"),
    "sandwich_layernorm_gelu": dict(residual="sandwich", norm="layernorm", mlp="gelu"),
    "multipliers_both_tied": dict(multipliers="both", multiplier_targets=["mixer", "mlp", "embedding"], tie_embeddings=True),
    "multipliers_vector_head": dict(multipliers="vector", multiplier_targets=["mixer", "mlp", "head"], mixer={"name": "gla", "n_heads": 2}),
    "recurrent": dict(n_layers=4, recurrence={"prelude": 1, "core": 2, "coda": 1, "mean_recurrence": 2}),
    "recurrent_gdn_zero_state": dict(n_layers=3, mixer={"name": "gdn", "n_heads": 2}, recurrence={"prelude": 1, "core": 1, "coda": 1, "state_init_std": 0.0}),
}
AS_LLAMA = {"multipliers_both_tied"}  # Llama-shaped once the multipliers are merged: exported as a real Llama


def make(**kw) -> torch.nn.Module:
    cfg = ModelConfig(**{"vocab_size": V, "d_model": D, "n_layers": 2, **kw})
    model = build_lm(cfg).eval()
    with torch.no_grad():  # move norm gains and multipliers off 1 so that merging and loading are really tested
        for name, p in model.named_parameters():
            if p.ndim == 1 or "parametrizations.weight." in name and not name.endswith("original"):
                p.uniform_(0.5, 1.5)
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # the recurrent model draws its initial state on every call
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_with_automodel_and_matches(family, tmp_path):
    model = make(**FAMILIES[family])
    export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert isinstance(hf, LlamaForCausalLM if family in AS_LLAMA else ArchlabForCausalLM)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == ("llama" if family in AS_LLAMA else "archlab")
    ids = torch.randint(0, V, (2, 13))
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), atol=1e-5, rtol=0)
    prompt = ids[:1, :5]  # greedy generate through transformers = archlab's own generate
    torch.manual_seed(2)
    theirs = hf.generate(prompt, max_new_tokens=6, do_sample=False)
    torch.manual_seed(2)
    assert theirs.tolist() == model.generate(prompt, 6).tolist()


def test_recurrent_depth_at_test_time(tmp_path):
    model = make(**FAMILIES["recurrent_gdn_zero_state"])
    export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, V, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids, r=3).logits, model(ids, r=3)[0], atol=1e-5, rtol=0)
        assert (hf(ids, r=3).logits - hf(ids).logits).abs().max() > 1e-3  # r=3 is not the default r=4
    prompt = ids[:, :4]
    assert hf.generate(prompt, max_new_tokens=5, do_sample=False, r=3).tolist() == model.generate(prompt, 5, r=3).tolist()
    plain = export_hf(make(canon="A"), tmp_path / "plain")
    with pytest.raises(ValueError, match="only for recurrent models"):
        plain(ids, r=3)


def test_multipliers_merge_on_a_copy(tmp_path):
    model = make(**FAMILIES["multipliers_vector_head"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_hf(model, tmp_path)
    assert model.cfg.multipliers == "vector"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    saved = json.loads((tmp_path / "config.json").read_text())["archlab_model"]
    assert saved["multipliers"] == "none"


def test_llama_shaped_model_exports_as_real_llama(tmp_path):
    model = make(mixer={"name": "attention", "n_heads": 4, "n_kv_heads": 2}, tie_embeddings=True)
    export_hf(model, tmp_path, ByteTokenizer())
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    llama = LlamaForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers class, no archlab module
    ids = torch.randint(0, V, (2, 13))
    torch.testing.assert_close(logits(llama, ids), logits(model, ids), atol=1e-5, rtol=0)
    back = load_hf(tmp_path)
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=1e-5, rtol=0)
    prompt = ids[:1, :5]
    assert llama.generate(prompt, max_new_tokens=6, do_sample=False).tolist() == model.generate(prompt, 6).tolist()


def test_tokenizer_and_round_trip_and_labels_loss(tmp_path):
    model = make(vocab_size=ByteTokenizer().vocab_size, mixer={"name": "gdn", "n_heads": 2})
    export_hf(model, tmp_path, ByteTokenizer())
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n\treturn x ∑ é\n"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert tok.decode(list(text.encode("utf-8"))) == text
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.generation_config.eos_token_id == 256
    ids = torch.tensor([tok(text)["input_ids"]])
    back = load_hf(tmp_path)
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=1e-5, rtol=0)
    with torch.no_grad():  # HF's labels convention (shift inside) gives archlab's mean next-token loss
        hf_loss = hf(ids, labels=ids).loss
        ours = model.loss(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:]))
    torch.testing.assert_close(hf_loss, ours, atol=1e-6, rtol=0)


def test_padded_batches_are_refused(tmp_path):
    model = make(mixer={"name": "attention", "position": "nope"})
    export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(ValueError, match="unpadded"):
        hf(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]))


def test_cli_export(tmp_path, tiny_text_run):
    run = tiny_text_run
    result = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "hf"), "--step", "1"])
    assert result.exit_code == 0, result.output
    cfg = load_config(run / "config.yaml")
    model = build_lm(cfg.model).eval()
    load_model_weights(model, run / "step_1")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    text = "import os\n"
    ids = torch.tensor([AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"]])
    assert ids[0].tolist() == list(text.encode())
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), atol=1e-5, rtol=0)
    # other formats dispatch to archlab.formats; without --step the newest checkpoint (step_2) is exported
    assert CliRunner().invoke(app, ["export", str(run), str(tmp_path / "lc"), "--format", "llama-canon"]).exit_code == 0
    load_model_weights(model, run / "step_2")
    torch.testing.assert_close(logits(FORMATS["llama-canon"].load(tmp_path / "lc"), ids), logits(model, ids), atol=1e-5, rtol=0)
    for args, message in [(["--step", "7"], "no checkpoint step_7"), (["--format", "nope"], "unknown format 'nope'")]:
        bad = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output

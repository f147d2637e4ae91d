"""Retrofit surgery from an HF Llama directory: layer rule, every tensor's destination, r = 1 pass-through, CLI."""

import pytest
import torch

import transformers  # dev extra

from archlab import retrofit as rf
from archlab.checkpoint import load_model_weights
from archlab.model.recurrence import RecurrentLM

V, D, N_LAYERS = 61, 32, 6


def save_llama(path, tie: bool = False) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=80, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie, max_position_embeddings=128,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # distinct norm weights, so that a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def test_default_layer_rule_matches_the_paper():
    assert rf.default_layers(16, 2, 4, 2) == ([0, 1], [10, 11, 12, 13], [14, 15])  # Llama-3.2-1B (2,4,2)
    assert rf.default_layers(22, 4, 8, 4) == ([0, 1, 2, 3], list(range(10, 18)), [18, 19, 20, 21])  # TinyLlama
    assert rf.parse_layers("0,1, 10-13", "--core") == [0, 1, 10, 11, 12, 13]
    with pytest.raises(ValueError, match="needs 9 layers; the source model has 6"):
        rf.default_layers(6, 3, 3, 3)
    with pytest.raises(ValueError, match="--core: 'x' is not a layer index"):
        rf.parse_layers("1,x", "--core")
    with pytest.raises(ValueError, match=r"out of range.*0-5"):
        rf.check_layers(6, {"prelude": [0], "core": [7], "coda": [5]})
    with pytest.raises(ValueError, match="used twice"):
        rf.check_layers(6, {"prelude": [0], "core": [0, 1], "coda": [5]})
    assert rf.resolve_layers(6, (1, 2, 1), {"core": [2, 3]}) == {"prelude": [0], "core": [2, 3], "coda": [5]}


@pytest.mark.parametrize("tie", [False, True])
def test_every_tensor_lands_where_it_should(tmp_path, tie):
    hf = save_llama(tmp_path, tie)
    sd = hf.state_dict()
    model, layers = rf.retrofit(tmp_path, (1, 2, 2))
    assert layers == {"prelude": [0], "core": [2, 3], "coda": [4, 5]}
    assert model.cfg.mixer.n_kv_heads == 2 and not model.cfg.tie_embeddings
    ours = model.state_dict()
    checked = {"adapter.weight"}

    def same(key: str, *hf_keys: str) -> None:
        ref = torch.cat([sd[k] for k in hf_keys], dim=0)
        assert ours[key].shape == ref.shape and torch.equal(ours[key], ref), key
        checked.add(key)

    same("embed.weight", "model.embed_tokens.weight")
    same("head.weight", "model.embed_tokens.weight" if tie else "lm_head.weight")
    assert ours["head.weight"].data_ptr() != ours["embed.weight"].data_ptr()  # untied copy
    same("norm.weight", "model.norm.weight")
    for part, idxs in layers.items():
        for j, i in enumerate(idxs):
            hf_l, our = f"model.layers.{i}.", f"{part}.{j}."
            same(our + "mixer_residual.norm.weight", hf_l + "input_layernorm.weight")
            same(our + "mlp_residual.norm.weight", hf_l + "post_attention_layernorm.weight")
            same(our + "mixer.wqkv.weight", *(hf_l + f"self_attn.{x}_proj.weight" for x in "qkv"))
            same(our + "mixer.wo.weight", hf_l + "self_attn.o_proj.weight")
            same(our + "mlp.w_in.weight", hf_l + "mlp.gate_proj.weight", hf_l + "mlp.up_proj.weight")
            same(our + "mlp.w_down.weight", hf_l + "mlp.down_proj.weight")
    assert checked == set(ours)
    assert ours["core.0.mixer.wqkv.weight"].shape == (D + 2 * 2 * (D // 4), D)  # GQA: q 4 heads, k and v 2 heads
    assert model.adapter.weight.abs().max() <= (2 * D) ** -0.5 + 1e-6  # nn.Linear default: U(+-1/sqrt(fan_in))


def truncated_llama(hf: transformers.LlamaForCausalLM, keep: list[int]) -> transformers.LlamaForCausalLM:
    cfg = hf.config.to_dict() | {"num_hidden_layers": len(keep)}
    small = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    sd = {k: v for k, v in hf.state_dict().items() if not k.startswith("model.layers.")}
    for j, i in enumerate(keep):
        sd.update({k.replace(f"model.layers.{i}.", f"model.layers.{j}."): v for k, v in hf.state_dict().items() if k.startswith(f"model.layers.{i}.")})
    small.load_state_dict(sd)
    return small


def test_r1_identity_adapter_reproduces_truncated_llama(tmp_path):
    hf = save_llama(tmp_path)
    layers = {"prelude": [0], "core": [3], "coda": [4, 5]}  # explicit lists, layers 1 and 2 dropped
    model, _ = rf.retrofit(tmp_path, explicit=layers, adapter_init="identity")
    ids = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        ref = truncated_llama(hf, [0, 3, 4, 5])(ids).logits
        got, _ = model.eval()(ids, r=1)
        default, _ = rf.retrofit(tmp_path, explicit=layers)[0].eval()(ids, r=1)
    assert (got - ref).abs().max().item() <= 1e-5
    assert (default - ref).abs().max().item() > 1e-3  # the paper's default adapter init does not pass through


def test_cli_retrofit_then_init_from(tmp_path):
    from typer.testing import CliRunner

    from archlab.cli import app

    save_llama(tmp_path / "hf")
    runner = CliRunner()
    res = runner.invoke(app, ["retrofit", str(tmp_path / "hf"), "--layers", "1,2,1", "--out", str(tmp_path / "rf"), "--mean-recurrence", "3"])
    assert res.exit_code == 0, res.output
    model, _ = rf.retrofit(tmp_path / "hf", (1, 2, 1), recurrence={"mean_recurrence": 3})
    loaded = RecurrentLM(model.cfg)
    load_model_weights(loaded, tmp_path / "rf")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    bad = runner.invoke(app, ["retrofit", str(tmp_path / "hf"), "--layers", "1,2,1", "--core", "2,9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "out of range" in bad.output
    missing = runner.invoke(app, ["retrofit", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "config.json" in missing.output

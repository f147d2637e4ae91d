"""Published checkpoint formats: LlamaCanon and retrofitted-recurrence (Raven) <-> archlab.

The LlamaCanon checks run an independent reference forward written from the spec's equations
(physicslm4.md §1.2-1.5) directly on the published tensor names, so the name mapping and the lingua RoPE
permutation are tested against the format's own semantics, not against archlab's inverse mapping.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from archlab.config import ModelConfig
from archlab.formats import FORMATS, get_format
from archlab.formats.hf_dir import FormatError
from archlab.model.lm import LM

V, D, L, H, HD, FFN = 40, 32, 2, 4, 8, 48
IDS = torch.tensor([[3, 17, 5, 9, 1, 30, 22, 8, 11], [0, 39, 2, 2, 14, 7, 25, 6, 33]])


# ---------------------------------------------------------------- LlamaCanon reference (from the spec)

def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _canon(c: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h'_t = h_t + sum_j W[:, j] h_{t-K+1+j} (spec §1.1); x [B, T, C], w [C, 1, K]."""
    K, T = w.shape[-1], x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))
    y = sum(w[:, 0, j] * xp[:, j : j + T] for j in range(K))
    y = F.silu(y) if c["canon_activation"] else y
    return x + y if c["canon_residual"] else y


def _rope(c: dict, x: torch.Tensor) -> torch.Tensor:
    """x [B, h, T, hd]; rotate the first rope_dim dims: pairs (j, j+r/2) (huggingface) or (2j, 2j+1) (lingua)."""
    r, T = c["rope_dim"] or c["head_dim"], x.shape[2]
    inv = c["rope_theta"] ** (-torch.arange(0, r, 2).double() / r)
    ang = (torch.arange(T).double()[:, None] * inv).float()  # [T, r/2]
    cos, sin = ang.cos(), ang.sin()
    xr, rest = x[..., :r], x[..., r:]
    if c["rope_version"] == "lingua":
        a, b = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    else:
        a, b = xr[..., : r // 2], xr[..., r // 2 :]
        rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return torch.cat([rot, rest], dim=-1)


def reference_logits(c: dict, t: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """LlamaCanon forward on published tensors ``t`` and config.json ``c`` (MHA/GQA, Canon ABCD, QK-norm, RoPE)."""
    B, T = ids.shape
    h, kv, hd, eps, cs = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"], c["canon_set"]
    x = t["model.embed_tokens.weight"][ids]
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = _rms(x, t[p + "input_layernorm.weight"], eps)
        a = _canon(c, a, t[p + "canonA.weight"]) if "A" in cs else a
        q, k, v = (a @ t[f"{p}self_attn.{n}_proj.weight"].T for n in "qkv")
        if c["qk_norm"]:
            q, k = _rms(q, t[p + "self_attn.q_norm.weight"], eps), _rms(k, t[p + "self_attn.k_norm.weight"], eps)
        if "B" in cs:
            q, k, v = _canon(c, torch.cat([q, k, v], -1), t[p + "self_attn.canonB.weight"]).split([h * hd, kv * hd, kv * hd], -1)
        q, k, v = (z.view(B, T, -1, hd).transpose(1, 2) for z in (q, k, v))
        q, k = _rope(c, q), _rope(c, k)
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + causal, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(B, T, h * hd) @ t[p + "self_attn.o_proj.weight"].T
        m = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        m = _canon(c, m, t[p + "canonC.weight"]) if "C" in cs else m
        g, u = m @ t[p + "mlp.gate_proj.weight"].T, m @ t[p + "mlp.up_proj.weight"].T
        if "D" in cs:
            g, u = _canon(c, torch.cat([g, u], -1), t[p + "mlp.canonD.weight"]).chunk(2, -1)
        x = x + (F.silu(g) * u) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], eps)
    return x @ t.get("lm_head.weight", t["model.embed_tokens.weight"]).T


def published_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a LlamaCanon checkpoint, written out from the spec (§1.2, §1.5)."""
    d, h, kv, hd, f, K = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["intermediate_size"], c["canon_kernel"]
    s = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,)}
    if not c["tie_word_embeddings"]:
        s["lm_head.weight"] = (c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                  p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                  p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, h * hd),
                  p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)})
        extra = {"A": ("canonA.weight", d), "B": ("self_attn.canonB.weight", (h + 2 * kv) * hd),
                 "C": ("canonC.weight", d), "D": ("mlp.canonD.weight", 2 * f)}
        s.update({p + name: (width, 1, K) for letter, (name, width) in extra.items() if letter in c["canon_set"]})
        if c["qk_norm"]:
            s.update({p + "self_attn.q_norm.weight": (h * hd,), p + "self_attn.k_norm.weight": (kv * hd,)})
    return s


def canon_config(**over) -> dict:
    c = {"architectures": ["LlamaCanonForCausalLM"], "model_type": "LlamaCanon", "vocab_size": V, "hidden_size": D,
         "intermediate_size": FFN, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": H,
         "head_dim": HD, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "canon_set": "ABCD", "canon_bias": False, "canon_activation": False, "canon_kernel": 4,
         "canon_residual": True, "qk_norm": False, "rope_dim": None, "rope_version": "huggingface"}
    return {**c, **over}


def hand_built(path: Path, c: dict, shard: bool = False) -> dict[str, torch.Tensor]:
    """Write a checkpoint directory by hand in the published layout; returns its tensors."""
    g = torch.Generator().manual_seed(1)
    t = {k: torch.randn(*s, generator=g) * (0.3 if len(s) > 1 else 0.1) + (1.0 if len(s) == 1 else 0.0)
         for k, s in published_shapes(c).items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(c))
    if not shard:
        save_file(t, path / "model.safetensors")
        return t
    names = sorted(t)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: t[k] for k in keys}, path / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return t


# ---------------------------------------------------------------- LlamaCanon tests

HAND_BUILT = [
    dict(canon_set="ABCD"),
    dict(canon_set="ABCD", rope_version="lingua", rope_dim=4, qk_norm=True, num_key_value_heads=2),
    dict(canon_set="BD", rope_version="lingua", canon_kernel=3, canon_residual=False, canon_activation=True),
    dict(canon_set="AC", rope_dim=2, qk_norm=True, num_key_value_heads=1, tie_word_embeddings=True),
    dict(canon_set="", rope_version="lingua", num_key_value_heads=2),
]


@pytest.mark.parametrize("over", HAND_BUILT, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("shard", [False, True], ids=["single", "sharded"])
def test_hand_built_llama_canon_loads_and_matches_reference(tmp_path, over, shard):
    c = canon_config(**over)
    t = hand_built(tmp_path / "ckpt", c, shard)
    model = get_format("llama-canon").load(tmp_path / "ckpt")
    with torch.no_grad():
        ours, ref = model(IDS)[0], reference_logits(c, t, IDS)
    assert ref.abs().max() > 1.0  # a real signal, not all zeros
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # and back: the written tensors are the published ones, bit for bit
    FORMATS["llama-canon"].save(model, tmp_path / "out", rope_version=c["rope_version"])
    back = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: back[k] for k in c if k not in ("architectures",)} == {k: v for k, v in c.items() if k != "architectures"}
    from safetensors.torch import load_file

    written = load_file(tmp_path / "out" / "model.safetensors")
    assert set(written) == set(t)
    assert all(torch.equal(written[k], t[k]) for k in t)


COMBOS = list(itertools.product(["", "A", "BD", "ABCD"], ["huggingface", "lingua"], [None, 4], [False, True], [H, 2]))


@pytest.mark.parametrize("canon,rope_version,rope_dim,qk_norm,n_kv", COMBOS)
def test_round_trip_archlab_llama_canon_archlab(tmp_path, canon, rope_version, rope_dim, qk_norm, n_kv):
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=L, ffn_dim=FFN, canon=canon, mixer={
        "name": "attention", "n_heads": H, "n_kv_heads": n_kv, "rope_dim": rope_dim, "qk_norm": qk_norm})
    model = LM(cfg).eval()
    fmt = FORMATS["llama-canon"]
    fmt.save(model, tmp_path, rope_version=rope_version)
    c = json.loads((tmp_path / "config.json").read_text())
    from safetensors.torch import load_file

    t = load_file(tmp_path / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in t.items()} == published_shapes(c)
    back = fmt.load(tmp_path)
    with torch.no_grad():
        want = model(IDS)[0]
        torch.testing.assert_close(back(IDS)[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reference_logits(c, t, IDS), want, atol=1e-5, rtol=1e-5)


def test_canon_free_llama_canon_equals_transformers_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FFN, num_hidden_layers=L,
                                      num_attention_heads=H, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = FORMATS["llama-canon"].load(tmp_path / "hf")  # a plain transformers Llama directory
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS)[0], hf(IDS).logits, atol=1e-5, rtol=1e-5)
    # archlab canon="" written as LlamaCanon is read by transformers' LlamaForCausalLM with the same logits
    model = LM(ModelConfig(vocab_size=V, d_model=D, n_layers=L, ffn_dim=FFN, mixer={"name": "attention", "n_heads": H})).eval()
    FORMATS["llama-canon"].save(model, tmp_path / "canon")
    hf2 = LlamaForCausalLM.from_pretrained(tmp_path / "canon").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(IDS).logits, model(IDS)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over,needle", [
    (dict(canon_bias=True), "canon_bias=True"),
    (dict(rope_version="neox"), "rope_version='neox'"),
    (dict(canon_set="ABE"), "canon_set='ABE'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_dim=3), "rope_dim=3"),
])
def test_unsupported_llama_canon_config_names_the_field(tmp_path, over, needle):
    c = canon_config()
    hand_built(tmp_path, c)
    (tmp_path / "config.json").write_text(json.dumps({**c, **over}))
    with pytest.raises(FormatError, match=needle.replace("(", r"\(")):
        FORMATS["llama-canon"].load(tmp_path)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    c = canon_config()
    t = hand_built(tmp_path, c)
    t.pop("model.layers.1.canonC.weight")
    t["model.layers.0.extra.weight"] = torch.zeros(2)
    t["model.layers.0.mlp.canonD.weight"] = torch.zeros(2 * FFN, 1, 3)
    save_file(t, tmp_path / "model.safetensors")
    with pytest.raises(FormatError) as err:
        FORMATS["llama-canon"].load(tmp_path)
    msg = str(err.value)
    assert "missing ['model.layers.1.canonC.weight']" in msg and "unexpected ['model.layers.0.extra.weight']" in msg
    assert "model.layers.0.mlp.canonD.weight (96, 1, 3) (expected (96, 1, 4))" in msg


def test_missing_files_and_unsupported_models_are_refused(tmp_path):
    with pytest.raises(FormatError, match="config.json: not found"):
        FORMATS["llama-canon"].load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(canon_config()))
    with pytest.raises(FormatError, match="neither model.safetensors nor model.safetensors.index.json"):
        FORMATS["llama-canon"].load(tmp_path)
    gelu = LM(ModelConfig(vocab_size=V, d_model=D, n_layers=1, mlp="gelu", canon="Ab"))
    with pytest.raises(FormatError, match=r"model.canon contains 'b'.*model.mlp='gelu'"):
        FORMATS["llama-canon"].save(gelu, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown format 'gguf'; known: llama-canon, raven"):
        get_format("gguf")

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


def test_bf16_checkpoint_loads_as_fp32(tmp_path):
    """Published checkpoints are bf16: they load into the fp32 model and match the reference on the upcast weights."""
    c = canon_config(canon_set="ABCD", rope_version="lingua", qk_norm=True, num_key_value_heads=2, torch_dtype="bfloat16")
    t = {k: v.to(torch.bfloat16) for k, v in hand_built(tmp_path, c).items()}
    save_file(t, tmp_path / "model.safetensors")
    model = FORMATS["llama-canon"].load(tmp_path)
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(IDS)[0], reference_logits(c, {k: v.float() for k, v in t.items()}, IDS), atol=1e-5, rtol=1e-5)


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
    with pytest.raises(FormatError, match=r"model.mlp='gelu'.*model.canon contains 'b'"):
        FORMATS["llama-canon"].save(gelu, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown format 'gguf'; known: llama-canon, raven"):
        get_format("gguf")


# ---------------------------------------------------------------- Raven (retrofitted recurrence)

def raven_config(p: int, c: int, q: int, **over) -> dict:
    base = {"architectures": ["RavenForCausalLM"], "model_type": "huginn_raven", "n_embd": D, "n_heads": H,
            "num_key_value_heads": 2, "head_dim": D // H, "intermediate_size": FFN, "n_layers": p + c + q,
            "n_layers_in_prelude": p, "n_layers_in_recurrent_block": c, "n_layers_in_coda": q,
            "mean_recurrence": 3, "mean_backprop_depth": 2, "vocab_size": V, "padded_vocab_size": V,
            "tie_embeddings": False, "bias": False, "qk_bias": False, "norm_eps": 1e-5, "rope_theta": 10000.0,
            "rope_base": 50000.0, "block_class_name": "SandwichBlock", "injection_type": "linear",
            "init_values": {"std": 0.02, "out_proj": 0.001, "embedding": 0.02, "embed_scale": 1.0}}
    return {**base, **over}


def raven_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a retrofitted checkpoint, written out from the spec (§1.2, §2.2)."""
    d, kv, hd, f = c["n_embd"], c["num_key_value_heads"], c["n_embd"] // c["n_heads"], c["intermediate_size"]
    s = {"transformer.wte.weight": (V, d), "transformer.adapter.weight": (d, 2 * d), "transformer.ln_f.weight": (d,)}
    if not c["tie_embeddings"]:
        s["lm_head.weight"] = (V, d)
    for group, key in (("prelude", "n_layers_in_prelude"), ("core_block", "n_layers_in_recurrent_block"), ("coda", "n_layers_in_coda")):
        for j in range(c[key]):
            p = f"transformer.{group}.{j}."
            s.update({p + "norm_1.weight": (d,), p + "attn.Wqkv.weight": (d + 2 * kv * hd, d), p + "attn.proj.weight": (d, d),
                      p + "norm_2.weight": (d,), p + "mlp.fc.weight": (2 * f, d), p + "mlp.proj.weight": (d, f)})
    return s


def raven_reference_logits(c: dict, t: dict[str, torch.Tensor], ids: torch.Tensor, r: int, s0: torch.Tensor) -> torch.Tensor:
    """Retrofitted forward (spec §1.2): e = prelude(wte(ids)); s = core(adapter([s; e])) r times; lm_head(ln_f(coda(s)))."""
    B, T = ids.shape
    h, kv, eps = c["n_heads"], c["num_key_value_heads"], c["norm_eps"]
    hd = c["n_embd"] // h
    rope_cfg = {"rope_dim": None, "head_dim": hd, "rope_theta": c["rope_theta"], "rope_version": "huggingface"}
    causal = torch.full((T, T), float("-inf")).triu(1)

    def block(x: torch.Tensor, p: str) -> torch.Tensor:
        q, k, v = (_rms(x, t[p + "norm_1.weight"], eps) @ t[p + "attn.Wqkv.weight"].T).split([h * hd, kv * hd, kv * hd], -1)
        q, k, v = (z.view(B, T, -1, hd).transpose(1, 2) for z in (q, k, v))
        q, k = _rope(rope_cfg, q), _rope(rope_cfg, k)
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + causal, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(B, T, h * hd) @ t[p + "attn.proj.weight"].T
        gate, up = (_rms(x, t[p + "norm_2.weight"], eps) @ t[p + "mlp.fc.weight"].T).chunk(2, -1)
        return x + (F.silu(gate) * up) @ t[p + "mlp.proj.weight"].T

    e = t["transformer.wte.weight"][ids]
    for j in range(c["n_layers_in_prelude"]):
        e = block(e, f"transformer.prelude.{j}.")
    s = s0
    for _ in range(r):
        s = torch.cat([s, e], -1) @ t["transformer.adapter.weight"].T
        for j in range(c["n_layers_in_recurrent_block"]):
            s = block(s, f"transformer.core_block.{j}.")
    for j in range(c["n_layers_in_coda"]):
        s = block(s, f"transformer.coda.{j}.")
    return _rms(s, t["transformer.ln_f.weight"], eps) @ t.get("lm_head.weight", t["transformer.wte.weight"]).T


def _state0(std: float) -> torch.Tensor:
    """The initial state RecurrentLM draws right after torch.manual_seed(5) (TruncNormal(0, std^2), +-3 std)."""
    torch.manual_seed(5)
    return torch.nn.init.trunc_normal_(torch.zeros(*IDS.shape, D), 0.0, std, -3 * std, 3 * std)


@pytest.mark.parametrize("groups", [(1, 2, 1), (2, 1, 0), (0, 1, 2)], ids=lambda g: "P{}R{}C{}".format(*g))
@pytest.mark.parametrize("r", [1, 3])
def test_hand_built_raven_loads_and_matches_reference(tmp_path, groups, r):
    c = raven_config(*groups)
    g = torch.Generator().manual_seed(2)
    t = {k: torch.randn(*s, generator=g) * (0.3 if len(s) > 1 else 0.1) + (1.0 if len(s) == 1 else 0.0)
         for k, s in raven_shapes(c).items()}
    (tmp_path / "config.json").write_text(json.dumps(c))
    save_file(t, tmp_path / "model.safetensors")
    model = get_format("raven").load(tmp_path)
    rc = model.cfg.recurrence
    assert (rc.prelude, rc.core, rc.coda, rc.mean_recurrence, rc.backprop_depth, rc.state_init_std) == (*groups, 3, 2, 0.02)
    s0 = _state0(0.02)
    torch.manual_seed(5)
    with torch.no_grad():
        ours = model(IDS, r=r)[0]
        ref = raven_reference_logits(c, t, IDS, r, s0)
    assert ref.abs().max() > 1.0
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups,n_kv,tie", [((1, 2, 1), H, False), ((2, 1, 0), 2, True), ((0, 2, 2), 1, False)])
def test_round_trip_archlab_raven_archlab(tmp_path, groups, n_kv, tie):
    from archlab.model.recurrence import RecurrentLM

    p, c, q = groups
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=p + c + q, ffn_dim=FFN, tie_embeddings=tie,
                      mixer={"name": "attention", "n_heads": H, "n_kv_heads": n_kv},
                      recurrence={"prelude": p, "core": c, "coda": q, "mean_recurrence": 5, "backprop_depth": 3, "state_init_std": 0.01})
    model = RecurrentLM(cfg).eval()
    FORMATS["raven"].save(model, tmp_path, max_shard_bytes=8000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["n_layers_in_prelude"], written["n_layers_in_recurrent_block"], written["n_layers_in_coda"]) == groups
    assert (written["mean_recurrence"], written["mean_backprop_depth"], written["init_values"]["std"]) == (5, 3, 0.01)
    back = FORMATS["raven"].load(tmp_path)
    assert back.cfg.recurrence == cfg.recurrence.model_copy(update={"adapter_init": back.cfg.recurrence.adapter_init})
    with torch.no_grad():
        for r in (1, 4):
            torch.manual_seed(5)
            want = model(IDS, r=r)[0]
            torch.manual_seed(5)
            torch.testing.assert_close(back(IDS, r=r)[0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over,needle", [
    (dict(qk_bias=True), "qk_bias=True"),
    (dict(bias=True), "bias=True"),
    (dict(init_values={"std": 0.01, "embed_scale": 5.65}), "init_values.embed_scale=5.65"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 32.0}), "rope_scaling="),
    (dict(n_layers=7), "n_layers=7"),
])
def test_unsupported_raven_config_names_the_field(tmp_path, over, needle):
    (tmp_path / "config.json").write_text(json.dumps(raven_config(1, 1, 1, **over)))
    with pytest.raises(FormatError, match=needle.replace("(", r"\(")):
        FORMATS["raven"].load(tmp_path)


def test_raven_and_llama_canon_refuse_each_others_models(tmp_path):
    plain = LM(ModelConfig(vocab_size=V, d_model=D, n_layers=1, mixer={"name": "attention", "n_heads": H}))
    with pytest.raises(FormatError, match="model.recurrence is not set"):
        FORMATS["raven"].save(plain, tmp_path / "a")
    from archlab.model.recurrence import RecurrentLM

    rec = RecurrentLM(ModelConfig(vocab_size=V, d_model=D, n_layers=3, recurrence={"prelude": 1, "core": 1, "coda": 1}))
    with pytest.raises(FormatError, match="model.recurrence is set"):
        FORMATS["llama-canon"].save(rec, tmp_path / "b")


# ---------------------------------------------------------------- archlab import

@pytest.mark.parametrize("fmt", ["llama-canon", "raven"])
def test_cli_import_writes_a_run_with_the_same_logits(tmp_path, fmt):
    from typer.testing import CliRunner

    from archlab.checkpoint import latest_intact, load_model_weights
    from archlab.cli import app
    from archlab.config import load_config
    from archlab.model.recurrence import RecurrentLM, build_lm

    if fmt == "raven":
        model = RecurrentLM(ModelConfig(vocab_size=V, d_model=D, n_layers=3, recurrence={"prelude": 1, "core": 1, "coda": 1, "state_init_std": 0.0}))
    else:
        model = LM(ModelConfig(vocab_size=V, d_model=D, n_layers=L, canon="AB", mixer={"name": "attention", "n_heads": H, "qk_norm": True}))
    FORMATS[fmt].save(model.eval(), tmp_path / "ckpt")
    result = CliRunner().invoke(app, ["import", str(tmp_path / "ckpt"), "train.seq_len=64", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"({fmt}, {model.num_params():,} parameters)" in result.output
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.train.seq_len == 64 and cfg.model == FORMATS[fmt].load(tmp_path / "ckpt").cfg
    ckpt, _ = latest_intact(tmp_path / "run")
    assert ckpt.step == 0 and ckpt.state["format"] == fmt
    run_model = build_lm(cfg.model)
    load_model_weights(run_model, ckpt.path)
    with torch.no_grad():
        torch.testing.assert_close(run_model.eval()(IDS)[0], model(IDS)[0], atol=1e-5, rtol=1e-5)
    again = CliRunner().invoke(app, ["import", str(tmp_path / "ckpt"), "--out", str(tmp_path / "run")])
    assert again.exit_code == 2 and "already holds checkpoints" in again.output
    bad = CliRunner().invoke(app, ["import", str(tmp_path / "ckpt"), "model.norm_eps=0.1", "--out", str(tmp_path / "run3")])
    assert bad.exit_code == 2 and "overrides may not change the model section" in bad.output
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    odd = CliRunner().invoke(app, ["import", str(tmp_path / "odd"), "--out", str(tmp_path / "run2")])
    assert odd.exit_code == 2 and "model_type='gpt2'" in odd.output

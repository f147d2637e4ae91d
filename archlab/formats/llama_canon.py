"""PhysicsLM4 "LlamaCanon" checkpoints (HF format of Physics of LM 4.1/4.2) <-> archlab ``LM``.

The format is a transformers Llama directory plus extra ``config.json`` fields (``canon_set``, ``canon_bias``,
``canon_activation``, ``canon_kernel``, ``canon_residual``, ``qk_norm``, ``rope_dim``, ``rope_version``) and extra
tensors per layer i (spec physicslm4.md §1.2-1.5, reference configuration/modeling_llama_canon.py):

    model.layers.i.canonA.weight            [d, 1, K]                      after input_layernorm
    model.layers.i.self_attn.canonB.weight  [(h + 2 kv) hd, 1, K]          on cat(q, k, v), after QK-norm
    model.layers.i.canonC.weight            [d, 1, K]                      after post_attention_layernorm
    model.layers.i.mlp.canonD.weight        [2 ffn, 1, K]                  on cat(gate, up)
    model.layers.i.self_attn.{q,k}_norm.weight  [h hd], [kv hd]            QK-norm over the flat projections

``rope_version='lingua'`` rotates interleaved pairs (2j, 2j+1) of the first rope_dim dims of each head, where
archlab (like HF) rotates (j, j + rope_dim/2) with the same frequency j. Permuting the rows of q and k (and of
everything on that axis: Canon-B's q/k channels, the QK-norm weights) by
``[0, 2, .., r-2, 1, 3, .., r-1, r, .., hd-1]`` per head maps one onto the other exactly: q.k is invariant under a
common permutation of q and k dims, and Canon-B (depthwise) and RMSNorm (statistic over all dims) are equivariant.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import ValidationError

from archlab.formats.hf_dir import FormatError, invalid_config, load_checked, read_config, write
from archlab.hf_llama import config_from_llama, state_dict_from_llama, state_dict_to_llama
from archlab.model.config import ModelConfig
from archlab.model.lm import LM

ROPE_VERSIONS = ("huggingface", "lingua")
CANON_LETTERS = "ABCD"

# LlamaCanonConfig defaults for fields a config.json may omit (configuration_llama_canon.py).
DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": None, "head_dim": None, "intermediate_size": None, "hidden_act": "silu",
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0,
    "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
    "canon_set": "", "canon_bias": False, "canon_activation": False, "canon_kernel": 4, "canon_residual": True,
    "qk_norm": False, "rope_dim": None, "rope_version": "huggingface",
}
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def config_from_published(raw: dict[str, Any]) -> tuple[ModelConfig, str]:
    """config.json dict -> (archlab ModelConfig, rope_version). FormatError names the unsupported field."""
    absent = [k for k in REQUIRED if k not in raw]
    if absent:
        raise FormatError(f"config.json: missing required field(s) {absent}")
    c = {**DEFAULTS, **raw}
    if c["canon_bias"]:
        raise FormatError("config.json: canon_bias=True is not supported (archlab's Canon has no bias; the reference code refuses it too)")
    if not isinstance(c["canon_set"], str) or set(c["canon_set"]) - set(CANON_LETTERS):
        raise FormatError(f"config.json: canon_set={c['canon_set']!r} must be a subset of {CANON_LETTERS!r}")
    if c["rope_version"] not in ROPE_VERSIONS:
        raise FormatError(f"config.json: rope_version={c['rope_version']!r}; supported: {', '.join(ROPE_VERSIONS)}")
    if c["intermediate_size"] is None:  # LlamaCanonMLP's default
        c["intermediate_size"] = c["hidden_size"] * 8 // 3
    try:
        tree = config_from_llama(SimpleNamespace(**c)).model_dump(mode="json", serialize_as_any=True)
        tree["mixer"].update(qk_norm=bool(c["qk_norm"]), rope_dim=c["rope_dim"])
        tree.update(canon=c["canon_set"], canon_kernel=c["canon_kernel"], canon_residual=bool(c["canon_residual"]),
                    canon_activation=bool(c["canon_activation"]))
        return ModelConfig.model_validate(tree), c["rope_version"]
    except ValidationError as err:
        raise invalid_config(err) from None
    except ValueError as err:
        raise FormatError(f"config.json: {err}") from None


def llama_shape_problems(cfg: ModelConfig) -> list[str]:
    """What keeps ``cfg``'s blocks from being Llama blocks (pre-norm RMSNorm, RoPE attention, SwiGLU); [] if nothing."""
    m = cfg.mixer
    return [msg for bad, msg in [
        (m.name != "attention", f"model.mixer.name={m.name!r}"),
        (m.name == "attention" and getattr(m, "position", "rope") != "rope", "model.mixer.position='nope'"),
        (cfg.residual != "pre", f"model.residual={cfg.residual!r}"),
        (cfg.mlp != "swiglu", f"model.mlp={cfg.mlp!r}"),
        (cfg.norm != "rmsnorm", f"model.norm={cfg.norm!r}"),
        (cfg.embed_norm, "model.embed_norm=True"),
        (cfg.multipliers != "none", f"model.multipliers={cfg.multipliers!r}"),
    ] if bad]


def config_to_published(cfg: ModelConfig, rope_version: str = "huggingface", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """archlab ModelConfig -> LlamaCanon config.json dict; FormatError lists what the format cannot express."""
    problems = llama_shape_problems(cfg) + [msg for bad, msg in [
        ("b" in cfg.canon, "model.canon contains 'b' (LlamaCanon has Canon A/B/C/D only)"),
        (cfg.recurrence is not None, "model.recurrence is set (use the raven format)"),
        (rope_version not in ROPE_VERSIONS, f"rope_version={rope_version!r}"),
    ] if bad]
    if problems:
        raise FormatError(f"cannot write llama-canon: {', '.join(problems)}")
    m = cfg.mixer
    return {
        "architectures": ["LlamaCanonForCausalLM"], "model_type": "LlamaCanon",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.resolved_ffn_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads or m.n_heads, "head_dim": m.resolved_head_dim(cfg.d_model),
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": m.rope_theta, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": str(dtype).removeprefix("torch."),
        "canon_set": cfg.canon, "canon_bias": False, "canon_activation": cfg.canon_activation,
        "canon_kernel": cfg.canon_kernel, "canon_residual": cfg.canon_residual,
        "qk_norm": m.qk_norm, "rope_dim": m.rope_dim, "rope_version": rope_version,
    }


def _extra_names(cfg: ModelConfig, i: int) -> list[tuple[str, str]]:
    """(archlab name, published name) of layer i's Canon and QK-norm tensors."""
    pairs = [
        ("A", f"blocks.{i}.canon_a.weight", f"model.layers.{i}.canonA.weight"),
        ("B", f"blocks.{i}.mixer.canon_b.weight", f"model.layers.{i}.self_attn.canonB.weight"),
        ("C", f"blocks.{i}.canon_c.weight", f"model.layers.{i}.canonC.weight"),
        ("D", f"blocks.{i}.mlp.canon_d.weight", f"model.layers.{i}.mlp.canonD.weight"),
    ]
    out = [(ours, theirs) for letter, ours, theirs in pairs if letter in cfg.canon]
    if cfg.mixer.qk_norm:
        out += [(f"blocks.{i}.mixer.{n}_norm.weight", f"model.layers.{i}.self_attn.{n}_norm.weight") for n in "qk"]
    return out


def _lingua_rows(cfg: ModelConfig) -> torch.Tensor:
    """Index over the fused qkv rows: archlab row r = lingua row idx[r] (q and k heads permuted, v kept)."""
    m = cfg.mixer
    hd = m.resolved_head_dim(cfg.d_model)
    r = m.rope_dim or hd
    per_head = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, hd)])  # [hd]
    n_q, n_kv = m.n_heads, m.n_kv_heads or m.n_heads
    heads = (torch.arange(n_q + n_kv)[:, None] * hd + per_head).reshape(-1)  # q and k heads
    return torch.cat([heads, torch.arange((n_q + n_kv) * hd, (n_q + 2 * n_kv) * hd)])


def _reorder(sd: dict[str, torch.Tensor], cfg: ModelConfig, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reorder every tensor on the qkv axis by ``rows`` (wqkv, Canon-B, QK-norm weights); a new dict."""
    m = cfg.mixer
    q_dim = m.n_heads * m.resolved_head_dim(cfg.d_model)
    kv_dim = (m.n_kv_heads or m.n_heads) * m.resolved_head_dim(cfg.d_model)
    out = dict(sd)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}.mixer."
        for name, sel in [("wqkv.weight", rows), ("canon_b.weight", rows),
                          ("q_norm.weight", rows[:q_dim]), ("k_norm.weight", rows[q_dim:q_dim + kv_dim] - q_dim)]:
            if p + name in out:
                out[p + name] = out[p + name][sel]
    return out


def state_dict_from_published(tensors: dict[str, torch.Tensor], cfg: ModelConfig, rope_version: str) -> dict[str, torch.Tensor]:
    sd = state_dict_from_llama(tensors, cfg)
    for i in range(cfg.n_layers):
        sd.update({ours: tensors[theirs] for ours, theirs in _extra_names(cfg, i)})
    return _reorder(sd, cfg, _lingua_rows(cfg)) if rope_version == "lingua" else sd


def state_dict_to_published(sd: dict[str, torch.Tensor], cfg: ModelConfig, rope_version: str) -> dict[str, torch.Tensor]:
    if rope_version == "lingua":
        sd = _reorder(sd, cfg, torch.argsort(_lingua_rows(cfg)))
    out = state_dict_to_llama(sd, cfg)
    for i in range(cfg.n_layers):
        out.update({theirs: sd[ours] for ours, theirs in _extra_names(cfg, i)})
    return out


def load(path: Path) -> LM:
    """LlamaCanon (or plain Llama) checkpoint directory -> archlab LM (fp32, eval mode) with the same logits."""
    cfg, rope_version = config_from_published(read_config(path))
    model = LM(cfg)
    load_checked(path, model, lambda sd: state_dict_to_published(sd, cfg, rope_version),
                 lambda t: state_dict_from_published(t, cfg, rope_version))
    return model.eval()


def save(model: LM, path: Path, rope_version: str = "huggingface", max_shard_bytes: int | None = None) -> None:
    """archlab LM -> LlamaCanon checkpoint directory (``rope_version='lingua'`` writes Lingua's RoPE layout)."""
    cfg = model.cfg
    dtype = next(model.parameters()).dtype
    config = config_to_published(cfg, rope_version, dtype)
    write(path, config, state_dict_to_published(model.state_dict(), cfg, rope_version), max_shard_bytes)

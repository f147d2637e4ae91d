"""Retrofitted depth-recurrence checkpoints (Raven/Huginn-style wrapper around Llama blocks) <-> ``RecurrentLM``.

Layout (spec recurrence.md §1.2, §2.2; reference raven_modeling_minimal_llama.py / convert_llama.py):

    transformer.wte.weight                         [V, d]   embedding (embed_scale must be 1, as the retrofit sets)
    transformer.{prelude,core_block,coda}.j.       one Llama pre-norm block each:
        norm_1.weight [d]   attn.Wqkv.weight [(h + 2 kv) hd, d] (= cat(q, k, v))   attn.proj.weight [d, h hd]
        norm_2.weight [d]   mlp.fc.weight [2 ffn, d] (= cat(gate, up))            mlp.proj.weight [d, ffn]
    transformer.adapter.weight                     [d, 2d]  applied to cat(state, prelude output)
    transformer.ln_f.weight                        [d]      final RMSNorm after the coda
    lm_head.weight                                 [V, d]   untied (absent when tie_embeddings)

Config fields: n_embd, n_heads, num_key_value_heads, intermediate_size, padded_vocab_size, n_layers_in_prelude,
n_layers_in_recurrent_block, n_layers_in_coda, mean_recurrence, mean_backprop_depth, norm_eps, rope_theta,
init_values.std (state-init std), tie_embeddings. The block math is the retrofit file's Llama pre-norm block
(its config still says ``block_class_name='SandwichBlock'``, inherited from Huginn); Huginn's own checkpoints
(sandwich norms, qk_bias, embed_scale sqrt(d)) are refused by the qk_bias / embed_scale checks. Training-only
archlab settings (curriculum, lognormal sigma, adapter init) have no field in the format and are not written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from archlab.formats.hf_dir import FormatError, invalid_config, load_checked, read_config, write
from archlab.formats.llama_canon import llama_shape_problems
from archlab.model.config import ModelConfig
from archlab.model.recurrence import RecurrentLM

GROUPS = (("prelude", "prelude"), ("core", "core_block"), ("coda", "coda"))  # (archlab, published)
BLOCK_NAMES = (  # (archlab, published) inside one block
    ("mixer_residual.norm.weight", "norm_1.weight"),
    ("mixer.wqkv.weight", "attn.Wqkv.weight"),
    ("mixer.wo.weight", "attn.proj.weight"),
    ("mlp_residual.norm.weight", "norm_2.weight"),
    ("mlp.w_in.weight", "mlp.fc.weight"),
    ("mlp.w_down.weight", "mlp.proj.weight"),
)
REQUIRED = ("n_embd", "n_heads", "intermediate_size", "n_layers_in_prelude", "n_layers_in_recurrent_block", "n_layers_in_coda")


def _name_map(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(archlab name, published name) for every tensor of a RecurrentLM with config ``cfg``."""
    rc = cfg.recurrence
    pairs = [("embed.weight", "transformer.wte.weight"), ("adapter.weight", "transformer.adapter.weight"),
             ("norm.weight", "transformer.ln_f.weight")]
    if not cfg.tie_embeddings:
        pairs.append(("head.weight", "lm_head.weight"))
    for ours, theirs in GROUPS:
        for j in range(getattr(rc, ours)):
            pairs += [(f"{ours}.{j}.{a}", f"transformer.{theirs}.{j}.{b}") for a, b in BLOCK_NAMES]
    return pairs


def state_dict_from_published(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {ours: tensors[theirs] for ours, theirs in _name_map(cfg)}


def state_dict_to_published(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {theirs: sd[ours] for ours, theirs in _name_map(cfg)}


def config_from_published(raw: dict[str, Any]) -> ModelConfig:
    """Raven config.json dict -> archlab ModelConfig with ``recurrence`` set; FormatError names the field."""
    absent = [k for k in REQUIRED if k not in raw]
    if absent:
        raise FormatError(f"config.json: missing required field(s) {absent}")
    d, h = raw["n_embd"], raw["n_heads"]
    p, c, q = raw["n_layers_in_prelude"], raw["n_layers_in_recurrent_block"], raw["n_layers_in_coda"]
    init = raw.get("init_values") or {}
    scaling = raw.get("rope_scaling") or {}
    refused = [msg for bad, msg in [
        (raw.get("qk_bias", False), "qk_bias=True (Huginn's learned q/k bias)"),
        (raw.get("bias", False), "bias=True (adapter bias)"),
        (init.get("embed_scale", 1.0) != 1.0, f"init_values.embed_scale={init.get('embed_scale')} (only 1.0, as retrofitted models)"),
        (raw.get("injection_type", "linear") != "linear", f"injection_type={raw.get('injection_type')!r}"),
        (scaling.get("rope_type", scaling.get("type", "default")) != "default", f"rope_scaling={scaling} (only default RoPE)"),
        (raw.get("head_dim", d // h) != d // h, f"head_dim={raw.get('head_dim')} (the format uses n_embd // n_heads = {d // h})"),
        (raw.get("test_time_noise", 0) > 0, f"test_time_noise={raw.get('test_time_noise')}"),
        ("rope_theta" not in raw, "rope_theta missing (the retrofit code's RoPE reads it)"),
        (raw.get("n_layers", p + c + q) != p + c + q, f"n_layers={raw.get('n_layers')} != prelude + recurrent block + coda = {p + c + q}"),
    ] if bad]
    if refused:
        raise FormatError(f"config.json: unsupported {', '.join(refused)}")
    # without init_values, RavenConfig derives std = sqrt(2 / (5 n_embd)); retrofitted configs carry Huginn's 0.0087
    recurrence = {"prelude": p, "core": c, "coda": q, "state_init_std": init.get("std", math.sqrt(2 / (5 * d)))}
    if "mean_recurrence" in raw:
        recurrence["mean_recurrence"] = raw["mean_recurrence"]
    if "mean_backprop_depth" in raw:
        recurrence["backprop_depth"] = raw["mean_backprop_depth"]
    tie = raw.get("tie_embeddings", raw.get("tie_word_embeddings", False))
    try:
        return ModelConfig(
            vocab_size=raw.get("padded_vocab_size", raw.get("vocab_size")), d_model=d, n_layers=p + c + q,
            mixer={"name": "attention", "n_heads": h, "n_kv_heads": raw.get("num_key_value_heads") or h,
                   "rope_theta": raw["rope_theta"]},
            mlp="swiglu", ffn_dim=raw["intermediate_size"], norm="rmsnorm", norm_eps=raw.get("norm_eps", 1e-6),
            tie_embeddings=bool(tie), max_seq_len=raw.get("max_position_embeddings", raw.get("block_size", 4096)),
            recurrence=recurrence,
        )
    except ValidationError as err:
        raise invalid_config(err) from None


def config_to_published(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """archlab ModelConfig (with recurrence) -> Raven config.json dict."""
    m, rc = cfg.mixer, cfg.recurrence
    problems = llama_shape_problems(cfg) + [msg for bad, msg in [
        (rc is None, "model.recurrence is not set (use the llama-canon format)"),
        (cfg.canon != "", f"model.canon={cfg.canon!r}"),
        (m.name == "attention" and (m.qk_norm or m.rope_dim is not None), "model.mixer qk_norm / rope_dim"),
        (m.name == "attention" and m.head_dim not in (None, cfg.d_model // m.n_heads), "model.mixer.head_dim != d_model // n_heads"),
    ] if bad]
    if problems:
        raise FormatError(f"cannot write raven: {', '.join(problems)}")
    std = rc.state_init_std
    depth = rc.prelude + rc.coda + rc.core * rc.mean_recurrence
    return {
        "architectures": ["RavenForCausalLM"], "model_type": "huginn_raven",
        "n_embd": cfg.d_model, "n_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads or m.n_heads,
        "head_dim": cfg.d_model // m.n_heads, "intermediate_size": cfg.resolved_ffn_dim,
        "n_layers": cfg.n_layers, "n_layers_in_prelude": rc.prelude, "n_layers_in_recurrent_block": rc.core,
        "n_layers_in_coda": rc.coda, "mean_recurrence": rc.mean_recurrence, "mean_backprop_depth": rc.backprop_depth,
        "vocab_size": cfg.vocab_size, "padded_vocab_size": cfg.vocab_size, "padding_multiple": 1,
        "block_size": cfg.max_seq_len, "max_position_embeddings": cfg.max_seq_len,
        "tie_embeddings": cfg.tie_embeddings, "tie_word_embeddings": cfg.tie_embeddings,
        "bias": False, "qk_bias": False, "norm_eps": cfg.norm_eps, "rope_theta": m.rope_theta, "rope_scaling": None,
        "block_class_name": "SandwichBlock", "norm_class_name": "RMSNorm_llama", "mlp_class_name": "GatedMLP",
        "nonlin_name": "SiLU", "injection_type": "linear", "state_init": "like-init",
        "sampling_scheme": "poisson-lognormal-filling",
        "init_values": {"std": std, "out_proj": std / math.sqrt(2 * depth), "embedding": std, "embed_scale": 1.0},
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def load(path: Path) -> RecurrentLM:
    """Retrofitted-recurrence checkpoint directory -> archlab RecurrentLM (fp32, eval mode)."""
    cfg = config_from_published(read_config(path))
    model = RecurrentLM(cfg)
    load_checked(path, model, lambda sd: state_dict_to_published(sd, cfg), lambda t: state_dict_from_published(t, cfg))
    return model.eval()


def save(model: RecurrentLM, path: Path, max_shard_bytes: int | None = None) -> None:
    """archlab RecurrentLM -> retrofitted-recurrence checkpoint directory."""
    config = config_to_published(model.cfg, next(model.parameters()).dtype)
    write(path, config, state_dict_to_published(model.state_dict(), model.cfg), max_shard_bytes)

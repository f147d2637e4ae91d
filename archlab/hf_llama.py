"""transformers' Llama <-> archlab: config and weight mapping in both directions (transformers imported lazily).

archlab fuses q/k/v into ``wqkv`` and gate/up into ``w_in``; the mapping concatenates or splits them.
Only plain Llamas map 1:1 (no biases, SiLU MLP, default RoPE); anything else is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from archlab.model.config import ModelConfig
from archlab.model.lm import LM

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


def _rope_theta(hf_cfg: Any) -> float:
    params = getattr(hf_cfg, "rope_parameters", None) or {}
    scaling = getattr(hf_cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", "default"))
    if kind != "default":
        raise ValueError(f"rope_type {kind!r} is not supported (only default RoPE)")
    return float(params.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0)))


def config_from_llama(hf_cfg: "LlamaConfig") -> ModelConfig:
    """LlamaConfig -> archlab ModelConfig describing the same network."""
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf_cfg, flag, False):
            raise ValueError(f"Llama config has {flag}=True; archlab's Llama layers have no biases")
    if hf_cfg.hidden_act != "silu":
        raise ValueError(f"Llama config has hidden_act={hf_cfg.hidden_act!r}; only 'silu' (SwiGLU) maps")
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size,
        d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        mixer={
            "name": "attention",
            "n_heads": hf_cfg.num_attention_heads,
            "n_kv_heads": hf_cfg.num_key_value_heads,
            "head_dim": head_dim,
            "rope_theta": _rope_theta(hf_cfg),
        },
        mlp="swiglu",
        ffn_dim=hf_cfg.intermediate_size,
        norm="rmsnorm",
        norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        max_seq_len=hf_cfg.max_position_embeddings,
    )


def llama_config_from(cfg: ModelConfig) -> "LlamaConfig":
    """archlab ModelConfig -> LlamaConfig, for Llama-shaped models only."""
    from transformers import LlamaConfig

    m = cfg.mixer
    problems = [
        msg
        for bad, msg in [
            (m.name != "attention", f"mixer {m.name!r}"),
            (cfg.recurrence is not None, "recurrence"),
            (cfg.canon != "", f"canon={cfg.canon!r}"),
            (cfg.residual != "pre", f"residual={cfg.residual!r}"),
            (cfg.mlp != "swiglu", f"mlp={cfg.mlp!r}"),
            (cfg.norm != "rmsnorm", f"norm={cfg.norm!r}"),
            (cfg.embed_norm, "embed_norm=True"),
            (cfg.multipliers != "none", f"multipliers={cfg.multipliers!r} (merge them first)"),
            (m.name == "attention" and (m.position != "rope" or m.rope_dim is not None or m.qk_norm), "non-default attention (NoPE, partial RoPE or QK-norm)"),
        ]
        if bad
    ]
    if problems:
        raise ValueError(f"model is not Llama-shaped: {', '.join(problems)}")
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_kv_heads or m.n_heads,
        head_dim=m.resolved_head_dim(cfg.d_model),
        intermediate_size=cfg.resolved_ffn_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_seq_len,
    )


# (archlab name, [llama names concatenated along dim 0]) per layer; {i} is the layer index.
_LAYER_MAP = [
    ("blocks.{i}.mixer_residual.norm.weight", ["model.layers.{i}.input_layernorm.weight"]),
    ("blocks.{i}.mixer.wqkv.weight", [f"model.layers.{{i}}.self_attn.{n}_proj.weight" for n in "qkv"]),
    ("blocks.{i}.mixer.wo.weight", ["model.layers.{i}.self_attn.o_proj.weight"]),
    ("blocks.{i}.mlp_residual.norm.weight", ["model.layers.{i}.post_attention_layernorm.weight"]),
    ("blocks.{i}.mlp.w_in.weight", ["model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"]),
    ("blocks.{i}.mlp.w_down.weight", ["model.layers.{i}.mlp.down_proj.weight"]),
]


def _name_map(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    pairs = [("embed.weight", ["model.embed_tokens.weight"]), ("norm.weight", ["model.norm.weight"])]
    if not cfg.tie_embeddings:
        pairs.append(("head.weight", ["lm_head.weight"]))
    for i in range(cfg.n_layers):
        pairs += [(a.format(i=i), [n.format(i=i) for n in hf]) for a, hf in _LAYER_MAP]
    return pairs


def state_dict_from_llama(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for ours, theirs in _name_map(cfg):
        missing = [n for n in theirs if n not in hf_sd]
        if missing:
            raise KeyError(f"Llama checkpoint lacks {missing}")
        out[ours] = torch.cat([hf_sd[n] for n in theirs], dim=0)
    return out


def state_dict_to_llama(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for ours, theirs in _name_map(cfg):
        w = sd[ours]
        if len(theirs) == 1:
            out[theirs[0]] = w
            continue
        attn = cfg.mixer
        hd = attn.resolved_head_dim(cfg.d_model)
        sizes = [attn.n_heads * hd, (attn.n_kv_heads or attn.n_heads) * hd, (attn.n_kv_heads or attn.n_heads) * hd] if len(theirs) == 3 else [cfg.resolved_ffn_dim] * 2
        out.update(zip(theirs, w.split(sizes, dim=0)))
    return out


def load(source: "LlamaForCausalLM | str | Path", dtype: torch.dtype = torch.float32) -> LM:
    """A transformers ``LlamaForCausalLM`` (instance or local directory) -> archlab LM with the same weights."""
    if isinstance(source, (str, Path)):
        from transformers import LlamaForCausalLM

        source = LlamaForCausalLM.from_pretrained(str(source), torch_dtype=dtype)
    cfg = config_from_llama(source.config)
    model = LM(cfg)
    model.load_state_dict(state_dict_from_llama(source.state_dict(), cfg))
    return model.to(dtype)


def to_llama(model: LM) -> "LlamaForCausalLM":
    """archlab LM (Llama-shaped) -> transformers ``LlamaForCausalLM`` with the same weights."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(llama_config_from(model.cfg))
    missing, unexpected = hf.load_state_dict(state_dict_to_llama(model.state_dict(), model.cfg), strict=False)
    missing = [k for k in missing if not (model.cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"Llama export mismatch: missing {missing}, unexpected {unexpected}")
    return hf.to(next(model.parameters()).dtype)

"""archlab models inside transformers: config + model wrapper, Auto* registration, export and import.

``import archlab.hf`` registers model type ``archlab`` with ``AutoConfig`` / ``AutoModelForCausalLM``, so an
exported directory loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` (no ``trust_remote_code``).
``config.json`` stores archlab's resolved ``ModelConfig`` under ``archlab_model``; the weights are the archlab
state_dict under the prefix ``model.``. Any archlab architecture (every mixer, Canon, residual style, recurrence) is
therefore exported as is; learnable multipliers are merged into the weights first. Llama-shaped models are
exported as a real ``LlamaForCausalLM`` instead (loadable without archlab).

Generation through ``GenerationMixin.generate`` uses archlab's own decoding cache (KV cache or recurrent
state plus Canon conv states), carried between steps as ``archlab_cache``. Unpadded batches only; greedy and
sampling work, beam search (which would need cache reordering) does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from archlab.hf_llama import llama_config_from, load as load_llama, to_llama
from archlab.model.config import ModelConfig
from archlab.model.lm import LM, Cache
from archlab.model.mixers.attention import RotaryTable
from archlab.model.multipliers import merge_multipliers
from archlab.model.recurrence import build_lm
from archlab.tokenizers import Tokenizer


MODEL_TYPE = "archlab"


class ArchlabConfig(PretrainedConfig):
    """transformers config holding an archlab ``ModelConfig`` (as a JSON dict) under ``archlab_model``."""

    model_type = MODEL_TYPE

    def __init__(self, archlab_model: dict[str, Any] | None = None, **kwargs: Any):
        self.archlab_model = archlab_model or {}
        kwargs["tie_word_embeddings"] = False  # archlab ties inside LM (no separate head parameter)
        super().__init__(**kwargs)
        m = self.archlab_model
        self.vocab_size, self.hidden_size, self.num_hidden_layers = m.get("vocab_size"), m.get("d_model"), m.get("n_layers")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> "ArchlabConfig":
        return cls(archlab_model=cfg.model_dump(mode="json", serialize_as_any=True))

    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.archlab_model)


@dataclass
class ArchlabCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    archlab_cache: Cache | None = None


class ArchlabForCausalLM(PreTrainedModel, GenerationMixin):
    """``PreTrainedModel`` around an archlab ``LM`` (at ``self.model``); logits are the LM's own."""

    config_class = ArchlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: ArchlabConfig):
        super().__init__(config)
        self.model = build_lm(config.model_config())
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """archlab modules initialise themselves when built, and ``from_pretrained`` loads every weight; only the
        RoPE tables (non-persistent buffers, left uninitialised by transformers' meta-device loading) are rebuilt."""
        if isinstance(module, RotaryTable):
            fresh = RotaryTable(2 * module.inv_freq.shape[0], self.config.model_config().mixer.rope_theta)
            module.inv_freq.copy_(fresh.inv_freq)
            module.cos, module.signed_sin = fresh.cos.to(module.inv_freq.device), fresh.signed_sin.to(module.inv_freq.device)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Module | None:
        return self.model.head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        archlab_cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        r: int | None = None,
        **kwargs: Any,
    ) -> ArchlabCausalLMOutput:
        """input_ids: [B, T] -> logits [B, T, V]; ``labels`` (HF convention: unshifted, -100 ignored) gives a mean loss.

        ``r``: core iterations of a recurrent model (default its ``mean_recurrence``); ``generate(..., r=8)`` passes it on.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("archlab models take unpadded batches only (attention_mask must be all ones)")
        if r is not None and self.config.archlab_model.get("recurrence") is None:
            raise ValueError("r (test-time recurrence) is only for recurrent models (model.recurrence)")
        logits, cache = self.model(input_ids, archlab_cache) if r is None else self.model(input_ids, archlab_cache, r=r)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return ArchlabCausalLMOutput(loss=loss, logits=logits, archlab_cache=cache)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # archlab keeps its own per-block cache dicts

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, archlab_cache: Cache | None = None, attention_mask: torch.Tensor | None = None,
        r: int | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """First step: the whole prompt into a fresh cache; later steps: only the newest token."""
        if archlab_cache is None:
            return {"input_ids": input_ids, "archlab_cache": self.model.new_cache(), "attention_mask": attention_mask, "r": r}
        return {"input_ids": input_ids[:, -1:], "archlab_cache": archlab_cache, "r": r}

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        model_kwargs["archlab_cache"] = outputs.archlab_cache
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)


AutoConfig.register(MODEL_TYPE, ArchlabConfig)
AutoModelForCausalLM.register(ArchlabConfig, ArchlabForCausalLM)


def is_llama_shaped(cfg: ModelConfig) -> bool:
    try:
        llama_config_from(cfg)
    except ValueError:
        return False
    return True


def to_hf(model: LM) -> PreTrainedModel:
    """archlab LM -> a transformers model with the same logits: ``LlamaForCausalLM`` when Llama-shaped, else
    ``ArchlabForCausalLM``. Multipliers are merged into the weights (on a copy; ``model`` is unchanged)."""
    clone = build_lm(model.cfg).to(next(model.parameters()).dtype)  # deepcopy does not copy parametrized modules faithfully
    clone.load_state_dict(model.state_dict())
    model = merge_multipliers(clone)
    if is_llama_shaped(model.cfg):
        return to_llama(model)
    hf = ArchlabForCausalLM(ArchlabConfig.from_model_config(model.cfg))
    hf.model.load_state_dict(model.state_dict())
    return hf.to(next(model.parameters()).dtype)


def export_hf(model: LM, out_dir: str | Path, tokenizer: "Tokenizer | None" = None) -> PreTrainedModel:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer, loadable by ``AutoTokenizer``) into ``out_dir``.

    With a tokenizer, its end-of-document id becomes the generation EOS. Returns the HF model.
    """
    hf = to_hf(model)
    if tokenizer is not None:
        hf.generation_config.eos_token_id = tokenizer.eos_id
        tokenizer.save(out_dir)
    hf.save_pretrained(str(out_dir))
    return hf


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> LM:
    """An exported directory (archlab or Llama) -> archlab LM (RecurrentLM for recurrent models)."""
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if isinstance(hf, ArchlabForCausalLM):
        return hf.model
    return load_llama(hf, dtype)

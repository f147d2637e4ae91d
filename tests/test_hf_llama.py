"""archlab's Transformer equals transformers' LlamaForCausalLM: same logits, same greedy generation."""

import pytest
import torch

import transformers  # the dev extra installs it: a missing transformers is a failure, not a skip

from archlab import hf_llama


def make_llama(tie: bool = False, n_kv: int = 2) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=n_kv,
        intermediate_size=160, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        tie_word_embeddings=tie, max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF inits norms to 1: perturb so that a wrong norm mapping would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie,n_kv", [(False, 2), (True, 4)])
def test_logits_match_hf(tie, n_kv):
    hf = make_llama(tie, n_kv)
    ours = hf_llama.load(hf).eval()
    ids = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-5


def test_greedy_generation_matches_hf():
    hf = make_llama()
    ours = hf_llama.load(hf).eval()
    prompt = torch.randint(0, 97, (2, 7))
    ref = hf.generate(prompt, max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    got = ours.generate(prompt, max_new_tokens=32)
    assert torch.equal(got, ref)


def test_roundtrip_export():
    hf = make_llama()
    ours = hf_llama.load(hf)
    back = hf_llama.to_llama(ours).eval()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_refuses_non_llama_shapes():
    from archlab.config import ModelConfig
    from archlab.model.lm import LM

    with pytest.raises(ValueError, match="canon='AC'"):
        hf_llama.to_llama(LM(ModelConfig(vocab_size=10, d_model=32, n_layers=1, canon="AC")))

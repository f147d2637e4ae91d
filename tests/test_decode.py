"""Cached decoding equals the full forward: token by token and chunked prefill, every Canon subset."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from archlab.config import ModelConfig
from archlab.model import decode_layout
from archlab.model.canon import Canon
from archlab.model.lm import LM

CANON_SUBSETS = ["".join(c) for r in range(5) for c in itertools.combinations("ABCD", r)]


def build(**kw) -> LM:
    torch.manual_seed(0)
    base = dict(vocab_size=50, d_model=32, n_layers=2, mixer={"name": "attention", "n_heads": 4})
    return LM(ModelConfig(**{**base, **kw})).eval()


def decode_logits(model: LM, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed ids through the cache in the given chunk sizes; concatenated logits."""
    cache, outs, pos = model.new_cache(), [], 0
    for n in chunks:
        logits, _ = model(ids[:, pos : pos + n], cache)
        outs.append(logits)
        pos += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("canon", CANON_SUBSETS)
def test_canon_decode_equals_forward(canon):
    model = build(canon=canon)
    ids = torch.randint(0, 50, (2, 13))
    with torch.no_grad():
        full, _ = model(ids)
        step = decode_logits(model, ids, [1] * 13)
        chunked = decode_logits(model, ids, [5, 1, 4, 3])
    assert (step - full).abs().max() <= 1e-5
    assert (chunked - full).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "mixer",
    [
        {"name": "attention", "n_heads": 4, "n_kv_heads": 2},
        {"name": "attention", "n_heads": 2, "position": "nope"},
        {"name": "attention", "n_heads": 2, "rope_dim": 4, "qk_norm": True},
        {"name": "attention", "n_heads": 2, "head_dim": 24},
    ],
)
def test_attention_variants_decode_equals_forward(mixer):
    model = build(mixer=mixer, tie_embeddings=True, mlp="gelu")
    ids = torch.randint(0, 50, (3, 11))
    with torch.no_grad():
        full, _ = model(ids)
        got = decode_logits(model, ids, [4, 1, 1, 5])
    assert (got - full).abs().max() <= 1e-5


def test_canon_is_the_papers_formula():
    torch.manual_seed(0)
    canon = Canon(6)
    x = torch.randn(2, 9, 6)
    w = canon.weight.squeeze(1)  # [C, K]
    ref = torch.stack(
        [x[:, t] + sum(w[:, j] * x[:, t - 3 + j] for j in range(4) if t - 3 + j >= 0) for t in range(9)], dim=1
    )
    assert torch.allclose(canon(x), ref, atol=1e-6)
    # default Conv1d init: U(-1/2, 1/2) for kernel 4, so std ~ 0.289, not 0.02
    big = Canon(4096)
    assert abs(big.weight.std().item() - 0.2887) < 0.01 and big.weight.abs().max() <= 0.5


def test_greedy_generate_matches_argmax_of_full_forward():
    model = build(canon="AC")
    prompt = torch.randint(0, 50, (2, 5))
    out = model.generate(prompt, 8)
    for t in range(5, 13):  # each generated token is the argmax of a full recomputation
        logits, _ = model(out[:, :t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1))


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: column-major weights; 2: oneDNN-packed copies
def test_generate_leaves_the_model_as_it_found_it_and_trainable(batch):
    """generate() runs with the weights laid out for decoding, under inference mode: afterwards every
    parameter has its old values and strides, is a normal tensor, no packed copy is left, and a training step
    runs on the returned ids at a length only the RoPE table grown by generate covers (an inference-mode
    table could not be saved for backward)."""
    model = build(canon="B")
    before = {n: (p.detach().clone(), p.stride()) for n, p in model.named_parameters()}
    out = model.generate(torch.randint(0, 50, (batch, 3)), 297)  # 300 positions: past the first table's 256
    assert not out.is_inference() and not decode_layout._packed
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and p.stride() == before[n][1] and not p.is_inference(), n
    model.train()
    loss = model.loss(out, out, torch.ones_like(out, dtype=torch.bool))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


GQA = {"name": "attention", "n_heads": 4, "n_kv_heads": 2}


@pytest.mark.parametrize("batch, pack_limit, mixer", [(1, None, GQA), (3, None, GQA), (3, 0, GQA), (3, None, {"name": "gla"})])
def test_generate_matches_decoding_with_plain_weights(batch, pack_limit, mixer, monkeypatch):
    """Same greedy tokens with the decoding layouts (column-major; packed; column-major when the packed copy
    would exceed the limit) as with the plain loop; the layout in use is the one documented. GLA: a packed
    projection with a bias (gk_up)."""
    if pack_limit is not None:
        monkeypatch.setattr(decode_layout, "PACK_LIMIT_BYTES", pack_limit)
    model = build(canon="AD", mixer=mixer)
    prompt = torch.randint(0, 50, (batch, 4))
    with decode_layout.decode_weights(model, batch):
        w = model.blocks[0].mlp.w_in.weight
        packed = id(w) in decode_layout._packed
        assert packed == (batch > 1 and pack_limit is None) and w.t().is_contiguous() != packed
    out = model.generate(prompt, 10)
    cache, ids = model.new_cache(), prompt
    with torch.no_grad():  # the plain loop: no layout change, no inference mode
        logits, _ = model(prompt, cache)
        for _ in range(10):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            logits, _ = model(nxt, cache)
    assert torch.equal(out, ids)


def test_generate_falls_back_to_column_major_when_onednn_refuses(monkeypatch):
    def refuse(weight, batch):
        raise RuntimeError("no oneDNN kernel for this build")

    model = build()
    prompt = torch.randint(0, 50, (3, 4))
    packed = model.generate(prompt, 6)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    with decode_layout.decode_weights(model, 3):
        assert not decode_layout._packed and model.blocks[0].mlp.w_in.weight.t().is_contiguous()
    assert torch.equal(model.generate(prompt, 6), packed)


def test_packed_linear_equals_linear_and_steps_aside_for_autograd():
    model = build()
    layer = model.blocks[1].mixer.wqkv
    x = torch.randn(5, 1, 32)
    with decode_layout.decode_weights(model, 5):
        with torch.inference_mode():
            got = decode_layout.packed_linear(x, layer.weight)
        assert got is not None and (got - F.linear(x, layer.weight)).abs().max() <= 1e-6
        assert decode_layout.packed_linear(x, layer.weight) is None  # grad enabled: autograd's path
        assert decode_layout.packed_linear(x, model.blocks[0].mixer.wo.weight.detach()) is None  # not packed


def test_masked_loss_matches_cross_entropy():
    model = build()
    ids, tgt = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 7))
    mask = torch.rand(2, 7) > 0.5
    logits, _ = model(ids)
    ref = F.cross_entropy(logits[mask], tgt[mask])
    assert torch.allclose(model.loss(ids, tgt, mask), ref, atol=1e-6)

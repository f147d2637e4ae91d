"""The performance paths equal the plain torch ops they replace: Canon's shifted-add conv vs F.conv1d,
CPU bf16 emulation vs torch's own bf16 kernels, the fused linear cross-entropy vs the full-logits loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archlab.model import cpu_bf16
from archlab.model.canon import Canon


@pytest.mark.parametrize("residual,activation", [(True, False), (False, True), (True, True)])
def test_canon_equals_conv1d_with_gradients(residual: bool, activation: bool) -> None:
    torch.manual_seed(0)
    canon = Canon(24, 4, residual=residual, activation=activation).double()
    x = torch.randn(3, 11, 24, dtype=torch.float64, requires_grad=True)
    ref = F.conv1d(F.pad(x, (0, 0, 3, 0)).transpose(1, 2), canon.weight, groups=24).transpose(1, 2)
    ref = F.silu(ref) if activation else ref
    ref = x + ref if residual else ref
    g = torch.randn_like(ref)
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, canon.weight), g)
    y = canon(x)
    gx, gw = torch.autograd.grad(y, (x, canon.weight), g)
    assert (y - ref).abs().max() < 1e-12
    assert (gx - gx_ref).abs().max() < 1e-12
    assert (gw - gw_ref).abs().max() < 1e-12


needs_emulation = pytest.mark.skipif(not cpu_bf16.CPU_LACKS_BF16, reason="this CPU has native bf16 kernels")


@needs_emulation
def test_emulated_linear_matches_torch_bf16_autocast() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 33, 48, requires_grad=True)
    w = torch.randn(40, 48, requires_grad=True)
    g = torch.randn(2, 33, 40).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16.emulating(x)
        ref = F.linear(x, w)
        y = cpu_bf16.linear(x, w)
        gx_ref, gw_ref = torch.autograd.grad(ref, (x, w), g)
        gx, gw = torch.autograd.grad(y, (x, w), g)
    assert y.dtype == ref.dtype == torch.bfloat16 and gx.dtype == x.dtype and gw.dtype == w.dtype
    # both round operands and result to bf16 and accumulate in fp32: at most one bf16 ulp (2^-8 relative) apart
    for a, b in ((y, ref), (gx, gx_ref), (gw, gw_ref)):
        assert ((a.float() - b.float()).abs() <= 2**-8 * b.float().abs() + 1e-6).all()
    assert not cpu_bf16.emulating(x)  # outside autocast: the plain op


@needs_emulation
def test_emulated_linear_with_bias_matches_torch_bf16_autocast() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, 24, requires_grad=True)
    w = torch.randn(10, 24, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    g = torch.randn(3, 7, 10).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.linear(x, w, b)
        y = cpu_bf16.linear(x, w, b)
        grads_ref = torch.autograd.grad(ref, (x, w, b), g)
        grads = torch.autograd.grad(y, (x, w, b), g)
    assert y.dtype == ref.dtype == torch.bfloat16 and grads[2].dtype == b.dtype
    for a, r in ((y, ref), *zip(grads, grads_ref)):
        assert ((a.float() - r.float()).abs() <= 2**-8 * r.float().abs() + 1e-5).all()


@pytest.mark.parametrize("mixer, recurrence", [("attention", None), ("gla", None), ("gdn", None), ("mamba2", None),
                                                ("attention", {"prelude": 1, "core": 1, "coda": 1})])
def test_every_matrix_layer_goes_through_linear(mixer, recurrence) -> None:
    """No nn.Linear is called as a module: each goes through cpu_bf16.linear (bf16 emulation on CPUs without
    bf16 kernels, where the linear mixers' bf16 steps were 7.5-12x slower than fp32; packed decoding weights)."""
    from archlab.config import ModelConfig
    from archlab.model.recurrence import build_lm

    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=3, mixer={"name": mixer}, canon="ABCD", recurrence=recurrence)
    model = build_lm(cfg)
    called = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, inp, out, name=name: called.append(name))
    ids = torch.randint(0, 40, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(ids, ids, torch.ones_like(ids, dtype=torch.bool)).backward()
    model.generate(ids[:, :3], 4)
    assert called == []


@needs_emulation
def test_emulated_sdpa_matches_torch_bf16_autocast() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 17, 16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
        y = cpu_bf16.sdpa(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref.float()).abs().max() <= 2**-7


def test_silu_mul_equals_autograd_and_saves_less() -> None:
    from archlab.model.fused import SiluMul

    torch.manual_seed(0)
    gate, up = (torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn(3, 7, 16, dtype=torch.float64)
    ref = F.silu(gate) * up
    y = SiluMul.apply(gate, up)
    assert (y - ref).abs().max() < 1e-12
    for a, b in zip(torch.autograd.grad(y, (gate, up), g), torch.autograd.grad(ref, (gate, up), g)):
        assert (a - b).abs().max() < 1e-12
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        SiluMul.apply(gate, up)
    assert len(saved) == 2  # gate and up only (autograd's version also keeps silu(gate))

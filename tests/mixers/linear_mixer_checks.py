"""Checks shared by the linear-mixer tests (GLA, Mamba2, Gated DeltaNet): relative errors, decoding through
the mixer's state dict and through a whole LM, training a tiny model, the optional fla comparison."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from archlab.config import ModelConfig, load_config
from archlab.model.lm import LM
from archlab.model.mixers import build_mixer
from archlab.train import train


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ (fla's assert_close criterion), computed in fp64."""
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def grads(out: tuple[torch.Tensor, torch.Tensor | None], inputs: list[torch.Tensor], seed: int = 1) -> list:
    """Gradients of a fixed random projection of (o, final_state) w.r.t. inputs."""
    o, s = out
    gen = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum()
    if s is not None:
        loss = loss + (s.double() * torch.randn(s.shape, generator=gen, dtype=torch.float64)).sum()
    return list(torch.autograd.grad(loss, inputs))


def leaf(*ts: torch.Tensor, dtype=torch.float32) -> list[torch.Tensor]:
    return [t.detach().to(dtype).requires_grad_(True) for t in ts]


def model_cfg(mixer: dict, canon: str = "AbCD", **kw) -> ModelConfig:
    base = dict(vocab_size=50, d_model=64, n_layers=2, mixer=mixer, canon=canon, init_std=0.1)
    return ModelConfig(**{**base, **kw})


def check_mixer_decode(mixer: dict, canon: str, T: int = 23, tol: float = 1e-5) -> None:
    """The mixer alone: one step at a time, and chunked prefill continuing a state, equal the full forward."""
    torch.manual_seed(0)
    cfg = model_cfg(mixer, canon)
    m = build_mixer(cfg.mixer, cfg, 0).eval()
    x = torch.randn(2, T, cfg.d_model)
    with torch.no_grad():
        full, none = m(x)
        assert none is None
        state: dict = {}
        steps = torch.cat([m(x[:, t : t + 1], state)[0] for t in range(T)], dim=1)
        state2: dict = {}
        cuts = [0, 6, 7, 19, T]  # a prefill, one step, a chunk that continues a state, the rest
        chunked = torch.cat([m(x[:, a:b], state2)[0] for a, b in zip(cuts, cuts[1:])], dim=1)
    assert rel(steps, full) <= tol, f"token-by-token decoding differs: {rel(steps, full):.2e}"
    assert rel(chunked, full) <= tol, f"chunked prefill differs: {rel(chunked, full):.2e}"
    assert state.keys() == state2.keys()
    for key in state:
        assert rel(state[key], state2[key]) <= tol, key


def check_lm_decode(mixer: dict, canon: str, tol: float = 1e-5) -> None:
    """A 2-layer LM: cached decoding (steps and chunked prefill with an existing state) equals the full forward,
    and ``LM.generate`` equals greedy decoding by re-running the full forward."""
    torch.manual_seed(0)
    model = LM(model_cfg(mixer, canon)).eval()
    ids = torch.randint(0, 50, (2, 21))
    with torch.no_grad():
        full, _ = model(ids)
        for chunks in ([1] * 21, [7, 1, 9, 1, 3]):
            cache, outs, pos = model.new_cache(), [], 0
            for n in chunks:
                outs.append(model(ids[:, pos : pos + n], cache)[0])
                pos += n
            got = torch.cat(outs, dim=1)
            assert rel(got, full) <= tol, f"chunks {chunks}: {rel(got, full):.2e}"
        gen = model.generate(ids[:, :5], 6)
        ref = ids[:, :5]
        for _ in range(6):
            ref = torch.cat([ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen, ref)


def check_grad_flow(mixer: dict, canon: str = "ABbCD") -> None:
    """Every parameter of every mixer gets a finite, non-zero gradient from the LM loss."""
    torch.manual_seed(0)
    model = LM(model_cfg(mixer, canon, init_std=0.02))
    ids = torch.randint(0, 50, (2, 40))
    model.loss(ids[:, :-1], ids[:, 1:], torch.ones(2, 39)).backward()
    for i, block in enumerate(model.blocks):
        for name, p in block.mixer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"blocks.{i}.mixer.{name}"
            assert p.grad.abs().max() > 0, f"blocks.{i}.mixer.{name} gets no gradient"


def train_loss(mixer: dict, tmp_path, steps: int = 50, extra: list[str] | None = None) -> tuple[float, float]:
    """Train a tiny LM on the default byte-level text task: (last training-step loss, final eval loss) in nats/byte."""
    overrides = [
        *(f"model.mixer.{key}={value}" for key, value in mixer.items()),
        "model.d_model=64", "model.n_layers=2", "model.canon=AbCD",
        f"train.steps={steps}", "train.batch_size=8", "train.seq_len=64", "train.log_every=10",
        "train.eval_batches=2", "optim.lr=3e-3", "optim.warmup_steps=5", "seed=0",
        *(extra or []),
    ]
    result = train(load_config(None, overrides), run_dir=tmp_path / "run")
    return float(result.final_loss), float(result.eval["loss"])


def fla_available() -> str | None:
    """None if fla kernels can run here, else the reason they cannot."""
    if not torch.cuda.is_available():
        return "no CUDA device: fla's Triton kernels cannot run"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed"
    return None


def skip_unless_fla() -> None:
    reason = fla_available()
    if reason is not None:
        pytest.skip(f"not applicable: {reason}")

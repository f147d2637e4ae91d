"""Learnable multipliers: placement, optimiser treatment (clip / weight decay / Muon), merge, training."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from archlab.config import ModelConfig, OptimConfig, load_config
from archlab.model.lm import LM
from archlab.model.mixers import MIXERS
from archlab.model.multipliers import Multipliers, merge_multipliers, multiplier_values
from archlab.model.residual import RESIDUALS
from archlab.optim import build_optimizers
from archlab.train import read_metrics, train

ALL_TARGETS = ["mixer", "mlp", "head", "embedding"]


def make(multipliers="vector", **kw) -> LM:
    kw = {"vocab_size": 64, "d_model": 32, "n_layers": 2, **kw}
    if kw.get("mixer") is None:
        kw["mixer"] = {"name": "attention", "n_heads": 2}
    torch.manual_seed(0)
    return LM(ModelConfig(multipliers=multipliers, **kw))


def is_mult(p) -> bool:
    return getattr(p, "_optim_group", None) == "multiplier"


def randomise_multipliers(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if is_mult(p):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)  # U(0.5, 1.5)


def parts(model: nn.Module, name: str) -> set[str]:
    return set(multiplier_values(model).get(name, {}))


# ---- placement -------------------------------------------------------------------------------------------


def test_vector_placement_drops_redundant_columns():
    m = make("vector", multiplier_targets=ALL_TARGETS)
    # rows everywhere; no columns behind a norm gain (wqkv, w_in, head) nor on o/down (== v / up rows)
    for name in ("blocks.0.mixer.wqkv", "blocks.0.mixer.wo", "blocks.0.mlp.w_in", "blocks.0.mlp.w_down", "head"):
        assert parts(m, name) == {"row"}, name
    assert parts(m, "embed") == {"row", "col"}
    # GELU MLP: w_down's input sits behind a nonlinearity -> its column is not redundant
    assert parts(make("vector", mlp="gelu"), "blocks.1.mlp.w_down") == {"row", "col"}
    # post-LN: the in-projections read the stream directly (the gain also feeds the skip) -> columns kept
    post = make("vector", residual="post")
    assert parts(post, "blocks.0.mixer.wqkv") == {"row", "col"} and parts(post, "blocks.0.mixer.wo") == {"row"}
    # an embedding norm erases per-token scales (rows) unless the matrix is also the tied head
    assert parts(make("vector", multiplier_targets=["embedding"], embed_norm=True), "embed") == {"col"}
    assert parts(make("vector", multiplier_targets=["embedding"], embed_norm=True, tie_embeddings=True), "embed") == {"row", "col"}
    assert parts(make("scalar"), "blocks.0.mlp.w_in") == {"scale"}
    assert parts(make("both"), "blocks.0.mlp.w_in") == {"scale", "row"}
    # default targets: mixer + mlp only
    assert set(multiplier_values(make("vector"))) == {f"blocks.{i}.{n}" for i in (0, 1) for n in ("mixer.wqkv", "mixer.wo", "mlp.w_in", "mlp.w_down")}
    assert multiplier_values(make("none")) == {}
    with pytest.raises(ValueError, match="use 'embedding'"):
        make("vector", multiplier_targets=["head"], tie_embeddings=True)


def test_multipliers_start_as_identity():
    ids = torch.randint(0, 64, (2, 12))
    plain = make("none")(ids)[0]
    with_mult = make("both", multiplier_targets=ALL_TARGETS)(ids)[0]
    assert torch.equal(plain, with_mult)


# ---- optimiser treatment ---------------------------------------------------------------------------------


def test_grad_clip_ignores_multipliers():
    m = make("both", multiplier_targets=ALL_TARGETS)
    ids = torch.randint(0, 64, (2, 12))
    m.loss(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:])).backward()
    mult = [p for p in m.parameters() if is_mult(p)]
    rest = [p for p in m.parameters() if not is_mult(p)]
    norm_rest = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in rest))
    norm_mult = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in mult))
    with torch.no_grad():
        for p in mult:  # make the multipliers' gradients dominate the global norm (20x the rest)
            p.grad.mul_(20 * norm_rest / norm_mult)
    norm_all = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.parameters()))
    assert norm_all > 19 * norm_rest  # including the multipliers would clip the matrices ~20x harder
    clip = norm_rest / 4
    opt = build_optimizers(m, OptimConfig(grad_clip=clip))
    before = {id(p): p.grad.clone() for p in m.parameters()}
    reported = opt.clip()
    assert reported == pytest.approx(norm_rest, rel=1e-5)
    for p in rest:  # scaled by clip / norm_rest = 1/4, not by clip / norm_all
        torch.testing.assert_close(p.grad, before[id(p)] * (clip / (norm_rest + 1e-6)), rtol=1e-5, atol=0)
    for p in mult:
        assert torch.equal(p.grad, before[id(p)])  # untouched
    assert not any(is_mult(p) for p in opt.clip_params)


@pytest.mark.parametrize("opt_name", ["adamw", "muon"])
def test_weight_decay_and_muon_never_touch_multipliers(opt_name):
    m = make("both", multiplier_targets=ALL_TARGETS, multiplier_lr_mult=3.0, multiplier_weight_decay=0.05)
    ocfg = OptimConfig(name=opt_name, lr=0.01, weight_decay=0.1)
    opt = build_optimizers(m, ocfg)
    mult_ids = {id(p) for p in m.parameters() if is_mult(p)}
    assert len(mult_ids) > 0
    seen = []
    for o in opt.optimizers:
        for g in o.param_groups:
            ids = {id(p) for p in g["params"]}
            seen += list(ids & mult_ids)
            if isinstance(o, torch.optim.Muon):
                assert all(p.ndim == 2 for p in g["params"])  # Muon never sees a 0-D / 1-D parameter
                assert not ids & mult_ids
            elif ids & mult_ids:
                assert ids <= mult_ids  # a group of multipliers only
                assert g["weight_decay"] == 0.05 and g["base_lr"] == pytest.approx(0.03)
    assert sorted(seen) == sorted(mult_ids)  # each multiplier in exactly one group
    assert any(isinstance(o, torch.optim.Muon) for o in opt.optimizers) == (opt_name == "muon")
    # One step on zero gradients: only the decoupled decay moves anything.
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    before = {id(p): p.detach().clone() for p in m.parameters()}
    opt.step()
    for name, p in m.named_parameters():
        if is_mult(p):
            expect = 1 - 0.03 * 0.05  # their own lr and wd only, not optim.weight_decay = 0.1
        elif p.ndim >= 2:
            expect = 1 - 0.01 * 0.1
        else:
            expect = 1.0
        torch.testing.assert_close(p.detach(), before[id(p)] * expect, rtol=1e-6, atol=0, msg=name)


# ---- merge ------------------------------------------------------------------------------------------------


def check_merge(mode: str, **kw) -> None:
    m = make(mode, multiplier_targets=ALL_TARGETS if not kw.get("tie_embeddings") else ["mixer", "mlp", "embedding"], **kw)
    randomise_multipliers(m)
    m.eval()
    ids = torch.randint(0, 64, (2, 16))
    before = m(ids)[0]
    merge_multipliers(m)
    after = m(ids)[0]
    assert (after - before).abs().max() <= 1e-5
    assert m.cfg.multipliers == "none"
    assert not any(parametrize.is_parametrized(mod) for mod in m.modules())
    assert not any(isinstance(mod, Multipliers) for mod in m.modules())
    assert all(type(mod) is nn.Linear for mod in m.modules() if isinstance(mod, nn.Linear))
    plain = LM(m.cfg)
    assert plain.cfg.multipliers == "none" and list(plain.state_dict()) == list(m.state_dict())
    plain.load_state_dict(m.state_dict(), strict=True)
    plain.eval()
    assert (plain(ids)[0] - before).abs().max() <= 1e-5
    # the merged model differs from the unmerged raw weights (the multipliers were not identity)
    assert (before - make("none", **kw).eval()(ids)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", MIXERS.names())
def test_merge_is_exact_for_every_mixer(mixer):
    # "both" = scalar + rows (+ columns where placed): covers the "scalar" and "vector" forms too
    mcfg = {"name": mixer, "n_heads": 2} if mixer == "attention" else {"name": mixer}
    check_merge("both", mixer=mcfg, canon="ABCD" if mixer == "attention" else "")


@pytest.mark.parametrize("residual", list(RESIDUALS))
def test_merge_is_exact_for_every_residual_style(residual):
    check_merge("both", residual=residual)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_merge_is_exact_with_tied_embeddings_and_canon(mlp):
    check_merge("both", tie_embeddings=True, canon="ABCD", mlp=mlp)


# ---- training ---------------------------------------------------------------------------------------------


def test_training_with_multipliers_under_muon_lowers_loss(tmp_path):
    cfg = load_config(None, [
        "model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "model.multipliers=vector",
        "model.multiplier_targets=[mixer,mlp,embedding]", "optim.name=muon", "optim.lr=1e-2", "optim.warmup_steps=2",
        "train.seq_len=32", "train.batch_size=8", "train.steps=50", "train.log_every=1", "train.eval_batches=1",
        "train.threads=1", "data.max_bytes=300000", f"out_dir={tmp_path}", "name=mult",
    ])
    res = train(cfg)
    losses = [r["loss"] for r in read_metrics(res.run_dir)]
    assert losses[0] > 5.0  # ~ln(256)
    assert sum(losses[-5:]) / 5 < 3.6
    assert math.isfinite(res.eval["loss"]) and res.eval["loss"] < 3.8
    # the multipliers were trained (they sit in the AdamW optimiser under Muon) and are in the checkpoint
    from safetensors.torch import load_file

    sd = load_file(res.run_dir / "step_50" / "model.safetensors")
    rows = [v for k, v in sd.items() if k.endswith("parametrizations.weight.0.row")]
    assert len(rows) == 9 and max(float((v - 1).abs().max()) for v in rows) > 1e-2

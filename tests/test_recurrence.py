"""RecurrentLM: module layout, the loop equation, truncated backprop, r sampling and curricula, KV cache."""

import math

import pytest
import torch

from archlab.config import ConfigError, ModelConfig, RecurrenceConfig, build_config
from archlab.model.recurrence import RecurrentLM, mean_recurrence_at, sample_depth

V = 53


def make(std: float = 0.0, tie: bool = False, p: int = 1, c: int = 2, q: int = 1, **rec) -> RecurrentLM:
    cfg = ModelConfig(
        vocab_size=V, d_model=32, n_layers=p + c + q, mixer={"name": "attention", "n_heads": 4, "n_kv_heads": 2},
        tie_embeddings=tie, recurrence={"prelude": p, "core": c, "coda": q, "state_init_std": std, **rec},
    )
    return RecurrentLM(cfg)


def test_module_names_and_shapes():
    m = make()
    names = [n for n, _ in m.named_children()]
    assert names == ["embed", "prelude", "adapter", "core", "coda", "norm", "head"]
    assert (len(m.prelude), len(m.core), len(m.coda)) == (1, 2, 1)
    assert m.adapter.weight.shape == (32, 64) and m.adapter.bias is None
    assert make(tie=True).head is None


def test_forward_is_the_loop_equation():
    """logits = head(norm(coda(core(adapter([s; e])) applied r times))), s_0 = 0 at std 0."""
    m = make().eval()
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        e = m.prelude[0](m.embed(ids))
        s = torch.zeros_like(e)
        for _ in range(3):
            s = m.adapter(torch.cat([s, e], -1))
            for b in m.core:
                s = b(s)
        ref = m.head(m.norm(m.coda[0](s)))
        got, _ = m(ids, r=3)
    assert got.shape == (2, 9, V)
    assert (got - ref).abs().max().item() <= 1e-6
    assert (m(ids, r=2)[0] - ref).abs().max().item() > 1e-3  # r matters


def test_state_noise_std_and_freshness():
    m = make(std=0.5)
    e = torch.zeros(4, 64, 32)
    s1, s2 = m.initial_state(e), m.initial_state(e)
    assert abs(s1.std().item() - 0.5 * 0.9866) < 0.02  # a normal truncated at +-3 std has std 0.9866 std
    assert s1.abs().max().item() <= 1.5 + 1e-6
    assert not torch.equal(s1, s2)
    assert RecurrenceConfig().state_init_std == pytest.approx(math.sqrt(2 / (5 * 5280)))


def _grads(m: RecurrentLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    m.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_truncated_backprop_only_last_k_iterations():
    """Gradients of loss(r=4, n_grad=1) equal those of a reference whose state is detached after 3 iterations."""
    m = make()
    ids, tgt = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    mask = torch.ones(2, 8)
    got = _grads(m, m.loss(ids, tgt, mask, r=4, n_grad=1))

    def manual(detach_after: int) -> torch.Tensor:
        e = m.prelude[0](m.embed(ids))
        s = torch.zeros_like(e)
        for it in range(4):
            if it == detach_after:
                s = s.detach()
            s = m.adapter(torch.cat([s, e.detach() if it < detach_after else e], -1))
            for b in m.core:
                s = b(s)
        logits = m.head(m.norm(m.coda[0](s)))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))

    truncated, full = _grads(m, manual(3)), _grads(m, manual(0))
    assert set(got) == set(truncated)
    for n in got:
        assert torch.allclose(got[n], truncated[n], atol=1e-6, rtol=1e-5), n
    core_w = "core.0.mlp.w_down.weight"
    assert (full[core_w] - got[core_w]).abs().max() > 1e-2 * got[core_w].abs().max()  # full backprop differs
    assert got["prelude.0.mixer.wqkv.weight"].abs().sum() > 0  # e gets gradient through the grad iteration


def test_no_grad_iterations_store_no_graph():
    m = make()
    ids = torch.randint(0, V, (1, 4))
    loss0 = m.loss(ids, ids, torch.ones(1, 4), r=3, n_grad=0)
    assert loss0.requires_grad  # prelude -> (no core graph) -> coda still trains
    m.zero_grad()
    loss0.backward()
    assert all(p.grad is None for p in m.core.parameters()) and m.adapter.weight.grad is None


@pytest.mark.parametrize("mean,depth", [(4, 8), (12, 3)])
def test_depth_sampling_mean_matches_formula(mean, depth):
    """E[r] = M + 1 (Poisson(lambda) + 1, E[lambda] = M); k = min(r, min(b, M)), n = r - k."""
    rc = RecurrenceConfig(mean_recurrence=mean, backprop_depth=depth)
    draws = [sample_depth(rc, 0, step, micro, 100) for step in range(5000) for micro in range(2)]
    r = torch.tensor([n + k for n, k in draws], dtype=torch.float64)
    var = mean + mean**2 * (math.exp(0.25) - 1)  # Var[r] = E[lambda] + Var[lambda]
    assert abs(r.mean().item() - (mean + 1)) < 4 * math.sqrt(var / len(draws))
    assert abs(r.var().item() - var) < 0.1 * var
    assert all(k == min(n + k, depth, mean) and n >= 0 for n, k in draws)


def test_depth_sampling_is_a_pure_function():
    rc = RecurrenceConfig(mean_recurrence=8)
    a = [sample_depth(rc, 3, s, i, 50) for s in range(20) for i in range(3)]
    assert a == [sample_depth(rc, 3, s, i, 50) for s in range(20) for i in range(3)]
    assert a != [sample_depth(rc, 4, s, i, 50) for s in range(20) for i in range(3)]
    assert len(set(a)) > 5


def test_curricula():
    lin = RecurrenceConfig(mean_recurrence=8, curriculum="linear", curriculum_fraction=0.5)
    sq = RecurrenceConfig(mean_recurrence=8, curriculum="1-sqrt", curriculum_fraction=0.5)
    assert [mean_recurrence_at(lin, s, 100) for s in (0, 10, 25, 49, 50, 99)] == [1, 2, 4, 8, 8, 8]
    # 1 - sqrt(1 - x) stays low longer: x = 0.5 -> 0.293 -> ceil(2.34) = 3
    assert [mean_recurrence_at(sq, s, 100) for s in (0, 10, 25, 45, 50)] == [1, 1, 3, 6, 8]
    assert mean_recurrence_at(RecurrenceConfig(mean_recurrence=5), 0, 100) == 5


def test_cached_decoding_equals_uncached():
    m = make(p=1, c=2, q=1).eval()
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        full, _ = m(ids, r=3)
        cache = m.new_cache()
        first, _ = m(ids[:, :7], cache, r=3)
        steps = [m(ids[:, t : t + 1], cache, r=3)[0] for t in range(7, 12)]
    got = torch.cat([first, *steps], dim=1)
    assert (got - full).abs().max().item() <= 1e-5
    assert sorted(cache.slots) == [-1, 0, 1, 2, 3, 4, 5, 6]  # prelude 0, core 1..6 (3 iters x 2 layers), coda -1
    assert cache.slots[3]["mixer"]["k"].shape == (2, 2, 12, 8)  # GQA: 2 kv heads, head_dim 8
    with pytest.raises(ValueError, match="r=3"):
        m(ids[:, :1], cache, r=2)


def test_generate_cached_equals_uncached_greedy():
    m = make().eval()
    prompt = torch.randint(0, V, (2, 5))
    out = m.generate(prompt, 6, r=2)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, m(ids, r=2)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_flops_accounting():
    m = make()
    once, it = m._part_flops(64)
    assert m.inference_flops_per_token(64, 4) == pytest.approx(once + 4 * it)
    assert m.flops_per_token(64, r=6, n_grad=2) == pytest.approx(3 * (once + 2 * it) + 4 * it)
    core_params = sum(p.numel() for p in m.core.parameters()) + m.adapter.weight.numel()
    assert it == pytest.approx(2 * core_params + 2 * m.cfg.mixer.flops_per_token(32, 64))


def test_config_errors():
    with pytest.raises(ConfigError, match="model.recurrence: prelude \\+ core \\+ coda = 6 must equal model.n_layers=4"):
        build_config({"model": {"n_layers": 4, "recurrence": {"prelude": 2, "core": 2, "coda": 2}}})
    with pytest.raises(ConfigError, match="model.recurrence.curriculum"):
        build_config({"model": {"n_layers": 6, "recurrence": {"curriculum": "cosine"}}})


TRAIN = [
    "model.d_model=32", "model.n_layers=3", "model.mixer.n_heads=2", "train.seq_len=32", "train.batch_size=4",
    "train.grad_accum=2", "train.log_every=1", "optim.lr=3e-3", "train.eval_batches=1",
    "model.recurrence={prelude: 1, core: 1, coda: 1, mean_recurrence: 3, backprop_depth: 2, curriculum: linear, curriculum_fraction: 0.5}",
]


def test_training_draws_r_per_micro_batch_and_resume_reproduces_them(tmp_path):
    from archlab.config import load_config
    from archlab.train import read_metrics, train

    def run(name: str, stop: int | None = None):
        return train(load_config(None, TRAIN + ["train.steps=4", f"out_dir={tmp_path}", f"name={name}"]), stop_after=stop)

    full = read_metrics(run("full").run_dir)
    run("part", stop=2)
    part = read_metrics(run("part").run_dir)
    assert [m["micro_batch_args"] for m in full] == [m["micro_batch_args"] for m in part]
    assert [m["loss"] for m in full] == [m["loss"] for m in part]  # bit-exact, state noise included
    rc = load_config(None, TRAIN).model.recurrence
    expect = [[dict(zip(("r", "n_grad"), (n + k, k))) for n, k in (sample_depth(rc, 0, s, i, 4) for i in range(2))] for s in range(4)]
    assert [m["micro_batch_args"] for m in full] == expect
    assert all(d["n_grad"] == 1 for d in expect[0])  # linear curriculum: m = 1 at step 0, so b = 1
    assert all(d["n_grad"] == min(d["r"], 2) for d in expect[2] + expect[3])  # ramp done at step 2: m = 3, b = 2


def test_muon_takes_adapter_and_core_matrices():
    from archlab.optim import build_optimizers

    m = make()
    opt = build_optimizers(m, build_config({"optim": {"name": "muon", "muon_lr": 1e-3, "lr": 5e-5}}).optim)
    muon = {id(p) for g in opt.optimizers[1].param_groups for p in g["params"]}
    adam = {id(p) for g in opt.optimizers[0].param_groups for p in g["params"]}
    assert id(m.adapter.weight) in muon and id(m.core[0].mixer.wqkv.weight) in muon
    assert {id(m.embed.weight), id(m.head.weight), id(m.norm.weight)} <= adam
    assert opt.optimizers[1].param_groups[0]["lr"] == 1e-3 and opt.optimizers[0].param_groups[0]["lr"] == 5e-5


def test_cli_eval_recurrence_sweep(tmp_path):
    import json

    from typer.testing import CliRunner

    from archlab.cli import app
    from archlab.config import load_config
    from archlab.train import train

    run = train(load_config(None, TRAIN + ["train.steps=2", f"out_dir={tmp_path}", "name=rec"])).run_dir
    res = CliRunner().invoke(app, ["eval", str(run), "--recurrences", "1,2,4", "--batches", "1"])
    assert res.exit_code == 0, res.output
    rows = json.loads((run / "recurrence_sweep.json").read_text())
    assert [r["r"] for r in rows] == [1, 2, 4] and (run / "recurrence_sweep.png").stat().st_size > 0
    f = [r["flops_per_token"] for r in rows]
    assert f[2] - f[1] == pytest.approx(2 * (f[1] - f[0]))  # linear in r
    assert len({r["loss"] for r in rows}) == 3
    bad = CliRunner().invoke(app, ["eval", str(run), "--recurrences", "0,2"])
    assert bad.exit_code == 2 and "--recurrences" in bad.output
    plain = train(load_config(None, TRAIN[:-1] + ["train.steps=1", f"out_dir={tmp_path}", "name=plain"])).run_dir
    res = CliRunner().invoke(app, ["eval", str(plain), "--recurrences", "1,2"])
    assert res.exit_code == 2 and "needs a recurrent model" in res.output
    gen = CliRunner().invoke(app, ["generate", str(run), "-r", "3", "--max-new-tokens", "5", "--prompt", "def "])
    assert gen.exit_code == 0 and gen.output.startswith("def "), gen.output
    gen = CliRunner().invoke(app, ["generate", str(plain), "-r", "3", "--max-new-tokens", "5"])
    assert gen.exit_code == 2 and "needs a recurrent model" in gen.output

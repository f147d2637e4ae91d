"""Document masking: a packed window with doc_ids equals running every document alone and concatenating, for
every mixer with and without Canon, in logits and gradients; the core recurrences reset their state at every
document start in the chunked and the recurrent form; without doc_ids nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archlab.config import ModelConfig
from archlab.model.documents import Documents, chunk_doc_masks, cu_seqlens
from archlab.model.lm import LM
from archlab.model.mixers.gdn import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from archlab.model.mixers.gla import chunk_gla, fused_recurrent_gla
from archlab.model.mixers.mamba2 import chunk_simple_gla, fused_recurrent_simple_gla
from archlab.model.recurrence import RecurrentLM

ROOT = Path(__file__).resolve().parents[1]
# two rows of T = 40: documents of length 1, across chunk boundaries (chunk 8), starting exactly on one
LENGTHS = [[7, 13, 1, 19], [8, 8, 3, 21]]
T = 40
MIXERS = {
    "rope": {"name": "attention", "n_heads": 2},
    "rope-gqa-partial": {"name": "attention", "n_heads": 4, "n_kv_heads": 2, "rope_dim": 4, "qk_norm": True},
    "nope": {"name": "attention", "n_heads": 2, "position": "nope"},
    "gla": {"name": "gla", "n_heads": 2, "chunk_size": 8},
    "mamba2": {"name": "mamba2", "n_heads": 4, "d_state": 8, "chunk_size": 8},
    "gdn": {"name": "gdn", "n_heads": 2, "chunk_size": 8},
}
CANON = {"attention": ["", "ABCD"], "linear": ["", "ABCDb"]}


def doc_ids(lengths: list[list[int]]) -> torch.Tensor:
    """[B, sum(lengths)]: document index of every position."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths])


def spans(lengths: list[int]) -> list[tuple[int, int]]:
    ends = torch.tensor(lengths).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends))


def separately(model: LM, ids: torch.Tensor, lengths: list[list[int]]) -> torch.Tensor:
    """Logits [B, T, V] of every document run alone, concatenated."""
    rows = [torch.cat([model(ids[b : b + 1, s:e])[0] for s, e in spans(lengths[b])], dim=1) for b in range(len(ids))]
    return torch.cat(rows, dim=0)


def logits_and_grads(model: LM, run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = run()
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_packed_equals_separate(model: LM, lengths: list[list[int]] = LENGTHS, tol: float = 1e-5) -> None:
    docs = doc_ids(lengths)
    ids = torch.randint(0, model.cfg.vocab_size, docs.shape)
    packed, g_packed = logits_and_grads(model, lambda: model(ids, doc_ids=docs)[0])
    alone, g_alone = logits_and_grads(model, lambda: separately(model, ids, lengths))
    unmasked, _ = logits_and_grads(model, lambda: model(ids)[0])
    assert (packed - unmasked).abs().max() > 1e-3  # the mask changes something: the check below can fail
    assert (packed - alone).abs().max() <= tol, f"logits differ by {(packed - alone).abs().max():.2e}"
    assert g_packed.keys() == g_alone.keys()
    for name in g_packed:  # relative to the gradient's scale (sums over 80 positions x 37 logits)
        err = (g_packed[name] - g_alone[name]).abs().max() / g_alone[name].abs().max()
        assert err <= tol, f"gradient of {name} differs by {err:.2e} of its largest entry"


def model_config(mixer: str | dict, canon: str, **kw) -> ModelConfig:
    mixer = MIXERS[mixer] if isinstance(mixer, str) else mixer
    return ModelConfig(**{"vocab_size": 37, "d_model": 32, "n_layers": 2, "mixer": mixer, "canon": canon, "init_std": 0.1, **kw})


@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("canon_on", [False, True])
def test_packed_with_mask_equals_documents_alone(mixer, canon_on):
    family = "attention" if MIXERS[mixer]["name"] == "attention" else "linear"
    torch.manual_seed(0)
    check_packed_equals_separate(LM(model_config(mixer, CANON[family][canon_on])))


def test_long_window_of_short_documents_equals_documents_alone():
    """T = 512 of documents up to 50 tokens: attention takes its block-sparse form (checked above)."""
    from archlab.model.mixers.attention import DOC_BLOCK

    g = torch.Generator().manual_seed(4)
    lengths = []
    for _ in range(2):
        row: list[int] = []
        while sum(row) < 4 * DOC_BLOCK:
            row.append(int(torch.randint(1, 50, (1,), generator=g)))
        row[-1] -= sum(row) - 4 * DOC_BLOCK  # the last document is cut at the window's end
        lengths.append(row)
    assert Documents(doc_ids(lengths)).attention_blocks(DOC_BLOCK) is not None
    torch.manual_seed(0)
    check_packed_equals_separate(LM(model_config("rope-gqa-partial", "ABCD")), lengths)


def test_recurrent_depth_model_with_mask_equals_documents_alone():
    torch.manual_seed(0)
    cfg = model_config("rope", "ABCD", n_layers=3,
                       recurrence={"prelude": 1, "core": 1, "coda": 1, "mean_recurrence": 2, "state_init_std": 0.0})
    check_packed_equals_separate(RecurrentLM(cfg))


def test_rope_positions_window_agrees_up_to_rounding():
    """RoPE is relative: positions counted from the window start give the same scores as restarted ones."""
    torch.manual_seed(0)
    restart = LM(model_config("rope", "ABCD"))
    window = LM(model_config({**MIXERS["rope"], "doc_positions": "window"}, "ABCD"))
    window.load_state_dict(restart.state_dict())
    ids, docs = torch.randint(0, 37, (2, T)), doc_ids(LENGTHS)
    with torch.no_grad():
        a, b = restart(ids, doc_ids=docs)[0], window(ids, doc_ids=docs)[0]
    assert 0 < (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("mixer", ["rope", "gla", "mamba2", "gdn"])
def test_one_document_per_row_is_bit_identical_to_no_mask(mixer):
    torch.manual_seed(0)
    model = LM(model_config(mixer, "ABCDb" if mixer != "rope" else "ABCD"))
    ids = torch.randint(0, 37, (2, T))
    with torch.no_grad():
        assert torch.equal(model(ids, doc_ids=torch.full((2, T), 5))[0], model(ids)[0])


@pytest.mark.parametrize("gqa", [False, True])
def test_block_sparse_document_attention_equals_the_full_mask(gqa):
    """Long windows of short documents attend block by block (T·W instead of T²): same outputs and gradients
    as one SDPA with the whole block-diagonal mask."""
    from archlab.model.mixers.attention import DOC_BLOCK, attend_documents

    g = torch.Generator().manual_seed(0)
    B, H, T, hd = 2, 4, 4 * DOC_BLOCK, 8
    lengths = [torch.randint(1, 60, (T,), generator=g).tolist() for _ in range(B)]
    ids = torch.stack([torch.repeat_interleave(torch.arange(T), torch.tensor(row))[:T] for row in lengths])
    docs = Documents(ids)
    assert docs.attention_blocks(DOC_BLOCK) is not None  # the block-sparse path is the one under test
    q = torch.randn(B, H, T, hd, generator=g, requires_grad=True)
    k, v = (torch.randn(B, H // 2 if gqa else H, T, hd, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(B, H, T, hd, generator=g)
    got = attend_documents(q, k, v, docs, gqa)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=docs.attention_mask(), enable_gqa=gqa)
    assert (got - ref).abs().max() <= 1e-5
    for a, b in zip(torch.autograd.grad((got * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        assert (a - b).abs().max() <= 1e-5
    assert Documents(torch.zeros(B, T, dtype=torch.long)).attention_blocks(DOC_BLOCK) is None  # long docs: full mask


def test_decoding_with_a_cache_refuses_document_masks():
    model = LM(model_config("gla", "ABCDb"))
    with pytest.raises(ValueError, match="not to decoding"):
        model(torch.zeros(2, T, dtype=torch.long), model.new_cache(), doc_ids=doc_ids(LENGTHS))


def test_bad_doc_ids_are_refused():
    model = LM(model_config("nope", ""))
    ids = torch.zeros(2, T, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        model(ids, doc_ids=torch.zeros(2, T - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="non-decreasing"):
        model(ids, doc_ids=doc_ids(LENGTHS).flip(1))


# ----------------------------------------------------------------------------------------------- core recurrences

CORES = {  # name: (chunk, recurrent, gate shapes)
    "gla": (chunk_gla, fused_recurrent_gla),
    "simple_gla": (chunk_simple_gla, fused_recurrent_simple_gla),
    "gated_delta": (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule),
}


def core_inputs(name: str, B: int, T: int, decay: float = 1.0) -> list[torch.Tensor]:
    """Random q, k, v and gates [B, T, H, ...]; ``decay`` scales the log-decays (large: the exact paths)."""
    g = torch.Generator().manual_seed(1)
    H, K, V = 2, 8, 4
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    if name == "gla":
        return [q, k, v, -decay * torch.rand(B, T, H, K, generator=g)]
    gate = -decay * torch.rand(B, T, H, generator=g)
    if name == "simple_gla":
        return [q, k, v, gate]
    k = torch.nn.functional.normalize(k, dim=-1)
    return [q, k, v, gate, torch.rand(B, T, H, generator=g)]


@pytest.mark.parametrize("name", list(CORES))
@pytest.mark.parametrize("decay", [1.0, 40.0])
def test_cores_reset_state_at_documents(name, decay):
    """chunked(doc_ids) == recurrent(doc_ids) == each document alone; an initial state carries into the first
    document of a row only, and the final state is the last document's."""
    chunk, recurrent = CORES[name]
    B = len(LENGTHS)
    inputs = core_inputs(name, B, T, decay)
    init = torch.randn(B, 2, 8, 4, generator=torch.Generator().manual_seed(2))
    docs = doc_ids(LENGTHS)
    got, final = chunk(*inputs, initial_state=init, output_final_state=True, chunk_size=8, doc_ids=docs)
    rec, rec_final = recurrent(*inputs, initial_state=init, output_final_state=True, doc_ids=docs)
    for b in range(B):
        for i, (s, e) in enumerate(spans(LENGTHS[b])):
            part = [x[b : b + 1, s:e] for x in inputs]
            ref, ref_final = chunk(*part, initial_state=init[b : b + 1] if i == 0 else None, output_final_state=True, chunk_size=8)
            assert (got[b : b + 1, s:e] - ref).abs().max() <= 1e-5, (b, i)
        assert (final[b] - ref_final[0]).abs().max() <= 1e-5
    assert (rec - got).abs().max() <= 1e-5 and (rec_final - final).abs().max() <= 1e-5


def test_chunk_masks_follow_their_definition():
    visible, carry_in, to_end, keep = chunk_doc_masks(doc_ids([[3, 6, 1]]), 10, 4)  # chunks [0..3] [4..7] [8, 9, pad, pad]
    assert visible.shape == (1, 3, 4, 4) and visible.dtype == torch.bool and keep.tolist() == [[0, 1, 0]]  # doc 1 starts in chunk 0, doc 2 in chunk 2
    assert carry_in[0].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert to_end[0].tolist() == [[0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]]  # the padding continues doc 2


@pytest.mark.parametrize("name", list(CORES))
def test_cu_seqlens_describes_the_flattened_batch(name):
    """fla's kernels get the batch as one row with cu_seqlens: the pure-torch form on that row with the ids
    cu_seqlens implies equals the batched form (what the fla path relies on)."""
    chunk, _ = CORES[name]
    docs = doc_ids(LENGTHS)
    cu = cu_seqlens(docs)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 7, 20, 21, 40, 48, 56, 59, 80]
    flat_ids = torch.zeros(2 * T, dtype=torch.long)
    flat_ids[cu[1:-1].long()] = 1
    inputs = core_inputs(name, 2, T)
    batched, _ = chunk(*inputs, chunk_size=8, doc_ids=docs)
    flat, _ = chunk(*(x.reshape(1, 2 * T, *x.shape[2:]) for x in inputs), chunk_size=8, doc_ids=flat_ids.cumsum(0)[None])
    assert (flat.view_as(batched) - batched).abs().max() <= 1e-5


def test_documents_positions_and_conv_masks():
    d = Documents(doc_ids([[3, 1, 4]]))
    assert d.positions().tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    masks = d.conv_masks(4, torch.float32)[..., 0]  # [3, 1, 8]: taps reaching 3, 2, 1 steps back
    assert masks[:, 0].tolist() == [[0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0, 1, 1], [0, 1, 1, 0, 0, 1, 1, 1]]
    assert not d.single and Documents(torch.zeros(2, 5, dtype=torch.long)).single


# ----------------------------------------------------------------------------------------------- through the pipeline

TINY_RUN = ["model.d_model=32", "model.n_layers=1", "model.mixer.n_heads=2", "train.steps=2", "train.batch_size=4",
            "train.eval_batches=1", "train.log_every=1", "optim.warmup_steps=0", "data.doc_mask=true"]


@pytest.mark.parametrize("recipe", ["depo", "brevo", "capo", "mano", "lano", "text"])
def test_every_task_trains_and_evaluates_with_doc_mask(recipe, tmp_path):
    from archlab.config import load_config
    from archlab.evaluate import masked_loss_eval
    from archlab.tasks import build_task
    from archlab.train import train

    extra = ["data.max_bytes=200000", "train.seq_len=64"] if recipe == "text" else []
    cfg = load_config(ROOT / "configs" / f"{recipe}_tiny.yaml", TINY_RUN + extra + [f"out_dir={tmp_path}", "name=run"])
    result = train(cfg)
    assert (result.run_dir / "eval.json").is_file() and result.eval["loss"] > 0
    if recipe == "depo":  # evaluation honours the switch: the same model scores differently without it
        from archlab.checkpoint import load_model_weights
        from archlab.train import build_model

        task = build_task(cfg.data, cfg.train.seq_len)
        model, _ = build_model(cfg, task)
        load_model_weights(model, result.run_dir / "step_2")
        plain = build_task(cfg.data.model_copy(update={"doc_mask": False}), cfg.train.seq_len)
        masked_eval, plain_eval = (masked_loss_eval(model, t, "val", 0, 1, 4)["loss"] for t in (task, plain))
        assert masked_eval == pytest.approx(result.eval["loss"]) and abs(masked_eval - plain_eval) > 1e-4

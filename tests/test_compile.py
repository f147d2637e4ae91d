"""train.compile=true: compiled blocks give the eager losses, keep checkpoint keys, and leave decoding eager."""

import shutil

import pytest
import torch

from archlab.checkpoint import read_checkpoint
from archlab.config import load_config
from archlab.model.lm import LM
from archlab.train import read_metrics, train

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile on CPU needs a C++ compiler")

TINY = ["model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "model.canon=ABCD", "train.seq_len=32",
        "train.batch_size=4", "train.log_every=1", "train.steps=3", "optim.lr=3e-3", "train.eval_batches=1"]


def test_compiled_training_matches_eager(tmp_path):
    torch._dynamo.reset()
    runs = {c: train(load_config(None, TINY + [f"out_dir={tmp_path}", f"name=compile-{c}", f"train.compile={c}"])) for c in ("false", "true")}
    eager, compiled = ([m["loss"] for m in read_metrics(runs[c].run_dir)] for c in ("false", "true"))
    assert len(eager) == 3 and max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the compiled path really ran
    ref = read_checkpoint(runs["false"].run_dir / "step_3")
    ckpt = read_checkpoint(runs["true"].run_dir / "step_3")
    assert ckpt.path.joinpath("model.safetensors").exists() and ref.step == ckpt.step == 3
    from safetensors.torch import load_file

    a, b = load_file(ref.path / "model.safetensors"), load_file(ckpt.path / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_compiled_model_decodes_eagerly_and_equals_uncompiled():
    from archlab.model.compile import compile_blocks

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = load_config(None, TINY).model.model_copy(update={"vocab_size": 64})
    eager, compiled = LM(cfg).eval(), LM(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled, 32)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch.equal(eager.generate(ids, 6), compiled.generate(ids, 6))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before  # nothing compiled for decoding
    x = torch.randn(2, 32, 32, requires_grad=True)
    y_ref, y = eager.blocks[0](x), compiled.blocks[0](x)  # grad on, no cache: the compiled forward
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before
    assert (y - y_ref).abs().max() < 1e-5
    g = torch.randn_like(y)
    assert (torch.autograd.grad(y, x, g)[0] - torch.autograd.grad(y_ref, x, g)[0]).abs().max() < 1e-5

"""train.compile=true: compiled blocks give the eager losses, keep checkpoint keys, and leave decoding eager."""

import pytest
import torch

from archlab.checkpoint import read_checkpoint
from archlab.config import load_config
from archlab.model.compile import has_cpp_compiler
from archlab.model.lm import LM
from archlab.train import read_metrics, train

needs_compiler = pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")

TINY = ["model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "model.canon=ABCD", "train.seq_len=32",
        "train.batch_size=4", "train.log_every=1", "train.steps=3", "optim.lr=3e-3", "train.eval_batches=1"]


@needs_compiler
@pytest.mark.parametrize("data", [[], ["data.name=depo", "data.n_max=6", "data.k_max=2", "data.name_max_len=1", "data.n_queries=4",
                                      "data.doc_mask=true"]],
                         ids=["text", "depo-doc-mask"])
def test_compiled_training_matches_eager(tmp_path, data):
    torch._dynamo.reset()
    runs = {c: train(load_config(None, TINY + data + [f"out_dir={tmp_path}", f"name=compile-{c}", f"train.compile={c}"]))
            for c in ("false", "true")}
    eager, compiled = ([m["loss"] for m in read_metrics(runs[c].run_dir)] for c in ("false", "true"))
    assert len(eager) == 3 and max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the compiled path really ran
    ref = read_checkpoint(runs["false"].run_dir / "step_3")
    ckpt = read_checkpoint(runs["true"].run_dir / "step_3")
    assert ckpt.path.joinpath("model.safetensors").exists() and ref.step == ckpt.step == 3
    from safetensors.torch import load_file

    a, b = load_file(ref.path / "model.safetensors"), load_file(ckpt.path / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@needs_compiler
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


def test_no_cpp_compiler_is_one_clear_error_before_the_run_dir_exists(tmp_path, monkeypatch):
    monkeypatch.setattr("archlab.model.compile.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match=r"train.compile=true on CPU needs a C\+\+ compiler"):
        train(load_config(None, TINY + [f"out_dir={tmp_path}", "name=nocxx", "train.compile=true"]))
    assert not (tmp_path / "nocxx").exists()

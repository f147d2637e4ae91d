"""lm-eval over archlab: log-likelihoods on local tasks (tests/data/lm_eval, no download) equal archlab's own loss."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from archlab.config import ModelConfig  # noqa: E402
from archlab.lm_eval_adapter import ArchlabLM, run_lm_eval  # noqa: E402
from archlab.model.lm import LM  # noqa: E402
from archlab.tokenizers import ByteTokenizer  # noqa: E402

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval"
EOS = ByteTokenizer().eos_id  # conditions empty contexts and rolling windows


@pytest.fixture(scope="module")
def model() -> LM:
    torch.manual_seed(0)
    return LM(ModelConfig(vocab_size=257, d_model=32, n_layers=2, mixer={"name": "gla", "n_heads": 2}, canon="AC")).eval()


def adapter(model: LM, batch_size: int = 3) -> ArchlabLM:
    return ArchlabLM(model, ByteTokenizer(), batch_size=batch_size)


def archlab_ll(model: LM, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from archlab's masked cross-entropy (sum over the continuation)."""
    ids = torch.tensor([context + continuation])
    mask = torch.zeros_like(ids[:, 1:])
    mask[:, len(context) - 1:] = 1
    with torch.no_grad():
        return -float(model.loss(ids[:, :-1], ids[:, 1:], mask, normaliser=1.0))


def test_tasks_score_with_archlab_loss(model):
    out = run_lm_eval(adapter(model), ["archlab_tiny_mc", "archlab_tiny_text"], TASKS_DIR, log_samples=True)
    mc = out["samples"]["archlab_tiny_mc"]
    assert len(mc) == 4
    correct = 0
    for sample in mc:
        doc = sample["doc"]
        q = doc["question"]
        ctx, ws = q.rstrip(), q[len(q.rstrip()):]  # lm-eval moves the context's trailing whitespace to the continuation
        expected = [archlab_ll(model, list(ctx.encode()), list((ws + c).encode())) for c in doc["choices"]]
        got = [ll for ll, _ in sample["filtered_resps"]]
        assert got == pytest.approx(expected, abs=1e-4)
        correct += max(range(len(expected)), key=expected.__getitem__) == doc["label"]
    assert out["results"]["archlab_tiny_mc"]["acc,none"] == correct / 4
    # rolling log-likelihood of whole documents, conditioned on end-of-document: bits per byte from archlab's loss
    texts = [s["doc"]["text"] for s in out["samples"]["archlab_tiny_text"]]
    nll = -sum(archlab_ll(model, [EOS], list(t.encode())) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert out["results"]["archlab_tiny_text"]["bits_per_byte,none"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)


def test_batching_and_windows_do_not_change_scores(model):
    reqs = [Instance("loglikelihood", {}, ("def f(x", "):\n    return x"), 0), Instance("loglikelihood", {}, ("", "import os"), 1)]
    one = adapter(model, batch_size=1).loglikelihood(reqs)
    many = adapter(model, batch_size=8).loglikelihood(reqs)
    assert [ll for ll, _ in one] == pytest.approx([ll for ll, _ in many], abs=1e-5)
    assert one[1][0] == pytest.approx(archlab_ll(model, [EOS], list(b"import os")), abs=1e-5)  # empty context: end-of-document token
    text = "x = [i * i for i in range(30)]\n" * 2
    lm = adapter(model)
    whole = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    lm.max_length = 16  # forces disjoint windows of <= 16 predicted tokens (lm-eval's windowing)
    windowed = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    assert whole == pytest.approx(archlab_ll(model, [EOS], list(text.encode())), abs=1e-4)
    windows = list(map(make_disjoint_window, get_rolling_token_windows(list(text.encode()), EOS, 16, 1)))
    assert len(windows) == 4 and sum(len(cont) for _, cont in windows) == len(text)
    expected = sum(archlab_ll(model, ctx, cont) for ctx, cont in windows)
    assert windowed == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_and_stops(model):
    lm = adapter(model)
    ctx = "def main("
    full = model.generate(torch.tensor([list(ctx.encode())]), 12, eos_id=EOS)[0, len(ctx):].tolist()
    text = ByteTokenizer().decode(full)
    stop = text[3] if len(text) > 3 else "\x00"
    got = lm.generate_until([Instance("generate_until", {}, (ctx, {"until": [stop], "max_gen_toks": 12}), 0)])
    assert got == [text.split(stop, 1)[0]]


def test_cli_eval_lm_eval(tiny_text_run):
    from typer.testing import CliRunner

    from archlab.cli import app

    args = ["eval", str(tiny_text_run), "--lm-eval", "archlab_tiny_mc", "--lm-eval-include", str(TASKS_DIR)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    acc = json.loads((tiny_text_run / "lm_eval.json").read_text())["archlab_tiny_mc"]["acc,none"]
    assert acc in (0.0, 0.25, 0.5, 0.75, 1.0) and "archlab_tiny_mc" in result.output
    bad = CliRunner().invoke(app, ["eval", str(tiny_text_run), "--lm-eval", "x", "--lm-eval-include", str(TASKS_DIR / "none")])
    assert bad.exit_code == 2 and "--lm-eval-include" in bad.output and "is not a directory" in bad.output, bad.output

"""lm-eval-harness over an archlab model (``pip install archlab[eval]``): ``ArchlabLM`` is an lm-eval ``LM``.

Scoring is archlab's own forward pass: the log-likelihood of a continuation is the sum of the log-softmax of
the logits at its tokens, i.e. minus archlab's masked cross-entropy summed over the continuation. Requests
are batched by right-padding (exact for causal models: padding after a token never changes its logits).
An empty context, and the first window of a rolling log-likelihood, are conditioned on the tokenizer's
end-of-document token (the separator archlab's text pipeline puts between training documents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from archlab.evaluate import model_device
from archlab.model.lm import LM
from archlab.tokenizers import Tokenizer


# ((context, continuation) or None, context ids, continuation ids), as lm-eval's TemplateLM passes them
TokenRequest = tuple[Any, list[int], list[int]]


class ArchlabLM(TemplateLM):
    """lm-eval model over an archlab ``LM`` (or ``RecurrentLM``) and the run's tokenizer."""

    def __init__(self, model: LM, tokenizer: "Tokenizer", batch_size: int = 8, max_length: int | None = None):
        super().__init__()
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or model.cfg.max_seq_len

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether the continuation is the greedy one) per request."""
        device = model_device(self.model)
        too_long = [len(cont) for _, _, cont in requests if len(cont) > self.max_length]
        if too_long:
            raise ValueError(f"lm-eval continuation of {max(too_long)} tokens exceeds max_length={self.max_length}")
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        # longest first, so that each batch pads little; sequences are cut on the left to max_length + 1 tokens
        seqs = [(ctx + cont)[-(self.max_length + 1):] for _, ctx, cont in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = len(seqs[chunk[0]]) - 1
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)  # [b, T], right-padded
            for row, i in enumerate(chunk):
                inputs[row, : len(seqs[i]) - 1] = torch.tensor(seqs[i][:-1])
            logp = self.model(inputs.to(device))[0].float().log_softmax(-1)  # [b, T, V]
            for row, i in enumerate(chunk):
                cont = requests[i][2]
                end = len(seqs[i]) - 1
                lp = logp[row, end - len(cont): end]  # [n, V]: predictions of the continuation's tokens
                target = torch.tensor(cont, device=device)
                ll = float(lp.gather(-1, target[:, None]).sum())
                results[i] = (ll, bool((lp.argmax(-1) == target).all()))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of at most max_length tokens."""
        out = []
        for req in requests:
            (text,) = req.args
            windows = [
                (None, ctx, cont)
                for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok.encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                ))
            ]
            out.append(sum(ll for ll, _ in self._loglikelihood_tokens(windows)))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with ``temperature`` > 0, sampled) continuation, cut at end-of-document or the first ``until`` string."""
        device = model_device(self.model)
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = (self.tok.encode(context) or [self.prefix_token_id])[-max(1, self.max_length - max_new):]
            temperature = float(gen_kwargs.get("temperature", 0.0))
            gen = self.model.generate(torch.tensor([ids], device=device), max_new, temperature=temperature, eos_id=self.tok.eos_id)
            text = self.tok.decode(gen[0, len(ids):].tolist())
            for stop in until:
                text = text.split(stop, 1)[0]
            out.append(text)
        return out


def run_lm_eval(lm: ArchlabLM, tasks: list[str], include_path: str | Path | None = None, limit: int | None = None,
                log_samples: bool = False) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` (names known to lm-eval, or defined in YAML under ``include_path``)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # Index only the local folder when it defines every task asked for (indexing lm-eval's own ~10k tasks is slow).
    manager = TaskManager(include_path=str(include_path), include_defaults=False) if include_path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}" + ("" if include_path else " (a local task YAML? pass its folder as the include path)"))
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=log_samples)

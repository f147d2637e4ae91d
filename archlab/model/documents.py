"""Document masking of packed windows: the boundaries every mixer needs so that no token sees another document.

A packed window holds several documents (synthetic instances, EOS-separated texts). Its structure is one tensor,
``doc_ids`` [B, T]: the document index of every position, non-decreasing along T (its values only need to be
equal within a document and differ between neighbours). From it:

* attention: a block-diagonal causal mask [B, 1, T, T] (query and key in the same document, key not later);
* RoPE: the position of each token inside its document (:meth:`Documents.positions`), so positions restart;
* Canon / short convolutions: tap k reaches k steps back only inside the document (:meth:`conv_masks`);
* the linear mixers: the recurrent state is reset at every document start; the chunked forms use
  :func:`chunk_doc_masks` (fla's ``cu_seqlens`` semantics, without flattening the batch).

A :class:`Documents` is built once per forward (``LM.hidden``) and passed to every block, which memoises the
derived masks across layers. ``None`` everywhere means "no masking" and leaves every computation as it was.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class Documents:
    """Document structure of a batch: ``ids`` [B, T] (long), with memoised masks derived from it."""

    def __init__(self, ids: torch.Tensor):
        if ids.dim() != 2:
            raise ValueError(f"doc_ids must be [batch, time], got shape {tuple(ids.shape)}")
        if ids.shape[1] > 1 and bool((ids[:, 1:] < ids[:, :-1]).any()):
            raise ValueError("doc_ids must be non-decreasing along time (documents are contiguous spans)")
        self.ids = ids
        self.single = bool((ids == ids[:, :1]).all())  # every row one document: the masks are plain causal ones
        self._memo: dict[tuple, Any] = {}

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def positions(self) -> torch.Tensor:
        """[B, T] long: index of every token inside its document (0 at each document's first token)."""

        def make() -> torch.Tensor:
            T = self.ids.shape[1]
            t = torch.arange(T, device=self.ids.device).expand_as(self.ids)
            start = torch.ones_like(self.ids, dtype=torch.bool)
            start[:, 1:] = self.ids[:, 1:] != self.ids[:, :-1]
            first = torch.where(start, t, torch.zeros_like(t)).cummax(dim=1).values  # [B, T] index of the doc start
            return t - first

        return self._cached(("positions",), make)

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, T, T] bool: True where query i may attend key j (same document, j <= i)."""

        def make() -> torch.Tensor:
            T = self.ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=self.ids.device).tril()
            return ((self.ids[:, :, None] == self.ids[:, None, :]) & causal)[:, None]

        return self._cached(("attention",), make)

    def attention_blocks(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block-sparse plan for block-diagonal causal attention, or None where it would not save work.

        Queries go in blocks of ``block`` positions; block n needs only the keys from the earliest document start
        of its first query (over the batch) to its last query. Every block takes the same number W of keys
        ending at its last query, so all blocks are one batched attention: key index ``idx`` [N, W] (clamped at
        0; the mask hides positions before the window) and ``mask`` [B·N, 1, block, W]. Worth it when W < T/2
        (cost T·W against the full mask's T²): long windows of short documents.
        """

        def make() -> tuple[torch.Tensor, torch.Tensor] | None:
            B, T = self.ids.shape
            if T % block or T < 2 * block:
                return None
            starts = torch.arange(T, device=self.ids.device) - self.positions()  # [B, T] start of each token's document
            first = starts[:, ::block].min(dim=0).values  # [N] earliest key any query of the block needs
            ends = torch.arange(block, T + 1, block, device=self.ids.device)  # [N] one past the block's last query
            W = int((ends - first).max())
            W = -(-W // 16) * 16  # a few sizes only, whatever the documents
            if 2 * W >= T:
                return None
            idx = ends[:, None] - W + torch.arange(W, device=self.ids.device)  # [N, W] key positions (< 0: none)
            query = torch.arange(T, device=self.ids.device).view(-1, block)  # [N, block]
            keys = idx.clamp_min(0)
            doc_q = self.ids.view(B, -1, block)  # [B, N, block]
            doc_k = self.ids[:, keys]  # [B, N, W]
            ok = (doc_q[..., :, None] == doc_k[..., None, :]) & (idx[:, None, :] <= query[:, :, None]) & (idx >= 0)[:, None, :]
            return keys, ok.view(-1, 1, block, W)  # [B·N, 1, block, W]

        return self._cached(("blocks", block), make)

    def conv_masks(self, kernel: int, dtype: torch.dtype) -> torch.Tensor:
        """[K-1, B, T, 1] in ``dtype``: mask k is 1 where tap k (reaching K-1-k steps back) stays inside the
        document (the dense form, for torch.compile)."""

        def make() -> torch.Tensor:
            back = torch.arange(kernel - 1, 0, -1, device=self.ids.device)  # [K-1]: K-1 .. 1 steps back
            return (self.positions()[None] >= back[:, None, None]).to(dtype)[..., None]

        return self._cached(("conv", kernel, dtype), make)

    def conv_fixups(self, kernel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The positions whose conv taps reach into a previous document, for
        :class:`~archlab.model.canon.CausalDepthwiseConv`: ``rows`` [n] (flat index b·T + t), ``src`` [n, K-1]
        (flat index into the left-padded input [B, K-1+T] of tap k = 0..K-2) and ``invalid`` [n, K-1] (1 where tap
        k, reaching K-1-k back, crosses the start). Only tokens 1..K-2 of every document but a row's first."""

        def make() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            B, T = self.ids.shape
            pos = self.positions()
            t = torch.arange(T, device=self.ids.device)
            near = (pos < kernel - 1) & (t > pos)  # [B, T]: close to a start that is not the window's
            b, tt = near.nonzero(as_tuple=True)
            k = torch.arange(kernel - 1, device=self.ids.device)
            src = (b * (T + kernel - 1) + tt)[:, None] + k  # [n, K-1]: padded index t + k reads token t-(K-1-k)
            invalid = (kernel - 1 - k)[None] > pos[b, tt][:, None]
            return b * T + tt, src, invalid.float()

        return self._cached(("fixups", kernel), make)


def as_documents(doc_ids: torch.Tensor | None, ids: torch.Tensor) -> Documents | None:
    """A :class:`Documents` for token ids [B, T], or None without ``doc_ids``; checks the shapes agree."""
    if doc_ids is None:
        return None
    if doc_ids.shape != ids.shape:
        raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)}, expected the token ids' {tuple(ids.shape)}")
    return Documents(doc_ids.to(ids.device))


def chunk_doc_masks(doc_ids: torch.Tensor, T: int, C: int) -> tuple[torch.Tensor, ...]:
    """Masks of the chunked linear recurrences for document resets, from doc_ids [B, T] and chunk size C.

    With chunks n = 0..N-1 of C steps (the tail padded with the last document id, so padding continues the last
    document), d [B, N, C] the chunked ids and p_n the id of the token just before chunk n (chunk 0: its own
    first token, so an initial state carries into the first document):

    * ``visible`` [B, N, C, C] (bool): j ≤ i and d_i == d_j — step j reaches step i within the chunk (no reset
      in (j, i]); the causal mask of the chunked forms, so that masking costs no extra pass there;
    * ``carry_in`` [B, N, C]: d_i == p_n — the state entering the chunk reaches step i;
    * ``to_end`` [B, N, C]: d_j == d_last — step j's update reaches the state leaving the chunk;
    * ``keep`` [B, N]: d_last == p_n — the entering state survives the whole chunk.

    The others float32 (1 or 0); all shaped to be unsqueezed over heads (and key / value channels) by the caller.
    """
    B = doc_ids.shape[0]
    pad = (-T) % C
    d = doc_ids if not pad else torch.cat([doc_ids, doc_ids[:, -1:].expand(B, pad)], dim=1)
    d = d.view(B, -1, C)  # [B, N, C]
    last = d[..., -1]  # [B, N]
    prev = torch.cat([d[:, :1, 0], last[:, :-1]], dim=1)  # [B, N]: id just before each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=d.device).tril()
    visible = (d[..., :, None] == d[..., None, :]) & causal
    carry_in = (d == prev[..., None]).float()
    to_end = (d == last[..., None]).float()
    keep = (last == prev).float()
    return visible, carry_in, to_end, keep


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x * mask, or x itself without a mask (no extra op: unmasked runs stay exactly as before)."""
    return x if mask is None else x * mask


def step_keep(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] float: 0 where a token starts a new document (the recurrent state is reset there), else 1.
    Position 0 keeps the initial state (it continues the document before the window, if any)."""
    keep = torch.ones_like(doc_ids, dtype=torch.float32)
    keep[:, 1:] = (doc_ids[:, 1:] == doc_ids[:, :-1]).float()
    return keep


def cu_seqlens(doc_ids: torch.Tensor) -> torch.Tensor:
    """fla / flash-attn ``cu_seqlens`` [S+1] (int32) of the batch flattened to one row of B·T tokens: the offsets
    of every document, where each batch row also starts a new one."""
    B, T = doc_ids.shape
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    offsets = torch.nonzero(start.reshape(-1)).squeeze(1)
    end = torch.tensor([B * T], device=doc_ids.device)
    return torch.cat([offsets, end]).to(torch.int32)

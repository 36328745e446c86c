"""A narrow hook into transformers: an attention function registered in `AttentionInterface` that
computes the layer's output with the usual kernel (SDPA, flash, eager) and, for the layers being
captured, also the softmax attention of the query rows only (never the full T x T matrix)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from .scoring import query_row_attention

PREFIX = "qrmem_"


@dataclass
class Capture:
    """What to capture in the next forward pass, and where the results go.

    `rows` is one slice for a batch of one (out: layer -> (H, T)), or one slice per batch element
    for a right-padded batch (out: layer -> (B, H, T)). Right padding needs no padding mask here:
    pad tokens come after every real token, so a causal row of a real token never sees them."""

    layers: frozenset[int]
    rows: slice | tuple[slice, ...]  # rows of the current input whose attention is captured (the query tokens)
    out: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> mean over rows
    keep_rows: bool = False  # also keep each query row's attention (batch of one only)
    rows_out: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (H, Q, T) when keep_rows


_ACTIVE: ContextVar[Capture | None] = ContextVar("qrmem_capture", default=None)


@contextmanager
def capturing(layers: frozenset[int], rows: slice | tuple[slice, ...], *,
              keep_rows: bool = False) -> Iterator[Capture]:
    if keep_rows and not isinstance(rows, slice):
        raise ValueError("keep_rows needs a batch of one (one slice of rows)")
    cap = Capture(layers, rows, keep_rows=keep_rows)
    token = _ACTIVE.set(cap)
    try:
        yield cap
    finally:
        _ACTIVE.reset(token)


def _eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    rep = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(rep, dim=1)
    v = value.repeat_interleave(rep, dim=1)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, : k.shape[-2]]
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


def _make(base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = _eager if base == "eager" else ALL_ATTENTION_FUNCTIONS[base]

    def qr_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if getattr(module, OUTPUT_UNUSED, False):
            # the last loaded layer: only its keys (cached above) and query rows are ever read
            out = (query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), None)
        else:
            out = inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        cap = _ACTIVE.get()
        if cap is not None and module.layer_idx in cap.layers:
            # query: (B, H, S, D) for the S new tokens; key: (B, KVH, T, D) including the cache
            q_len, t_len = query.shape[2], key.shape[2]
            if isinstance(cap.rows, slice):
                rows = range(q_len)[cap.rows]
                positions = torch.arange(rows.start, rows.stop) + (t_len - q_len)  # absolute positions
                probs = query_row_attention(query[:, :, cap.rows], key, scaling, positions)  # (B, H, Q, T)
                cap.out[module.layer_idx] = probs[0].mean(dim=1)  # (H, T)
                if cap.keep_rows:
                    cap.rows_out[module.layer_idx] = probs[0]  # (H, Q, T)
            else:
                cap.out[module.layer_idx] = batch_rows_attention(query, key, scaling, cap.rows, t_len - q_len)
        return out

    return qr_attention


def batch_rows_attention(query: torch.Tensor, key: torch.Tensor, scaling: float,
                         rows: tuple[slice, ...], offset: int) -> torch.Tensor:
    """(B, H, T) mean attention of each batch element's own query rows (right-padded batch).

    query: (B, H, S, D); key: (B, KVH, T, D); rows: one slice of the S new tokens per element;
    offset: absolute position of the first new token (the cached length)."""
    B, H, S, D = query.shape
    assert len(rows) == B, (len(rows), B)
    starts = torch.tensor([r.start for r in rows], device=query.device)  # (B,)
    lens = torch.tensor([r.stop - r.start for r in rows], device=query.device)  # (B,)
    assert bool((lens > 0).all()) and bool((starts + lens <= S).all()), rows
    q_max = int(lens.max())
    step = torch.arange(q_max, device=query.device)
    valid = step[None, :] < lens[:, None]  # (B, Qm): real rows; the rest repeat a real row
    idx = torch.minimum(starts[:, None] + step[None, :], (starts + lens - 1)[:, None])  # (B, Qm)
    q_rows = query.gather(2, idx[:, None, :, None].expand(B, H, q_max, D))  # (B, H, Qm, D)
    probs = query_row_attention(q_rows, key, scaling, idx + offset)  # (B, H, Qm, T), float32
    weights = valid.to(probs.dtype) / lens[:, None].to(probs.dtype)  # (B, Qm)
    with torch.autocast(query.device.type, enabled=False):
        return torch.einsum("bhqt,bq->bht", probs, weights)


OUTPUT_UNUSED = "qrmem_output_unused"  # set on the attention module whose output nothing reads


def register(base: str) -> str:
    """Register the capturing wrapper around `base` (and its mask function); return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )

    name = PREFIX + base
    AttentionInterface.register(name, _make(base))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name

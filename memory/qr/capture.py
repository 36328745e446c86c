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
    """What to capture in the next forward pass, and where the results go."""

    layers: frozenset[int]
    rows: slice  # rows of the current input whose attention is captured (the query tokens)
    out: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (H, T) mean over rows


_ACTIVE: ContextVar[Capture | None] = ContextVar("qrmem_capture", default=None)


@contextmanager
def capturing(layers: frozenset[int], rows: slice) -> Iterator[Capture]:
    cap = Capture(layers, rows)
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
        out = inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        cap = _ACTIVE.get()
        if cap is not None and module.layer_idx in cap.layers:
            # query: (B, H, S, D) for the S new tokens; key: (B, KVH, T, D) including the cache
            q_len, t_len = query.shape[2], key.shape[2]
            rows = range(q_len)[cap.rows]
            positions = torch.arange(rows.start, rows.stop) + (t_len - q_len)  # absolute positions
            probs = query_row_attention(query[:, :, cap.rows], key, scaling, positions)  # (B, H, Q, T)
            cap.out[module.layer_idx] = probs[0].mean(dim=1)  # (H, T)
        return out

    return qr_attention


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

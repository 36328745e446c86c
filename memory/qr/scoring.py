"""Pure tensor functions of QR scoring: query-row attention -> per-token mass -> per-chunk, per-head
scores -> calibration, outlier masking, head aggregation. No model code here."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def query_row_attention(q: torch.Tensor, k: torch.Tensor, scaling: float,
                        q_positions: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of a few query rows over all keys, computed in float32.

    q: (B, H, Q, D) query states (after RoPE) of the rows to score
    k: (B, KVH, T, D) all keys, GQA-shared (H is a multiple of KVH; head h reads kv head h // (H/KVH))
    q_positions: (Q,) or (B, Q) absolute positions of the rows; a row attends keys at positions <= its own
    returns (B, H, Q, T) probabilities
    """
    B, H, Q, D = q.shape
    KVH, T = k.shape[1], k.shape[2]
    assert H % KVH == 0 and k.shape[0] == B and k.shape[3] == D, (q.shape, k.shape)
    rep = H // KVH
    qg = q.float().reshape(B, KVH, rep * Q, D)  # (B, KVH, rep*Q, D): heads of a KV group stacked
    logits = torch.matmul(qg, k.float().transpose(-1, -2)) * scaling  # (B, KVH, rep*Q, T)
    logits = logits.view(B, H, Q, T)
    future = torch.arange(T, device=q.device) > q_positions.to(q.device)[..., None]  # ([B,] Q, T)
    if future.dim() == 3:
        future = future[:, None]  # (B, 1, Q, T)
    logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(dim=-1)


def span_index(spans: Sequence[tuple[int, int]], length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(length,) long tensor: the chunk index of each token position, or len(spans) outside chunks.

    Spans are in prompt order and do not overlap (as `build_layout` makes them)."""
    bounds = torch.tensor(spans, dtype=torch.long).reshape(-1, 2)  # (N, 2)
    starts, ends = bounds[:, 0].contiguous(), bounds[:, 1].contiguous()
    assert bool(((starts >= 0) & (starts < ends) & (ends <= length)).all()), (spans, length)
    assert bool((starts[1:] >= ends[:-1]).all()), spans  # ordered, disjoint
    pos = torch.arange(length)
    chunk = torch.searchsorted(starts, pos, right=True) - 1  # the last span starting at or before pos
    inside = (chunk >= 0) & (pos < ends[chunk.clamp_min(0)])
    return torch.where(inside, chunk, len(spans)).to(device)


def chunk_mass(token_scores: torch.Tensor, index: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Sum token scores over each chunk's tokens: (..., T) -> (..., N)."""
    out = token_scores.new_zeros((*token_scores.shape[:-1], n_chunks + 1))
    out.index_add_(-1, index, token_scores)
    return out[..., :n_chunks]


def mask_outlier_tokens(token_scores: torch.Tensor, in_chunk: torch.Tensor, n_std: float = 2.0) -> torch.Tensor:
    """Zero chunk tokens whose score is below mean - n_std * std (over chunk tokens, per head).

    token_scores: (..., T); in_chunk: (T,) bool. Tokens outside chunks are left as they are.
    """
    vals = token_scores[..., in_chunk]  # (..., Tc)
    low = vals.mean(-1, keepdim=True) - n_std * vals.std(-1, keepdim=True)  # (..., 1)
    drop = (token_scores < low) & in_chunk
    return token_scores.masked_fill(drop, 0.0)


def normalise_per_window(scores: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Make scores of different windows comparable: divide each head's scores by the attention mass
    that head paid to all chunks of the window, times the number of chunks (1.0 = a uniform share).

    scores, raw: (L, H, N) -> (L, H, N)
    """
    total = raw.sum(-1, keepdim=True).clamp_min(1e-12)  # (L, H, 1)
    return scores / total * raw.shape[-1]


def aggregate(per_head: torch.Tensor, layers: Sequence[int], heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Sum the selected (layer, head) rows: per_head (L, H, N) with rows in `layers` order -> (N,)."""
    row = {layer: i for i, layer in enumerate(layers)}
    li = torch.tensor([row[l] for l, _ in heads], dtype=torch.long)
    hi = torch.tensor([h for _, h in heads], dtype=torch.long)
    return per_head[li, hi].sum(0)

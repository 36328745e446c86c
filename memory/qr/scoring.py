"""Pure tensor functions of QR scoring: query-row attention -> per-token mass -> per-chunk, per-head
scores -> calibration, outlier masking, head aggregation; and the heaviest token windows of each
chunk (evidence spans). No model code here."""

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
    with torch.autocast(q.device.type, enabled=False):  # float32 even inside an autocast region
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
    li = torch.tensor([row[l] for l, _ in heads], dtype=torch.long, device=per_head.device)
    hi = torch.tensor([h for _, h in heads], dtype=torch.long, device=per_head.device)
    return per_head[li, hi].sum(0)


def best_windows(mass: torch.Tensor, spans: torch.Tensor, width: int,
                 n_windows: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The heaviest windows of `width` consecutive tokens inside each chunk, disjoint, heaviest first.

    mass: (P,) per-token mass (non-negative); spans: (N, 2) long [start, end) token span of each chunk
    returns starts (N, K) long, widths (N,) long (min(width, chunk length)) and sums (N, K): each
    window's mass, -inf where a chunk has no K-th window disjoint from the earlier ones
    """
    assert mass.dim() == 1 and spans.dim() == 2 and spans.shape[1] == 2 and width >= 1, (mass.shape, spans.shape)
    P = mass.shape[0]
    start, end = spans[:, :1], spans[:, 1:]  # (N, 1)
    assert bool(((start >= 0) & (start < end) & (end <= P)).all()), spans
    w = (end - start).clamp_max(width)  # (N, 1)
    csum = torch.cat([mass.new_zeros(1), mass.cumsum(0)])  # (P + 1,): csum[t] = mass[:t].sum()
    t = torch.arange(P, device=mass.device)[None, :]  # (1, P): candidate window starts
    sums = csum[(t + w).clamp_max(P)] - csum[t]  # (N, P)
    sums = sums.masked_fill((t < start) | (t + w > end), float("-inf"))  # windows inside the chunk only
    starts, best = [], []
    for _ in range(n_windows):
        v, i = sums.max(-1)  # (N,)
        starts.append(i)
        best.append(v)
        sums = sums.masked_fill((t - i[:, None]).abs() < w, float("-inf"))  # overlaps window i
    return torch.stack(starts, 1), w[:, 0], torch.stack(best, 1)

"""Pure ranking functions shared by first-stage search and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DENSE_DECIMALS = 6  # cosine scores are kept to 1e-6: BLAS rounds the last bits by where a row sits


def dense_scores(matrix: np.ndarray, query_vec: np.ndarray) -> np.ndarray:
    """Inner products of unit-norm rows with a unit-norm query: (N, D) x (D,) -> (N,), rounded to
    1e-6 so that equal rows score exactly equal wherever they sit in the matrix (ties then break by
    conversation order, and an index grown row by row ranks as a fresh one)."""
    assert matrix.ndim == 2 and query_vec.ndim == 1 and matrix.shape[1] == query_vec.shape[0]
    return np.round(matrix @ query_vec, DENSE_DECIMALS)


def top_k(scores: np.ndarray, k: int, order: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest scores, best first. Ties, the k-th place included, go to the lower
    `order` key (default: the lower index), so the result never depends on where an item sits."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    key = np.arange(n) if order is None else order
    if k < n:
        kth = -np.partition(-scores, k - 1)[k - 1]  # the k-th highest score
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        part = np.concatenate([above, tied[np.argsort(key[tied], kind="stable")][: k - len(above)]])
    else:
        part = np.arange(n)
    return part[np.lexsort((key[part], -scores[part]))]


def rrf(rankings: Sequence[np.ndarray], n: int, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion: score[i] = sum over rankings of 1 / (k + rank of i), rank from 1.

    Each ranking is an array of item indices, best first; items absent from a ranking add nothing.
    """
    fused = np.zeros(n, dtype=np.float64)
    for ranking in rankings:
        fused[ranking] += 1.0 / (k + np.arange(1, len(ranking) + 1))
    return fused


def fuse_with_first_stage(scores: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """A reranker's scores of candidates that arrived in first-stage order, fused with that order:
    z-scored reranker scores plus `weight` times the z-scored -log(first-stage rank).

    (N,) -> (N,). `weight` 0 keeps the reranker's order; a large weight keeps the first stage's.
    Both parts are standardised per query, so the weight means the same for any reranker's scale."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"need a non-empty 1-d array of scores, got shape {s.shape}")
    if s.size == 1 or weight == 0:
        return s.copy()
    prior = -np.log(np.arange(1, s.size + 1, dtype=np.float64))  # first stage's rank 1 is best
    return _standardise(s) + weight * _standardise(prior)


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)

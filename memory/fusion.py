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

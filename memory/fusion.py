"""Pure ranking functions shared by first-stage search and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dense_scores(matrix: np.ndarray, query_vec: np.ndarray) -> np.ndarray:
    """Inner products of unit-norm rows with a unit-norm query: (N, D) x (D,) -> (N,)."""
    assert matrix.ndim == 2 and query_vec.ndim == 1 and matrix.shape[1] == query_vec.shape[0]
    return matrix @ query_vec


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties broken by lower index)."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        order = np.lexsort((part, -scores[part]))
        return part[order]
    return np.lexsort((np.arange(n), -scores))


def rrf(rankings: Sequence[np.ndarray], n: int, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion: score[i] = sum over rankings of 1 / (k + rank of i), rank from 1.

    Each ranking is an array of item indices, best first; items absent from a ranking add nothing.
    """
    fused = np.zeros(n, dtype=np.float64)
    for ranking in rankings:
        fused[ranking] += 1.0 / (k + np.arange(1, len(ranking) + 1))
    return fused

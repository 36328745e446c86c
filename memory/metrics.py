"""Metrics, in one place: ranking metrics (Recall@k, nDCG@k) over retrieved turn ids or over
candidate scores, and the LoCoMo answer F1. Pure functions; used by head detection and training
(memory/qr), the LoCoMo harness (agent/), the demos and the benchmarks.

LoCoMo answer F1 (Maharana et al., 2024, `task_eval/evaluation.py`):

- normalise: lower-case, drop punctuation, drop the articles a/an/the (and "and"), squeeze spaces;
- tokens are Porter-stemmed; F1 = harmonic mean of token precision and recall (bag of tokens);
- category 1 (multi-hop): the gold answer is a comma-separated list; each gold part is matched to its
  best comma-separated prediction part and the F1s are averaged;
- category 3 (open-domain): only the part of the gold answer before the first ';' counts;
- categories 2 (temporal) and 4 (single-hop): plain F1;
- category 5 (adversarial): 1 if the prediction says the information is not available, else 0.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# -- ranking ----------------------------------------------------------------------------------------


def recall_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Fraction of gold ids covered by the turn ids of the top-k retrieved chunks."""
    if not gold:
        raise ValueError("recall needs at least one gold id")
    covered = {tid for ids in retrieved[:k] for tid in ids}
    return sum(g in covered for g in gold) / len(gold)


def ndcg_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: a chunk is relevant if it covers a gold id not yet credited."""
    if not gold:
        raise ValueError("nDCG needs at least one gold id")
    remaining = set(gold)
    dcg = 0.0
    for rank, ids in enumerate(retrieved[:k], start=1):
        hit = remaining.intersection(ids)
        if hit:
            dcg += 1.0 / math.log2(rank + 1)
            remaining -= hit
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(gold), k) + 1))
    return dcg / ideal


def ranking_from_scores(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first along the last axis (ties: lower index first): (..., N) -> (..., N)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


def ndcg_from_scores(scores: Sequence[float] | np.ndarray, gold: Sequence[bool] | np.ndarray,
                     k: int = 10) -> np.ndarray | float:
    """Binary-relevance nDCG@k of the ranking by `scores` against per-candidate relevance `gold`.

    `scores` is (N,) or any (..., N) stack (e.g. one row per head: (L, H, N) -> (L, H)); 0 where no
    candidate is relevant."""
    gold = np.asarray(gold, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[-1]
    top = ranking_from_scores(scores)[..., :k]  # (..., k)
    discounts = 1.0 / np.log2(np.arange(2, min(k, n) + 2))  # (k,)
    ideal = discounts[: min(int(gold.sum()), k)].sum()
    dcg = (gold[top] * discounts).sum(-1)
    out = dcg / ideal if ideal else np.zeros_like(dcg)
    return float(out) if np.ndim(out) == 0 else out


def recall_from_scores(scores: Sequence[float] | np.ndarray, gold: Sequence[bool] | np.ndarray,
                       k: int = 5) -> float:
    """Fraction of the relevant candidates ranked in the top k by `scores` (one query)."""
    gold = np.asarray(gold, dtype=bool)
    if not gold.any():
        raise ValueError("recall needs at least one relevant candidate")
    return float(gold[ranking_from_scores(scores)[:k]].sum() / gold.sum())


# -- LoCoMo answer F1 -------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
ABSTAIN = ("no information available", "not mentioned")


@lru_cache(maxsize=1)
def _porter():
    import Stemmer

    return Stemmer.Stemmer("porter")


def normalize(text: str) -> str:
    text = str(text).lower().replace(",", " ").translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    return _porter().stemWords(normalize(text).split())


def f1(prediction: str, gold: str) -> float:
    p, g = tokens(prediction), tokens(gold)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    preds = [p.strip() for p in str(prediction).split(",") if p.strip()] or [""]
    golds = [g.strip() for g in str(gold).split(",") if g.strip()]
    if not golds:
        return 0.0
    return sum(max(f1(p, g) for p in preds) for g in golds) / len(golds)


def locomo_f1(prediction: str, gold: str | None, category: int) -> float:
    """The LoCoMo score of one answer by question category."""
    if category == 5:
        return float(any(phrase in str(prediction).lower() for phrase in ABSTAIN))
    gold = "" if gold is None else str(gold)
    if category == 1:
        return multi_answer_f1(prediction, gold)
    if category == 3:
        gold = gold.split(";")[0]
    return f1(prediction, gold)

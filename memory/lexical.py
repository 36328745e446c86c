"""BM25 over a user's chunks (bm25s), with English stop words and Snowball stemming."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_TOKEN = re.compile(r"\w\w+", re.UNICODE)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of 2+ characters, stop words dropped, Snowball-stemmed."""
    stop = _stopwords()
    words = [w for w in _TOKEN.findall(text.lower()) if w not in stop]
    return _stemmer().stemWords(words)


class BM25Index:
    """An Okapi BM25 index over a fixed list of texts; `scores(query)` gives one score per text."""

    def __init__(self, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
                 method: str = "lucene") -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG on import; let the application's config decide.
        logging.getLogger("bm25s").setLevel(logging.NOTSET)

        self.size = len(texts)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method=method)
        corpus = [tokenize(t) for t in texts]
        # A corpus with no indexable word at all (e.g. only "0" or emoji) has nothing to match.
        self._empty = not any(corpus)
        if not self._empty:
            self._bm25.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """(N,) float32 BM25 scores; all zero when no query term is in the index."""
        tokens = tokenize(query)
        if not tokens or self._empty:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

"""BM25 over a user's chunks, incremental: chunks are added and removed without rebuilding, and the
scores always equal those of a fresh Okapi BM25 index (Lucene variant, as bm25s computes it) over the
chunks alive now, because the collection statistics (N, document frequencies, average length) are
kept current and applied at query time. English stop words, Snowball stemming."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
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


class _Grow:
    """A numpy array that grows by doubling (amortised O(1) appends); `view` is the filled part."""

    def __init__(self, dtype: str, capacity: int = 16) -> None:
        self.data = np.zeros(max(capacity, 16), dtype=dtype)
        self.n = 0

    def extend(self, values: Sequence | np.ndarray) -> None:
        values = np.asarray(values, dtype=self.data.dtype)
        need = self.n + len(values)
        if need > len(self.data):
            grown = np.zeros(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n: need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


class BM25Index:
    """Okapi BM25 over slots 0..n-1 (one per text added, in order); removed slots score 0.

    `scores(query)` gives one float32 score per slot. Postings are per term: slot ids and term
    frequencies in growable arrays, so adding a text costs O(its tokens)."""

    def __init__(self, texts: Iterable[str] = (), *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._vocab: dict[str, int] = {}
        self._docs: list[_Grow] = []  # per term: slots holding it
        self._tfs: list[_Grow] = []  # per term: its frequency in each of those slots
        self._df = _Grow("int64")  # per term: alive slots holding it
        self._length = _Grow("float32")  # per slot: number of tokens
        self._alive = _Grow("bool")
        self._n_alive = 0
        self._total_length = 0.0  # of alive slots
        self._postings = 0
        self.add(texts)

    @property
    def size(self) -> int:
        """Number of slots (alive or removed)."""
        return self._length.n

    @property
    def nbytes(self) -> int:
        """About the memory held (O(1)): postings, per-term and per-slot arrays, the vocabulary."""
        return 12 * self._postings + 250 * len(self._vocab) + 13 * self.size

    def add(self, texts: Iterable[str]) -> None:
        """Append one slot per text: O(their tokens), one array append per term touched."""
        first = self.size
        tids: list[int] = []
        slots: list[int] = []
        freqs: list[int] = []
        lengths: list[int] = []
        for offset, text in enumerate(texts):
            counts = Counter(tokenize(text))
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                tid = self._vocab.setdefault(term, len(self._vocab))
                tids.append(tid)
                slots.append(first + offset)
                freqs.append(tf)
        new_terms = len(self._vocab) - len(self._docs)
        self._docs += [_Grow("int32", 4) for _ in range(new_terms)]
        self._tfs += [_Grow("float32", 4) for _ in range(new_terms)]
        self._df.extend(np.zeros(new_terms, dtype=np.int64))
        if tids:
            t = np.asarray(tids)
            order = np.argsort(t, kind="stable")  # group the postings by term, slots ascending
            t, slot, tf = t[order], np.asarray(slots)[order], np.asarray(freqs)[order]
            terms, starts = np.unique(t, return_index=True)
            ends = np.append(starts[1:], len(t))
            for tid, lo, hi in zip(terms.tolist(), starts.tolist(), ends.tolist(), strict=True):
                self._docs[tid].extend(slot[lo:hi])
                self._tfs[tid].extend(tf[lo:hi])
            np.add.at(self._df.data, t, 1)
            self._postings += len(t)
        self._length.extend(lengths)
        self._alive.extend(np.ones(len(lengths), dtype=bool))
        self._n_alive += len(lengths)
        self._total_length += float(sum(lengths))

    def remove(self, slots: Iterable[int], texts: Iterable[str]) -> None:
        """Mark slots removed; `texts` are their texts (to take their terms out of the statistics)."""
        for slot, text in zip(slots, texts, strict=True):
            if not self._alive.data[slot]:
                continue
            self._alive.data[slot] = False
            for term in set(tokenize(text)):
                self._df.data[self._vocab[term]] -= 1
            self._n_alive -= 1
            self._total_length -= float(self._length.data[slot])

    def scores(self, query: str) -> np.ndarray:
        """(size,) float32 BM25 scores; all zero when no query term is in the index."""
        out = np.zeros(self.size, dtype=np.float32)
        if self._n_alive == 0:
            return out
        n, avg = self._n_alive, self._total_length / self._n_alive
        length = self._length.view
        for term in tokenize(query):  # a repeated query term counts again, as in bm25s
            tid = self._vocab.get(term)
            if tid is None:
                continue
            df = float(self._df.data[tid])
            if df <= 0:
                continue
            docs, tf = self._docs[tid].view, self._tfs[tid].view
            idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
            norm = self.k1 * (1.0 - self.b + self.b * length[docs] / avg) if avg > 0 else self.k1
            out[docs] += (idf * tf / (tf + norm)).astype(np.float32)
        out[~self._alive.view] = 0.0
        return out

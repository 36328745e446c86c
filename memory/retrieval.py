"""First-stage recall: per-user indexes (dense matrix + BM25), cached in the process and rebuilt when
the user's store revision changes (any process's write), and the three search modes: dense, BM25, and
hybrid (reciprocal-rank fusion of both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from store import ChunkRecord, InputError, Store
from store.redact import get_logger

from .embedders import Embedder
from .filters import SearchFilter
from .fusion import dense_scores, rrf, top_k
from .lexical import BM25Index

log = get_logger(__name__)

SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
DEFAULT_RERANK_K = 20  # first-stage candidates the reranker sees (see README: QRRanker figures)


def index_text(chunk: ChunkRecord | None = None, *, text: str = "", date: str | None = None) -> str:
    """What the first stage indexes for a chunk: its session date, then its text."""
    if chunk is not None:
        text, date = chunk.text, chunk.session_date
    return f"[{date}] {text}" if date else text


@dataclass
class UserIndex:
    """Per-user search state, valid for one store revision of that user."""

    revision: int
    chunks: list[ChunkRecord]
    matrix: np.ndarray | None = None  # (N, D) unit-norm float32, rows aligned with chunks
    bm25: BM25Index | None = None


class Retriever:
    """The first stage over one store: `search(user, query, k, mode)` -> [(chunk, score)], best first."""

    def __init__(self, store: Store, embedder: Callable[[], Embedder], rrf_k: int = 10) -> None:
        self.store = store
        self._embedder = embedder  # called when first needed: the model loads lazily
        self.rrf_k = rrf_k
        self._indexes: dict[str, UserIndex] = {}

    def forget(self, user_id: str) -> None:
        """Drop a user's cached index (this process wrote to the user)."""
        self._indexes.pop(user_id, None)

    def index(self, user_id: str) -> UserIndex:
        revision = self.store.revision(user_id)
        if revision is None:
            return UserIndex(-1, [])
        cached = self._indexes.get(user_id)
        if cached is None or cached.revision != revision:
            revision, chunks = self.store.chunks_at_revision(user_id)  # one snapshot
            if revision is None:
                return UserIndex(-1, [])
            cached = UserIndex(revision, chunks)
            self._indexes[user_id] = cached
        return cached

    def search(self, user_id: str, query: str, k: int, mode: str,
               flt: SearchFilter | None = None) -> list[tuple[ChunkRecord, float]]:
        index = self.index(user_id)
        n = len(index.chunks)
        if n == 0:
            return []
        if mode == "dense":
            scores = self._dense(index, query)
        elif mode == "bm25":
            scores = self._bm25(index).scores(query)
        else:
            dense = top_k(self._dense(index, query), n)
            lexical = self._bm25(index).scores(query)
            lexical_order = top_k(lexical, n)[: int(np.count_nonzero(lexical))]
            scores = rrf([dense, lexical_order], n, self.rrf_k)
        order = top_k(scores, k) if flt is None else flt.top_k(scores, k, index.chunks)
        return [(index.chunks[i], float(scores[i])) for i in order]

    def _dense(self, index: UserIndex, query: str) -> np.ndarray:
        embedder = self._embedder()
        if index.matrix is None:
            index.matrix = self._load_matrix(index, embedder)
        q = embedder.embed([query])[0]
        if q.shape[0] != index.matrix.shape[1]:
            raise InputError(f"query vector has {q.shape[0]} dims but stored vectors have "
                             f"{index.matrix.shape[1]}")
        return dense_scores(index.matrix, q)

    def _load_matrix(self, index: UserIndex, embedder: Embedder) -> np.ndarray:
        """The user's vectors from `embedder`, read from the store (searching never writes). Chunks
        without one: embedded in this process when `embedder` is the store's own (a store written
        before its embedder was recorded, say), refused for any other embedder."""
        user_id = index.chunks[0].user_id
        stored = self.store.embeddings(user_id, embedder.name)
        missing = [c for c in index.chunks if c.chunk_id not in stored]
        if missing:
            own = self.store.default_embedder()
            if embedder.name != own:
                raise InputError(
                    f"{len(missing)} of the {len(index.chunks)} chunks of user {user_id!r} have no vector "
                    f"from the embedder {embedder.name!r} (this store keeps {own!r}); search without "
                    f"--embedder, or store them first with `qrmem reindex --embedder {embedder.name}`")
            log.warning("%d chunks of %s have no %s vector; embedding them for this process only "
                        "(`qrmem reindex` stores them)", len(missing), user_id, embedder.name)
            vecs = embedder.embed([index_text(c) for c in missing])
            stored.update({c.chunk_id: v for c, v in zip(missing, vecs, strict=True)})
        return np.stack([stored[c.chunk_id] for c in index.chunks]).astype(np.float32, copy=False)

    @staticmethod
    def _bm25(index: UserIndex) -> BM25Index:
        if index.bm25 is None:
            index.bm25 = BM25Index([index_text(c) for c in index.chunks])
        return index.bm25

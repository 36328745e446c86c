"""First-stage recall: per-user indexes (dense matrix + BM25) kept in the process and brought up to
date incrementally, and the three search modes: dense, BM25, and hybrid (reciprocal-rank fusion).

A user's index follows the user's store revision (bumped by any process's write). When it changes,
the index reads only what changed (`Store.index_changes`, from the store's change log: the chunks
added since its revision, with their vectors, and the chunk ids deleted) and appends or removes rows, so a search after a
write costs about what the write added, not the user's whole history. Removed rows stay as dead
slots until they are a quarter of the index, then it is rebuilt. Results equal those of a fresh
index: BM25 statistics are kept current, ties break by conversation order, never by slot.

Indexes of many users share a byte budget (`IndexCache`, least recently used out first). A Retriever
may be shared by threads (`qrmem serve`): one user's index is updated and read under that user's
lock (one of a fixed set of stripes), the cache under its own.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from store import ChunkRecord, IndexChanges, InputError, Store
from store.redact import get_logger
from store.types import check_key

from .embedders import Embedder
from .filters import SearchFilter
from .fusion import dense_scores, rrf, top_k
from .lexical import BM25Index, _Grow

log = get_logger(__name__)

SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
DEFAULT_RERANK_K = 20  # first-stage candidates the reranker sees (see README: QRRanker figures)
DEFAULT_INDEX_BYTES = 1 << 30  # in-process index budget across users (1 GiB)
_ORDER_SCALE = 1 << 40  # conversation order key = session position * scale + chunk id


def index_text(chunk: ChunkRecord | None = None, *, text: str = "", date: str | None = None) -> str:
    """What the first stage indexes for a chunk: its session date, then its text."""
    if chunk is not None:
        text, date = chunk.text, chunk.session_date
    return f"[{date}] {text}" if date else text


@dataclass
class UserIndex:
    """One user's search state at one store revision: slots (chunks, alive or removed) aligned
    with the rows of the dense matrix and the BM25 index."""

    revision: int
    chunks: list[ChunkRecord | None] = field(default_factory=list)  # None: removed slot
    slot_of: dict[int, int] = field(default_factory=dict)  # chunk id -> slot
    order: _Grow = field(default_factory=lambda: _Grow("int64"))  # conversation-order key per slot
    alive: _Grow = field(default_factory=lambda: _Grow("bool"))
    model: str | None = None  # whose vectors `matrix` holds
    matrix: np.ndarray | None = None  # (capacity, D) float32 unit-norm rows; the first `len(chunks)` used
    bm25: BM25Index | None = None
    text_bytes: int = 0

    @property
    def n_alive(self) -> int:
        return len(self.slot_of)

    @property
    def nbytes(self) -> int:
        """About the memory held, in O(1)."""
        n = len(self.chunks)
        return (self.text_bytes + 200 * n + self.order.nbytes + self.alive.nbytes
                + (self.matrix.nbytes if self.matrix is not None else 0)
                + (self.bm25.nbytes if self.bm25 is not None else 0))

    def live(self) -> list[ChunkRecord]:
        return [c for c in self.chunks if c is not None]

    def add(self, chunks: list[ChunkRecord]) -> None:
        first = len(self.chunks)
        self.chunks += chunks
        for i, c in enumerate(chunks):
            self.slot_of[c.chunk_id] = first + i
        self.order.extend([c.session_position * _ORDER_SCALE + c.chunk_id for c in chunks])
        self.alive.extend(np.ones(len(chunks), dtype=bool))
        self.text_bytes += sum(len(c.text) for c in chunks)
        if self.bm25 is not None:
            self.bm25.add([index_text(c) for c in chunks])

    def remove(self, chunk_ids: list[int]) -> None:
        slots = [s for s in (self.slot_of.pop(pk, None) for pk in chunk_ids) if s is not None]
        if self.bm25 is not None:
            self.bm25.remove(slots, [index_text(self.chunks[s]) for s in slots])
        for s in slots:
            self.text_bytes -= len(self.chunks[s].text)
            self.chunks[s] = None
            self.alive.data[s] = False


class IndexCache:
    """Users' indexes under one byte budget, least recently used out first. Sizes are accounted
    when an index changes (`update`), so a search costs O(1) here whatever the number of users."""

    def __init__(self, budget_bytes: int = DEFAULT_INDEX_BYTES) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise InputError(f"index_cache_bytes must be an integer >= 0, got {budget_bytes!r}")
        self.budget = budget_bytes
        self._items: OrderedDict[str, tuple[UserIndex, int]] = OrderedDict()  # user -> (index, bytes)
        self.nbytes = 0
        self.evictions = 0
        self._lock = threading.Lock()

    def get(self, user_id: str) -> UserIndex | None:
        with self._lock:
            item = self._items.get(user_id)
            if item is None:
                return None
            self._items.move_to_end(user_id)
            return item[0]

    def update(self, user_id: str, index: UserIndex) -> None:
        """Account `index` (new or changed) as the user's, most recently used, then keep the budget
        by dropping the least recently used others."""
        size = index.nbytes
        with self._lock:
            old = self._items.pop(user_id, None)
            self._items[user_id] = (index, size)
            self.nbytes += size - (old[1] if old else 0)
            for user in list(self._items):
                if self.nbytes <= self.budget or user == user_id:
                    break
                self.nbytes -= self._items.pop(user)[1]
                self.evictions += 1

    def pop(self, user_id: str) -> None:
        with self._lock:
            item = self._items.pop(user_id, None)
            if item is not None:
                self.nbytes -= item[1]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"users": len(self._items), "bytes": self.nbytes, "budget_bytes": self.budget,
                    "evictions": self.evictions}


class Retriever:
    """The first stage over one store: `search(user, query, k, mode)` -> [(chunk, score)], best first."""

    def __init__(self, store: Store, embedder: Callable[[], Embedder], rrf_k: int = 10,
                 cache: IndexCache | None = None) -> None:
        self.store = store
        self._embedder = embedder  # called when first needed: the model loads lazily
        self.rrf_k = rrf_k
        self.cache = cache if cache is not None else IndexCache()
        self._stripes = [threading.Lock() for _ in range(64)]

    def _lock(self, user_id: str) -> threading.Lock:
        return self._stripes[zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % len(self._stripes)]

    def forget(self, user_id: str) -> None:
        """Drop a user's index (a full reload follows; normal writes need no call: see `index`)."""
        self.cache.pop(user_id)

    def index(self, user_id: str) -> UserIndex | None:
        """The user's index at the store's current revision (None: no such user)."""
        with self._lock(user_id):
            return self._refresh(user_id)

    def _refresh(self, user_id: str) -> UserIndex | None:
        revision = self.store.revision(user_id)
        if revision is None:
            self.cache.pop(user_id)
            return None
        index = self.cache.get(user_id)
        if index is not None and index.revision == revision:
            return index
        if index is not None and len(index.chunks) - index.n_alive <= max(64, len(index.chunks) // 4):
            changes = self.store.index_changes(user_id, index.revision, index.model)
            if changes.revision is None:
                self.cache.pop(user_id)
                return None
            if not changes.full:
                self._apply(index, changes)
                self.cache.update(user_id, index)
                return index
        revision, chunks = self.store.chunks_at_revision(user_id)  # one snapshot
        if revision is None:
            return None
        index = UserIndex(revision)
        index.add(chunks)
        self.cache.update(user_id, index)
        return index

    def _apply(self, index: UserIndex, changes: IndexChanges) -> None:
        """Removals first (SQLite may give a new chunk the id of a deleted one), then additions."""
        index.remove(changes.removed)
        added = [c for c in changes.added if c.chunk_id not in index.slot_of]
        first = len(index.chunks)
        index.add(added)
        if index.matrix is not None and added:
            vecs = self._vectors(index.model, added, changes.vectors)
            need = len(index.chunks)
            if need > index.matrix.shape[0]:
                grown = np.zeros((max(need, 2 * index.matrix.shape[0]), index.matrix.shape[1]), dtype=np.float32)
                grown[:first] = index.matrix[:first]
                index.matrix = grown
            index.matrix[first:need] = vecs
        index.revision = changes.revision

    def search(self, user_id: str, query: str, k: int, mode: str,
               flt: SearchFilter | None = None) -> list[tuple[ChunkRecord, float]]:
        check_key(user_id, "user id")  # before any work (and before choosing its lock)
        q = self._embedder().embed([query])[0] if mode != "bm25" else None  # outside the lock
        with self._lock(user_id):
            return self._search(user_id, query, q, k, mode, flt)

    def _search(self, user_id: str, query: str, q: np.ndarray | None, k: int, mode: str,
                flt: SearchFilter | None) -> list[tuple[ChunkRecord, float]]:
        index = self._refresh(user_id)
        if index is None or index.n_alive == 0:
            return []
        n, alive, order = len(index.chunks), index.alive.view, index.order.view
        before = (index.matrix is not None, index.bm25 is not None)
        if mode == "dense":
            scores = np.where(alive, self._dense(index, q), -np.inf)
        elif mode == "bm25":
            scores = np.where(alive, self._bm25(index).scores(query), -np.inf)
        else:
            dense = top_k(np.where(alive, self._dense(index, q), -np.inf), index.n_alive, order)
            lexical = self._bm25(index).scores(query)  # removed slots score 0
            lexical_order = top_k(lexical, n, order)[: int(np.count_nonzero(lexical))]
            scores = np.where(alive, rrf([dense, lexical_order], n, self.rrf_k), -np.inf)
        if before != (index.matrix is not None, index.bm25 is not None):
            self.cache.update(user_id, index)  # a matrix or BM25 index was built just now
        if flt is None:
            picked = top_k(scores, min(k, index.n_alive), order)
        else:
            keep = flt.mask(index.chunks) & alive
            picked = top_k(np.where(keep, scores, -np.inf), min(k, int(keep.sum())), order)
        return [(index.chunks[i], float(scores[i])) for i in picked]

    def _dense(self, index: UserIndex, q: np.ndarray) -> np.ndarray:
        embedder = self._embedder()
        if index.matrix is None or index.model != embedder.name:
            live = index.live()
            stored = self.store.embeddings(live[0].user_id, embedder.name) if live else {}
            vecs = self._vectors(embedder.name, live, stored)
            # Headroom: the next writes append rows without copying the matrix.
            rows = len(index.chunks) + len(index.chunks) // 8 + 16
            matrix = np.zeros((rows, vecs.shape[1] if len(vecs) else 1), dtype=np.float32)
            matrix[[index.slot_of[c.chunk_id] for c in live]] = vecs
            index.matrix, index.model = matrix, embedder.name
        if q.shape[0] != index.matrix.shape[1]:
            raise InputError(f"query vector has {q.shape[0]} dims but stored vectors have "
                             f"{index.matrix.shape[1]}")
        return dense_scores(index.matrix[: len(index.chunks)], q)

    def _vectors(self, model: str, chunks: list[ChunkRecord], stored: dict[int, np.ndarray]) -> np.ndarray:
        """(len(chunks), D) vectors from `model`, read from the store (searching never writes).
        Chunks without one: embedded in this process when `model` is the store's own (a store
        written before its embedder was recorded, say), refused for any other embedder."""
        missing = [c for c in chunks if c.chunk_id not in stored]
        if missing:
            own = self.store.default_embedder()
            user_id = missing[0].user_id
            if model != own:
                raise InputError(
                    f"{len(missing)} of the {len(chunks)} chunks of user {user_id!r} have no vector "
                    f"from the embedder {model!r} (this store keeps {own!r}); search without "
                    f"--embedder, or store them first with `qrmem reindex --embedder {model}`")
            log.warning("%d chunks of %s have no %s vector; embedding them for this process only "
                        "(`qrmem reindex` stores them)", len(missing), user_id, model)
            vecs = self._embedder().embed([index_text(c) for c in missing])
            stored = {**stored, **{c.chunk_id: v for c, v in zip(missing, vecs, strict=True)}}
        if not chunks:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([stored[c.chunk_id] for c in chunks]).astype(np.float32, copy=False)

    @staticmethod
    def _bm25(index: UserIndex) -> BM25Index:
        if index.bm25 is None:
            index.bm25 = BM25Index()
            texts = [index_text(c) if c is not None else "" for c in index.chunks]
            index.bm25.add(texts)
            index.bm25.remove([s for s, c in enumerate(index.chunks) if c is None],
                              ["" for c in index.chunks if c is None])
        return index.bm25

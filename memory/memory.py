"""`Memory`: the facade a chatbot developer uses: add sessions, search, list, delete, export, import."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from store import (
    AddResult,
    CheckReport,
    Chunker,
    ChunkRecord,
    DeleteResult,
    InputError,
    QrmemError,
    SessionConflictError,
    SessionIn,
    SessionInfo,
    Store,
    SummaryRecord,
    TurnIn,
    UserInfo,
    load_file,
    make_chunker,
    parse_obj,
)

from .embedders import Embedder, load_embedder
from .filters import SearchFilter
from .fusion import dense_scores, rrf, top_k
from .lexical import BM25Index
from .rerankers import Reranker, load_reranker
from .summaries import Summarizer, catch_up
from .types import IngestReport, SearchHit

log = logging.getLogger(__name__)

SearchMode = Literal["hybrid", "dense", "bm25"]
SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
EMBED_GROUP = 256  # chunks embedded together across sessions on ingest
DEFAULT_RERANK_K = 20  # first-stage candidates the reranker sees (see README: QRRanker figures)


def index_text(chunk: ChunkRecord | None = None, *, text: str = "", date: str | None = None) -> str:
    """What the first stage indexes for a chunk: its session date, then its text."""
    if chunk is not None:
        text, date = chunk.text, chunk.session_date
    return f"[{date}] {text}" if date else text


@dataclass
class _UserIndex:
    """Per-user search state, valid for one store revision of that user."""

    revision: int
    chunks: list[ChunkRecord]
    matrix: np.ndarray | None = None  # (N, D) unit-norm float32, rows aligned with chunks
    bm25: BM25Index | None = None


class Memory:
    """Long-term conversational memory on a SQLite file or any SQLAlchemy URL.

    >>> mem = Memory("memory.db")
    >>> mem.add_session("alice", [{"speaker": "alice", "text": "My cat is called Miso."}])
    >>> mem.search("alice", "what is the cat's name?")[0].text
    'alice: My cat is called Miso.'
    """

    def __init__(self, db: str | os.PathLike[str] | Store | None = None, *,
                 embedder: Embedder | str | None = None, chunker: Chunker | str = "turn",
                 first_stage: SearchMode = "hybrid", rrf_k: int = 10,
                 reranker: Reranker | str | None = None, rerank_k: int = DEFAULT_RERANK_K,
                 summarizer: Summarizer | None = None,
                 rerank_context: Literal["date", "summary", "none"] = "date",
                 secure_delete: bool = False) -> None:
        if first_stage not in SEARCH_MODES:
            raise InputError(f"unknown first stage {first_stage!r}; choose one of {SEARCH_MODES}")
        self.store = db if isinstance(db, Store) else Store(db, secure_delete=secure_delete)
        self._embedder_spec = embedder
        self._embedder: Embedder | None = embedder if isinstance(embedder, Embedder) else None
        self.chunker = make_chunker(chunker) if isinstance(chunker, str) else chunker
        self.first_stage = first_stage
        self.rrf_k = rrf_k
        if rerank_k < 1:
            raise InputError(f"rerank_k must be >= 1, got {rerank_k}")
        self.rerank_k = rerank_k
        self._reranker_spec = reranker
        self._reranker: Reranker | None = reranker if isinstance(reranker, Reranker) else None
        self.summarizer = summarizer
        if rerank_context not in ("date", "summary", "none"):
            raise InputError(f"rerank_context must be date, summary or none, got {rerank_context!r}")
        self.rerank_context = rerank_context
        self._index: dict[str, _UserIndex] = {}

    @property
    def embedder(self) -> Embedder:
        """The embedder, created on first use (the model itself loads on first embedding)."""
        if self._embedder is None:
            spec = self._embedder_spec if isinstance(self._embedder_spec, str) else None
            if spec is None:
                # Keep using the model the store was built with, when there is exactly one.
                stored = list(self.store.embedding_models())
                spec = stored[0] if len(stored) == 1 else None
            self._embedder = load_embedder(spec)
        return self._embedder

    @property
    def reranker(self) -> Reranker:
        """The reranker for `search(rerank=True)`: the one given, else the embedded QRRanker
        (loaded on first use)."""
        if self._reranker is None:
            spec = self._reranker_spec if isinstance(self._reranker_spec, str) else "qr"
            self._reranker = load_reranker(spec)
        return self._reranker

    # -- writing ----------------------------------------------------------------------------------

    def add_session(self, user_id: str, turns: Sequence[TurnIn | Mapping[str, Any]], *,
                    session_id: str | None = None, date: str | None = None,
                    replace: bool = False, summarize: bool = True) -> AddResult:
        """Store one session of turns (dicts with speaker, text and optional time/id) for a user."""
        try:
            session = SessionIn.model_validate({
                "user_id": user_id, "session_id": uuid.uuid4().hex[:12] if session_id is None else session_id,
                "date": date, "turns": turns})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(err["msg"], field=".".join(map(str, err["loc"])) or None) from None
        return self.add_sessions([session], replace=replace, summarize=summarize).results[0]

    def add_sessions(self, sessions: Sequence[SessionIn], *, replace: bool = False,
                     progress: bool = False, summarize: bool = True) -> IngestReport:
        """Store many validated sessions; each is one transaction. Conflicts abort before any write."""
        statuses = [self.store.session_status(s) for s in sessions]
        conflicts = [s for s, st in zip(sessions, statuses, strict=True) if st == "conflict"]
        if conflicts and not replace:
            names = ", ".join(f"{s.user_id}/{s.session_id}" for s in conflicts[:5])
            raise SessionConflictError(
                f"{len(conflicts)} session(s) already stored with different content ({names}); "
                "nothing was written; pass --replace (replace=True) to overwrite them")
        report = IngestReport()
        todo = []
        for s, st in zip(sessions, statuses, strict=True):
            if st == "unchanged":
                report.results.append(AddResult(s.user_id, s.session_id, "unchanged"))
            else:
                todo.append(s)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="sessions", desc="ingest", disable=not progress)
        for group in _groups(todo, EMBED_GROUP):
            chunked = [self.chunker.chunk(s.turns) for s in group]
            texts = [index_text(text=c.text, date=s.date) for s, cs in zip(group, chunked, strict=True)
                     for c in cs]
            t0 = time.perf_counter()
            vectors = self.embedder.embed(texts)
            report.embed_seconds += time.perf_counter() - t0
            offset = 0
            t0 = time.perf_counter()
            for s, cs in zip(group, chunked, strict=True):
                result = self.store.add_session(
                    s, cs, chunker=self.chunker.spec, embedding_model=self.embedder.name,
                    vectors=vectors[offset:offset + len(cs)], replace=replace)
                offset += len(cs)
                report.results.append(result)
                self._index.pop(s.user_id, None)
                bar.update(1)
            report.write_seconds += time.perf_counter() - t0
            if self.summarizer is not None and summarize:
                t0 = time.perf_counter()
                for s in group:
                    self._summarize_safely(s.user_id, s.session_id)
                report.summary_seconds += time.perf_counter() - t0
        bar.close()
        return report

    def _summarize_safely(self, user_id: str, session_id: str) -> None:
        """Summaries are derived data: a failure is logged, the stored session stays, and
        `summarize()` (`qrmem summarize`) can compute them later (so can the next ingest: it
        catches up on everything pending, in order)."""
        try:
            catch_up(self.store, self.summarizer, user_id)
        except (QrmemError, RuntimeError, OSError) as exc:
            log.warning("summary of %s/%s failed (%s); the session is stored, run `qrmem summarize "
                        "--user %s` to retry", user_id, session_id, exc, user_id)

    def summarize(self, user_id: str, *, redo: bool = False) -> int:
        """Compute missing session summaries in order, rolling the conversation summary forward
        (with `redo`, recompute every session and restart the conversation summary). Returns the
        number of sessions summarised."""
        if self.summarizer is None:
            raise InputError("this Memory has no summarizer; pass summarizer=Summarizer(generator)")
        return catch_up(self.store, self.summarizer, user_id, redo=redo)

    def summaries(self, user_id: str) -> list[SummaryRecord]:
        """The latest summary of each session and of the whole conversation."""
        return self.store.summaries(user_id)

    def ingest_file(self, path: str | os.PathLike[str], *, fmt: str = "auto", replace: bool = False,
                    progress: bool = False) -> IngestReport:
        """Validate a whole LoCoMo / qrmem / JSONL file, then store it session by session."""
        return self.add_sessions(load_file(path, fmt), replace=replace, progress=progress)

    def import_user(self, data: Any, *, replace: bool = False, source: str = "<import>") -> IngestReport:
        """Import memory exported by `export_user` (the qrmem chat-log format)."""
        return self.add_sessions(parse_obj(data, source, "qrmem"), replace=replace)

    # -- reading ----------------------------------------------------------------------------------

    def users(self) -> list[UserInfo]:
        return self.store.users()

    def sessions(self, user_id: str) -> list[SessionInfo]:
        return self.store.sessions(user_id)

    def delete_session(self, user_id: str, session_id: str) -> DeleteResult:
        """Delete a session (turns, chunks, vectors, its summary). The conversation summary is
        rolled back to before the session; with a summarizer the later sessions are rolled in
        again at once, otherwise `qrmem summarize` does it (`result.needs_resummarize`)."""
        result = self.store.delete_session(user_id, session_id)
        self._index.pop(user_id, None)
        if result.needs_resummarize and self.summarizer is not None:
            self._summarize_safely(user_id, session_id)
        return result

    def delete_user(self, user_id: str) -> DeleteResult:
        result = self.store.delete_user(user_id)
        self._index.pop(user_id, None)
        return result

    def check(self) -> CheckReport:
        """Integrity check of the store (see `Store.check`)."""
        return self.store.check()

    def export_user(self, user_id: str) -> dict[str, Any]:
        return self.store.export_user(user_id)

    def export_to(self, user_id: str, path: str | os.PathLike[str]) -> Path:
        """Write a user's memory as JSON, readable by the owner only (0600)."""
        path = Path(path)
        data = json.dumps(self.export_user(user_id), ensure_ascii=False, indent=1)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
        return path

    def info(self) -> dict[str, Any]:
        return {"db": self.store.safe_url, **self.store.counts().as_dict(),
                "embedding_models": self.store.embedding_models()}

    # -- search -----------------------------------------------------------------------------------

    def search(self, user_id: str, query: str, k: int = 10, *, mode: SearchMode | None = None,
               rerank: bool = False, rerank_k: int | None = None,
               session_ids: Iterable[str] | None = None, after: date | str | None = None,
               before: date | str | None = None) -> list[SearchHit]:
        """The user's `k` best chunks for `query`, best first (first stage: hybrid by default).

        Filters (see `memory.filters`): only chunks of `session_ids`, and only sessions dated on or
        after `after` / on or before `before` (days, inclusive; undated or unparseable session dates
        are left out when a bound is given). They mask the candidates before top-k.

        With `rerank`, the first-stage top `rerank_k` (default `self.rerank_k`) are reranked
        listwise by `self.reranker`, and the best `k` of them are returned with the reranker's
        scores. Memory context per `rerank_context`: `date` (each chunk's session date), `summary`
        (each chunk's session summary, else its date, plus the conversation summary) or `none`.
        """
        flt = SearchFilter.build(session_ids, after, before)
        if rerank:
            pool = rerank_k or self.rerank_k
            _check_count(pool, "rerank_k")
            first = self.search(user_id, query, k=max(pool, 1), mode=mode, session_ids=session_ids,
                                after=after, before=before)
            if not first:
                return []
            contexts, summary = self._rerank_context(user_id, first)
            ranked = self.reranker.rank(query, [h.text for h in first], contexts=contexts, summary=summary)
            return [replace(first[r.index], rank=r.rank, score=r.score) for r in ranked.top_k(k)]
        mode = mode or self.first_stage
        if mode not in SEARCH_MODES:
            raise InputError(f"unknown search mode {mode!r}; choose one of {SEARCH_MODES}")
        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("query is not valid Unicode (it holds a lone surrogate)") from None
        _check_count(k, "k")
        index = self._user_index(user_id)
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
        return [_hit(index.chunks[i], float(scores[i]), r) for r, i in enumerate(order, start=1)]

    def _rerank_context(self, user_id: str, hits: list[SearchHit]) -> tuple[list[str | None] | None, str | None]:
        if self.rerank_context == "none":
            return None, None
        if self.rerank_context == "date":
            return [h.session_date for h in hits], None
        latest = {(s.kind, s.session_id): s.text for s in self.store.summaries(user_id)}
        contexts = [latest.get(("session", h.session_id), h.session_date) for h in hits]
        return contexts, latest.get(("conversation", None))

    def _user_index(self, user_id: str) -> _UserIndex:
        revision = self.store.revision(user_id)
        if revision is None:
            return _UserIndex(-1, [])
        cached = self._index.get(user_id)
        if cached is None or cached.revision != revision:
            revision, chunks = self.store.chunks_at_revision(user_id)  # one snapshot
            if revision is None:
                return _UserIndex(-1, [])
            cached = _UserIndex(revision, chunks)
            self._index[user_id] = cached
        return cached

    def _dense(self, index: _UserIndex, query: str) -> np.ndarray:
        if index.matrix is None:
            index.matrix = self._load_matrix(index)
        q = self.embedder.embed([query])[0]
        if q.shape[0] != index.matrix.shape[1]:
            raise InputError(f"query vector has {q.shape[0]} dims but stored vectors have "
                             f"{index.matrix.shape[1]}")
        return dense_scores(index.matrix, q)

    def _load_matrix(self, index: _UserIndex) -> np.ndarray:
        user_id = index.chunks[0].user_id
        name = self.embedder.name
        stored = self.store.embeddings(user_id, name)
        missing = [c for c in index.chunks if c.chunk_id not in stored]
        if missing:
            # Chunks stored under another embedder: embed them once and keep the vectors.
            log.info("embedding %d chunks of %s that have no %s vectors", len(missing), user_id, name)
            vecs = self.embedder.embed([index_text(c) for c in missing])
            self.store.put_embeddings(name, [c.chunk_id for c in missing], vecs)
            stored.update({c.chunk_id: v for c, v in zip(missing, vecs, strict=True)})
        return np.stack([stored[c.chunk_id] for c in index.chunks]).astype(np.float32, copy=False)

    @staticmethod
    def _bm25(index: _UserIndex) -> BM25Index:
        if index.bm25 is None:
            index.bm25 = BM25Index([index_text(c) for c in index.chunks])
        return index.bm25


def _check_count(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _hit(chunk: ChunkRecord, score: float, rank: int) -> SearchHit:
    return SearchHit(rank=rank, score=score, text=chunk.text, user_id=chunk.user_id,
                     session_id=chunk.session_id, session_date=chunk.session_date,
                     turn_ids=chunk.turn_ids, chunk_id=chunk.chunk_id)


def _groups(sessions: Sequence[SessionIn], size: int) -> Iterable[list[SessionIn]]:
    """Consecutive sessions grouped so that each group has about `size` chunks to embed."""
    group: list[SessionIn] = []
    n = 0
    for s in sessions:
        group.append(s)
        n += len(s.turns)
        if n >= size:
            yield group
            group, n = [], 0
    if group:
        yield group

"""`Memory`: the facade a chatbot developer uses: add sessions, search, list, delete, export, import."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from store import (
    AddResult,
    Chunker,
    ChunkIn,
    ChunkRecord,
    DeleteResult,
    InputError,
    QrmemError,
    SessionConflictError,
    SessionIn,
    SessionInfo,
    Store,
    StoreError,
    SummaryRecord,
    TurnIn,
    UserInfo,
    load_file,
    make_chunker,
)
from store.exchange import parse_import, restore_summaries
from store.files import check_target, write_private
from store.jsonio import read_json_file
from store.redact import get_logger
from store.store import SECURE_DELETE_WAIT

from .attribution import attribution
from .embedders import Embedder, load_embedder, load_stored_embedder
from .filters import SearchFilter
from .fusion import fuse_with_first_stage
from .ranking import Reranker, ranked
from .rerankers import load_reranker
from .retrieval import (
    DEFAULT_INDEX_BYTES,
    DEFAULT_RERANK_K,
    SEARCH_MODES,
    IndexCache,
    Retriever,
    index_text,
)
from .summaries import Summarizer, catch_up
from .temporal import ground, notes_text
from .types import IngestReport, ReindexReport, SearchHit, SearchResults

log = get_logger(__name__)

SearchMode = Literal["hybrid", "dense", "bm25"]
EMBED_GROUP = 256  # chunks embedded together across sessions on ingest


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
                 secure_delete: bool = False, secure_delete_wait: float = SECURE_DELETE_WAIT,
                 create: bool = True, index_cache_bytes: int = DEFAULT_INDEX_BYTES,
                 fusion_weight: float | None = None, temporal: bool = True) -> None:
        if first_stage not in SEARCH_MODES:
            raise InputError(f"unknown first stage {first_stage!r}; choose one of {SEARCH_MODES}")
        self.store = db if isinstance(db, Store) else Store(
            db, secure_delete=secure_delete, secure_delete_wait=secure_delete_wait, create=create)
        self._embedder_spec = embedder
        self._embedder: Embedder | None = embedder if isinstance(embedder, Embedder) else None
        self.chunker = make_chunker(chunker) if isinstance(chunker, str) else chunker
        self.first_stage = first_stage
        if rerank_k < 1:
            raise InputError(f"rerank_k must be >= 1, got {rerank_k}")
        self.rerank_k = rerank_k
        self._reranker_spec = reranker
        self._reranker: Reranker | None = reranker if isinstance(reranker, Reranker) else None
        self.summarizer = summarizer
        if rerank_context not in ("date", "summary", "none"):
            raise InputError(f"rerank_context must be date, summary or none, got {rerank_context!r}")
        self.rerank_context = rerank_context
        if fusion_weight is not None and (isinstance(fusion_weight, bool) or not isinstance(fusion_weight, (int, float))
                                          or not 0 <= fusion_weight < float("inf")):
            raise InputError("fusion_weight must be None (the reranker's own) or a number >= 0 (0: the "
                             f"reranker's order alone), got {fusion_weight!r}")
        self.fusion_weight = None if fusion_weight is None else float(fusion_weight)
        if not isinstance(temporal, bool):
            raise InputError(f"temporal must be True or False, got {temporal!r}")
        self.temporal = temporal  # ground relative time expressions at ingest (memory.temporal)
        self.retriever = Retriever(self.store, lambda: self.embedder, rrf_k, IndexCache(index_cache_bytes))

    @property
    def rrf_k(self) -> int:
        """Reciprocal-rank-fusion constant of the hybrid first stage."""
        return self.retriever.rrf_k

    @rrf_k.setter
    def rrf_k(self, value: int) -> None:
        self.retriever.rrf_k = value

    @property
    def embedder(self) -> Embedder:
        """The embedder, created on first use (the model itself loads on first embedding): the one
        given, else the store's own (`Store.default_embedder`), else the offline MiniLM."""
        if self._embedder is None:
            if isinstance(self._embedder_spec, str):
                self._embedder = load_embedder(self._embedder_spec)
            else:
                stored = self.store.default_embedder()
                self._embedder = load_embedder(None) if stored is None else load_stored_embedder(stored)
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
            raise InputError(err["msg"].removeprefix("Value error, "),
                             field=".".join(map(str, err["loc"])) or None) from None
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
        self._check_embedder()
        report = IngestReport()
        todo = []
        for s, st in zip(sessions, statuses, strict=True):
            if st == "unchanged":
                report.results.append(AddResult(s.user_id, s.session_id, "unchanged"))
            else:
                todo.append(s)
        self._check_positions(todo)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="sessions", desc="ingest", disable=not progress)
        for group in _groups(todo, EMBED_GROUP):
            chunked = [self._ground(s, self.chunker.chunk(s.turns)) for s in group]
            texts = [index_text(text=c.text, date=s.date) for s, cs in zip(group, chunked, strict=True)
                     for c in cs]
            t0 = time.perf_counter()
            vectors = self.embedder.embed(texts)
            report.embed_seconds += time.perf_counter() - t0
            offset = 0
            t0 = time.perf_counter()
            for s, cs in zip(group, chunked, strict=True):
                try:
                    result = self.store.add_session(
                        s, cs, chunker=self.chunker.spec, embedding_model=self.embedder.name,
                        vectors=vectors[offset:offset + len(cs)], replace=replace)
                except StoreError as exc:  # disk full, read-only store...: say what is safe
                    written = sum(r.status != "unchanged" for r in report.results)
                    raise StoreError(
                        f"{exc}; stopped at session {s.session_id!r} of user {s.user_id!r}: the {written} "
                        "sessions written before it are stored whole and intact; fix the cause and run "
                        "the same command again (stored sessions are skipped)") from None
                offset += len(cs)
                report.results.append(result)
                bar.update(1)
            report.write_seconds += time.perf_counter() - t0
            if self.summarizer is not None and summarize:
                t0 = time.perf_counter()
                for s in group:
                    self._summarize_safely(s.user_id, s.session_id)
                report.summary_seconds += time.perf_counter() - t0
        bar.close()
        return report

    def _ground(self, session: SessionIn, chunks: list[ChunkIn]) -> list[ChunkIn]:
        """The chunks with their relative time expressions grounded against the session date
        (`memory.temporal`), when `temporal` is on; as they are otherwise."""
        if not self.temporal:
            return chunks
        return [replace(c, time_notes=notes_text(ground(c.text, session.date))) for c in chunks]

    def _check_embedder(self) -> None:
        """Refuse, before embedding anything, to write vectors of another model than the store's."""
        self.store.check_embedder(self.store.default_embedder(), self.embedder.name)

    def reindex(self, user_id: str | None = None, *, set_default: bool = False) -> ReindexReport:
        """Store a vector from this Memory's embedder for every chunk (of `user_id`, or of every user)
        that has none; with `set_default`, make it the store's embedder afterwards (every chunk of
        every user must then have one). The only way besides ingest that writes vectors."""
        name = self.embedder.name
        users = [user_id] if user_id is not None else [u.user_id for u in self.store.users()]
        report = ReindexReport(model=name)
        t0 = time.perf_counter()
        for user in users:
            _, chunks = self.store.chunks_at_revision(user)
            have = self.store.embeddings(user, name)
            missing = [c for c in chunks if c.chunk_id not in have]
            for group in range(0, len(missing), EMBED_GROUP):
                part = missing[group:group + EMBED_GROUP]
                vecs = self.embedder.embed([index_text(c) for c in part])
                report.embedded += self.store.put_embeddings(name, [c.chunk_id for c in part], vecs)
            report.users += 1
            self.retriever.forget(user)
        if set_default:
            self.store.set_default_embedder(name)
            report.default = name
        report.seconds = time.perf_counter() - t0
        return report

    def _check_positions(self, sessions: Sequence[SessionIn]) -> None:
        """Refuse, before anything is written, a session placed at a position another session of
        its user already holds in the store (the store checks it again in each write)."""
        placed: dict[str, list[SessionIn]] = {}
        for s in sessions:
            if s.position is not None:
                placed.setdefault(s.user_id, []).append(s)
        for user, group in placed.items():
            if self.store.revision(user) is None:
                continue  # a new user: the input itself was checked for repeats
            held = {info.position: info.session_id for info in self.store.sessions(user)}
            for s in group:
                other = held.get(s.position)
                if other is not None and other != s.session_id:
                    raise InputError(f"position {s.position} of user {user!r} is taken by session {other!r}; "
                                     f"nothing was written: give session {s.session_id!r} a free position, "
                                     "or none to put it last")

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
        """Import memory exported by `export_user` (the qrmem chat-log format): its sessions (as
        an ingest does: identical ones are `unchanged`), then the summaries the store lacks, with
        the state the rolling summaries go on from. Importing your own export changes nothing."""
        imported = parse_import(data, source)
        report = self.add_sessions(imported.sessions, replace=replace, summarize=False)
        report.summaries_restored = restore_summaries(self.store, imported)
        if self.summarizer is not None:  # sessions the file had no summary for
            for user in imported.users:
                self._summarize_safely(user, "(import)")
        return report

    def import_file(self, path: str | os.PathLike[str], *, replace: bool = False) -> IngestReport:
        """`import_user` on a file written by `export_to` / `qrmem export`."""
        return self.import_user(read_json_file(path), replace=replace, source=str(path))

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
        if result.needs_resummarize and self.summarizer is not None:
            self._summarize_safely(user_id, session_id)
        return result

    def delete_user(self, user_id: str) -> DeleteResult:
        return self.store.delete_user(user_id)

    def export_user(self, user_id: str) -> dict[str, Any]:
        return self.store.export_user(user_id)

    def export_to(self, user_id: str, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write a user's memory as JSON, readable by the owner only (0600), through a new file
        renamed into place (`store.files.write_private`): a symlink, the store's own files and a
        directory are refused, and so is an existing file unless `force`."""
        check_target(path, force=force, refuse=self.store.files(), what="export")  # before reading
        data = json.dumps(self.export_user(user_id), ensure_ascii=False, indent=1)
        return write_private(path, data, force=force, refuse=self.store.files(), what="export")

    def info(self) -> dict[str, Any]:
        return {"db": self.store.safe_url, **self.store.counts().as_dict(),
                "embedder": self.store.default_embedder(), "embedding_models": self.store.embedding_models(),
                "index_cache": self.retriever.cache.stats()}

    # -- search -----------------------------------------------------------------------------------

    def search(self, user_id: str, query: str, k: int = 10, *, mode: SearchMode | None = None,
               rerank: bool = False, rerank_k: int | None = None,
               session_ids: Iterable[str] | None = None, after: date | str | None = None,
               before: date | str | None = None) -> SearchResults:
        """The user's `k` best chunks for `query`, best first (first stage: hybrid by default).

        Filters (see `memory.filters`): only chunks of `session_ids`, and only sessions dated on or
        after `after` / on or before `before` (days, inclusive; undated or unparseable session dates
        are left out when a bound is given). They mask the candidates before top-k.

        With `rerank`, the first-stage top `rerank_k` (default `self.rerank_k`) are reranked
        listwise by `self.reranker`; its scores are fused with the first-stage order
        (`fusion_weight`, else the reranker's own `fusion_weight`: 0.3 for QRRanker, 0 for plug-ins;
        see `memory.fusion.fuse_with_first_stage`; 0 keeps the reranker's order),
        and the best `k` are returned with the fused scores and, from a reranker that gives them
        (QRRanker), each hit's `evidence`: the spans of its text the reranker attended to most. When
        the reranker's scores are attention mass (QRRanker), the results carry `relevance`
        (`memory.attribution`). Memory context per `rerank_context`: `date` (each chunk's session
        date), `summary` (each chunk's session summary, else its date, plus the conversation
        summary) or `none`; with `date` and `summary`, a chunk's grounded time notes follow its
        context (`8 May 2023 (yesterday = 7 May 2023)`).
        """
        flt = SearchFilter.build(session_ids, after, before)
        if rerank:
            pool = rerank_k or self.rerank_k
            _check_count(pool, "rerank_k")
            first = self.search(user_id, query, k=max(pool, 1), mode=mode, session_ids=session_ids,
                                after=after, before=before)
            if not first:
                return SearchResults()
            contexts, summary = self._rerank_context(user_id, first)
            texts = [h.text for h in first]
            scored = self.reranker.rank(query, texts, contexts=contexts, summary=summary, evidence=True)
            raw, evidence = [0.0] * len(first), [()] * len(first)
            for r in scored:
                raw[r.index], evidence[r.index] = r.score, r.evidence
            weight = self.reranker.fusion_weight if self.fusion_weight is None else self.fusion_weight
            fused = ranked(query, texts, fuse_with_first_stage(raw, weight).tolist(), evidence)
            relevance = attribution(query, texts, raw) if self.reranker.score_is_mass else None
            return SearchResults((replace(first[r.index], rank=r.rank, score=r.score, evidence=r.evidence)
                                  for r in fused.top_k(k)), relevance=relevance)
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
        return SearchResults(_hit(chunk, score, r) for r, (chunk, score)
                             in enumerate(self.retriever.search(user_id, query, k, mode, flt), start=1))

    def _rerank_context(self, user_id: str, hits: list[SearchHit]) -> tuple[list[str | None] | None, str | None]:
        if self.rerank_context == "none":
            return None, None
        if self.rerank_context == "date":
            return [with_time_notes(h.session_date, h.time_notes) for h in hits], None
        latest = {(s.kind, s.session_id): s.text for s in self.store.summaries(user_id)}
        contexts = [with_time_notes(latest.get(("session", h.session_id), h.session_date), h.time_notes)
                    for h in hits]
        return contexts, latest.get(("conversation", None))


def with_time_notes(context: str | None, notes: str | None) -> str | None:
    """A chunk's memory context with its grounded time notes: `8 May 2023 (yesterday = 7 May 2023)`."""
    if not notes:
        return context
    return f"{context} ({notes})" if context else f"({notes})"


def _check_count(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _hit(chunk: ChunkRecord, score: float, rank: int) -> SearchHit:
    return SearchHit(rank=rank, score=score, text=chunk.text, user_id=chunk.user_id,
                     session_id=chunk.session_id, session_date=chunk.session_date,
                     turn_ids=chunk.turn_ids, chunk_id=chunk.chunk_id, time_notes=chunk.time_notes)


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

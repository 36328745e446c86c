"""One server process's memory: the `Memory` (models loaded once), the optional chat agent, the API
keys, and the two lanes that run their blocking work. Both the REST app and the MCP tools call it."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent import Answer, MemoryAgent
from memory import Memory, SearchResults, load_generator
from store import (
    AddResult,
    ApiKeys,
    DeleteResult,
    NotFoundError,
    QrmemError,
    SessionInfo,
    SummaryRecord,
    TurnIn,
    TurnRecord,
)

from .config import ServeConfig
from .errors import NotConfiguredError, NotReadyError
from .lanes import Lane
from .model_process import ModelProcess, ProcessGenerator, ProcessReranker

log = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_STRIPES = 64
# A query and 20 candidates of the length of a chat turn: what `search(rerank=True)` hands the reranker.
WARM_RERANK = ("When did Caroline go to the support group?",
               [f"Speaker {i % 2}: last week we talked about the garden, the marathon in October and the "
                f"pottery class on Tuesdays; item {i} was the one with the blue glazed bowl." for i in range(20)])


@dataclass(frozen=True)
class SessionTurns:
    info: SessionInfo
    turns: list[TurnRecord]


class MemoryService:
    """Models are loaded once (`load_models`, in the background for HTTP); database and embedding
    work runs in the `store` lane (`cfg.workers` threads), reranking and generation in the `model`
    lane (one thread: the model already uses every core, and QRRanker is not thread-safe)."""

    def __init__(self, cfg: ServeConfig, memory: Memory | None = None) -> None:
        self.cfg = cfg
        # The reranker and the generator run in a child process (see model_process), started by
        # load_models; a Memory handed in (tests, embedding applications) keeps its own.
        self.models: ModelProcess | None = None
        if memory is None and (cfg.has_reranker or cfg.generator):
            self.models = ModelProcess(cfg.reranker if cfg.has_reranker else None,
                                       (cfg.generator, cfg.base_url, cfg.api_key_env) if cfg.generator else None)
        self.memory = memory or Memory(cfg.db, embedder=cfg.embedder, reranker=ProcessReranker(
            self.models, cfg.reranker, max_batch=cfg.rerank_batch, max_wait=cfg.rerank_wait_ms / 1000)
            if self.models and cfg.has_reranker else None)
        self.keys = ApiKeys(self.memory.store)
        self.store_lane = Lane("store", cfg.workers, cfg.queue, cfg.timeout)
        # As many model jobs run as a rerank pass takes; the model process still runs one pass at a time.
        self.model_lane = Lane("model", cfg.rerank_batch, cfg.model_queue, cfg.timeout)
        self.agent: MemoryAgent | None = None
        self.ready = False
        self.load_error: QrmemError | None = None
        # Appends to one session are serialised in this process (see `append`).
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]

    # -- life cycle ------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Load the embedder, the reranker and the generator (each once per process)."""
        try:
            self.memory.embedder.embed(["warm up"])
            if self.cfg.has_reranker:
                self.memory.reranker.rank("warm up", ["a", "b"])
                # One rerank of a typical shortlist sets the model lane's pace, so that its queue
                # sheds load (429) from the first request on instead of letting requests time out.
                t0 = time.monotonic()
                self.memory.reranker.rank(*WARM_RERANK)
                self.model_lane.observe(time.monotonic() - t0)
            if self.cfg.generator:
                generator = ProcessGenerator(self.models, self.cfg.generator) if self.models else load_generator(
                    self.cfg.generator, base_url=self.cfg.base_url, api_key_env=self.cfg.api_key_env)
                if self.cfg.generator.startswith("transformers"):
                    generator.complete([{"role": "user", "content": "hi"}], max_new_tokens=1)
                self.agent = MemoryAgent(self.memory, generator, rerank=self.cfg.has_reranker)
            self.ready = True
            log.info("models loaded: embedder %s, reranker %s, generator %s", self.memory.embedder.name,
                     self.cfg.reranker, self.cfg.generator or "none")
        except QrmemError as exc:
            self.load_error = exc
            log.error("cannot load the models: %s", exc)

    def require_ready(self) -> None:
        if self.load_error is not None:
            raise self.load_error
        if not self.ready:
            raise NotReadyError("the models are still loading; retry in a few seconds", retry_after=5)

    def close(self) -> None:
        """Finish the work already accepted, then release the database."""
        self.store_lane.shutdown()
        self.model_lane.shutdown()
        if self.models is not None:
            self.models.close()
        self.memory.store.close()

    async def run(self, fn: Callable[..., T], *args: Any, model: bool = False, **kwargs: Any) -> T:
        """Run blocking work in its lane (bounded, with the request deadline): the model lane for
        reranking and generation, the store lane for the rest."""
        return await (self.model_lane if model else self.store_lane).run(functools.partial(fn, *args, **kwargs))

    # -- operations (blocking; run in a lane) ----------------------------------------------------

    def add_session(self, user_id: str, turns: Sequence[TurnIn], *, session_id: str | None,
                    date: str | None, replace: bool) -> AddResult:
        return self.memory.add_session(user_id, list(turns), session_id=session_id, date=date,
                                       replace=replace, summarize=False)

    def append(self, user_id: str, turns: Sequence[TurnIn], *, session_id: str | None,
               date: str | None) -> AddResult:
        """Append turns to a session (a new one when `session_id` is None), as `MemoryAgent.chat`
        writes: the session is stored again whole with the new turns, in one transaction. Appends
        to one session are serialised within this process; a client sends one conversation's turns
        in order, so it should not spread concurrent appends to one session over several processes."""
        if session_id is None:
            stamp = datetime.now(UTC)
            session_id = f"chat-{stamp:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
            date = date or f"{stamp.day} {stamp:%B %Y}"
        with self._stripes[hash((user_id, session_id)) % LOCK_STRIPES]:
            try:
                stored = self.session(user_id, session_id)
            except NotFoundError:
                stored = None
            before = [] if stored is None else [
                TurnIn(speaker=t.speaker, text=t.text, time=t.time, id=t.id, image_caption=t.image_caption)
                for t in stored.turns]
            return self.memory.add_session(
                user_id, before + list(turns), session_id=session_id,
                date=date if date is not None or stored is None else stored.info.date,
                replace=stored is not None, summarize=False)

    def search(self, user_id: str, query: str, *, k: int, mode: str | None, rerank: bool,
               rerank_k: int | None, session_ids: list[str] | None, after: dt.date | None,
               before: dt.date | None) -> SearchResults:
        if rerank and not self.cfg.has_reranker:
            raise NotConfiguredError("this server runs without a reranker (--reranker none); "
                                     "search with rerank=false, or start it with --reranker qr")
        return self.memory.search(user_id, query, k=k, mode=mode, rerank=rerank, rerank_k=rerank_k,  # type: ignore[arg-type]
                                  session_ids=session_ids, after=after, before=before)

    def sessions(self, user_id: str) -> list[SessionInfo]:
        return self.memory.sessions(user_id)

    def session(self, user_id: str, session_id: str) -> SessionTurns:
        turns = self.memory.store.turns(user_id, session_id)  # NotFoundError names what is missing
        info = next((s for s in self.memory.sessions(user_id) if s.session_id == session_id), None)
        if info is None:  # deleted between the two reads
            raise NotFoundError(f"user {user_id!r} has no session {session_id!r}")
        return SessionTurns(info, turns)

    def delete_session(self, user_id: str, session_id: str) -> DeleteResult:
        return self.memory.delete_session(user_id, session_id)

    def delete_user(self, user_id: str) -> DeleteResult:
        return self.memory.delete_user(user_id)

    def export(self, user_id: str) -> dict[str, Any]:
        return self.memory.export_user(user_id)

    def summaries(self, user_id: str) -> list[SummaryRecord]:
        return self.memory.summaries(user_id)

    def require_generator(self) -> None:
        if self.cfg.generator is None:
            raise NotConfiguredError("this server has no generator; start it with --generator "
                                     "transformers (offline SmolLM2) or --generator openai:MODEL --base-url URL")

    def chat(self, user_id: str, message: str, *, date: str | None) -> Answer:
        """Retrieve, rerank, answer, write the exchange back (`MemoryAgent.chat`)."""
        self.require_generator()
        assert self.agent is not None  # set when the models loaded
        return self.agent.chat(user_id, message, date=date)


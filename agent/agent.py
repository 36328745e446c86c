"""`MemoryAgent`: the memory-aware chat loop (LoCoMo style).

chat(user, message): first-stage top-K -> rerank (QRRanker, memory context) -> answer from the top-n
chunks with their dates -> the user turn and the reply are written back into the open session
(replaced as it grows, so it is searchable at once and durable after every exchange) ->
`end_session` rolls the summaries forward.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from memory import DEFAULT_RERANK_K, Generator, Memory, SearchHit
from store import TurnIn
from store.errors import InputError

NO_MEMORY = "I have no memory of that: it was not mentioned in our conversations."
DEFAULT_ABSTAIN_BELOW = 0.57  # ~5% of answerable LoCoMo questions fall below it (README: abstention)


def should_abstain(relevance: float | None, abstain_below: float | None) -> bool:
    """True when the search's relevance (`SearchResults.relevance`) says memory holds no answer:
    the memories that match the question were said by someone other than the person it asks about."""
    return abstain_below is not None and relevance is not None and relevance < abstain_below


SYSTEM_PROMPT = (
    "You are a helpful assistant with a long-term memory of earlier conversations with this user. "
    "Answer briefly, using the memories when they are relevant. Dates in brackets are when a "
    "memory was said; notes in parentheses give the dates its words such as 'yesterday' mean."
)


@dataclass(frozen=True)
class UsedChunk:
    chunk_id: int
    session_id: str
    session_date: str | None
    turn_ids: tuple[str, ...]
    score: float
    text: str
    time_notes: str | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    chunks: tuple[UsedChunk, ...]
    session_id: str
    seconds: dict[str, float] = field(default_factory=dict)  # retrieve (incl. rerank), generate, write
    relevance: float | None = None  # the search's relevance (SearchResults.relevance)
    abstained: bool = False  # answered NO_MEMORY without asking the generator

    @property
    def turn_ids(self) -> list[str]:
        return [t for c in self.chunks for t in c.turn_ids]


def memory_block(hits: list[SearchHit]) -> str:
    """The memories as the generator reads them, one per line: `[session date] text`, followed by
    the chunk's grounded time notes when it has any: `(yesterday = 7 May 2023)`."""
    return "\n".join(f"[{h.session_date or 'undated'}] {h.text}" + (f" ({h.time_notes})" if h.time_notes else "")
                     for h in hits)


@dataclass
class _OpenSession:
    session_id: str
    date: str
    turns: list[dict[str, str]] = field(default_factory=list)


def check_turn(speaker: str, text: str, what: str) -> None:
    """`InputError` (one line, the reason) unless `text` by `speaker` can be stored as a turn."""
    try:
        TurnIn(speaker=speaker, text=text)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(map(str, err["loc"]))
        reason = str(err["msg"]).removeprefix("Value error, ")
        raise InputError(f"{what} cannot be stored: {reason}" if field == "text"
                         else f"{field} {speaker!r} cannot be stored: {reason}") from None


class MemoryAgent:
    """A chatbot loop over a `Memory` (with its reranker) and a `Generator`."""

    def __init__(self, memory: Memory, generator: Generator, *, rerank_k: int = DEFAULT_RERANK_K, top_n: int = 3,
                 rerank: bool = True, assistant: str = "assistant", system_prompt: str = SYSTEM_PROMPT,
                 max_new_tokens: int = 96, abstain_below: float | None = DEFAULT_ABSTAIN_BELOW) -> None:
        """`abstain_below`: answer NO_MEMORY when the reranked search's relevance is below it (None:
        never abstain)."""
        if top_n < 1 or rerank_k < top_n:
            raise InputError(f"need 1 <= top_n <= rerank_k, got top_n={top_n}, rerank_k={rerank_k}")
        if abstain_below is not None and (isinstance(abstain_below, bool) or not isinstance(abstain_below, (int, float))
                                          or not 0 <= abstain_below <= 1):
            raise InputError(f"abstain_below must be a number in [0, 1] or None, got {abstain_below!r}")
        self.abstain_below = abstain_below
        self.memory, self.generator = memory, generator
        self.rerank_k, self.top_n, self.rerank = rerank_k, top_n, rerank
        self.assistant, self.system_prompt, self.max_new_tokens = assistant, system_prompt, max_new_tokens
        self._open: dict[str, _OpenSession] = {}

    def chat(self, user_id: str, message: str, *, date: str | None = None) -> Answer:
        """Answer `message` from memory and store the exchange. The message is checked first, by
        the rules of a stored turn: a message that could not be stored is an `InputError` before
        anything is searched, sent or written, and the open session stays as it was."""
        if not isinstance(message, str) or not message.strip():
            raise InputError("message must be a non-empty string")
        check_turn(user_id, message, "message")
        t0 = time.perf_counter()
        hits = self.memory.search(user_id, message, k=self.top_n, rerank=self.rerank, rerank_k=self.rerank_k)
        t1 = time.perf_counter()
        relevance = hits.relevance
        abstained = should_abstain(relevance, self.abstain_below)
        context = memory_block(hits) if hits else "(no memories yet)"
        reply = NO_MEMORY if abstained else self.generator.complete([
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": f"Memories:\n{context}\n\nMessage: {message}"},
        ], max_new_tokens=self.max_new_tokens) or "..."
        t2 = time.perf_counter()
        check_turn(self.assistant, reply, "the generator's reply")
        session = self._open.get(user_id)
        if session is None:
            stamp = datetime.now(UTC)
            session = _OpenSession(f"chat-{stamp:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
                                   date or f"{stamp.day} {stamp:%B %Y}")
        turns = [*session.turns, {"speaker": user_id, "text": message},
                 {"speaker": self.assistant, "text": reply}]
        self.memory.add_session(user_id, turns, session_id=session.session_id, date=session.date,
                                replace=True, summarize=False)
        session.turns = turns  # only now: the session is open (and reported saved) once it is stored
        self._open[user_id] = session
        t3 = time.perf_counter()
        used = tuple(UsedChunk(h.chunk_id, h.session_id, h.session_date, h.turn_ids, h.score, h.text, h.time_notes)
                     for h in hits)
        return Answer(reply, used, session.session_id,
                      {"retrieve": t1 - t0, "generate": t2 - t1, "write": t3 - t2}, relevance, abstained)

    def end_session(self, user_id: str) -> str | None:
        """Close the user's open session and roll the summaries forward (if Memory has a summarizer).
        Returns the id of the stored session, or None when no exchange was stored."""
        session = self._open.pop(user_id, None)
        if session is not None and self.memory.summarizer is not None:
            self.memory.summarize(user_id)
        return session.session_id if session else None

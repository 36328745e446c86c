"""Request and response bodies of the REST API (they make its OpenAPI schema). Requests are strict:
unknown fields and wrong types are refused (422), never coerced."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store import TurnIn

MAX_TURNS = 10_000  # per request


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SessionBody(Body):
    """One session, written atomically; identical content again is a no-op (`unchanged`)."""

    session_id: str | None = Field(None, description="external id; default: a new random id")
    date: str | None = Field(None, description="session date as text, e.g. '1:56 pm on 8 May, 2023' or ISO")
    turns: list[TurnIn] = Field(min_length=1, max_length=MAX_TURNS)
    replace: bool = Field(False, description="overwrite a stored session with different content")


class MessagesBody(Body):
    """Turns to append to a session as they happen (the chat write path)."""

    turns: list[TurnIn] = Field(min_length=1, max_length=MAX_TURNS)
    session_id: str | None = Field(None, description="the session to append to; omit to open a new "
                                                     "one (its id comes back: send it with later turns)")
    date: str | None = Field(None, description="date of a new session [default: today]")


class SearchBody(Body):
    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=1000, description="number of hits")
    mode: Literal["hybrid", "dense", "bm25"] | None = Field(None, description="first stage [default: hybrid]")
    rerank: bool = Field(False, description="rerank the first-stage top rerank_k with the server's reranker")
    rerank_k: int | None = Field(None, ge=1, le=200, description="first-stage candidates to rerank [default: 20]")
    session_ids: list[str] | None = Field(None, max_length=10_000, description="only these sessions")
    # JSON has no date type: YYYY-MM-DD strings are the strict form here.
    after: dt.date | None = Field(None, strict=False, description="only sessions dated on or after this day (YYYY-MM-DD)")
    before: dt.date | None = Field(None, strict=False, description="only sessions dated on or before this day (YYYY-MM-DD)")


class ChatBody(Body):
    message: str = Field(min_length=1, max_length=100_000)
    date: str | None = Field(None, description="date of the session opened by the first message")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AddOut(Out):
    user_id: str
    session_id: str
    status: Literal["added", "unchanged", "replaced"]
    turns: int
    chunks: int


class EvidenceOut(Out):
    """A span of the hit's text the reranker attended to most: `text[start:end]` (characters)."""

    start: int
    end: int
    text: str
    weight: float = Field(description="share of the hit's attention mass inside the span, 0..1")


class HitOut(Out):
    rank: int
    score: float
    text: str
    user_id: str
    session_id: str
    session_date: str | None
    turn_ids: list[str]
    chunk_id: int
    evidence: list[EvidenceOut] = Field(default_factory=list, description=(
        "with rerank (QRRanker): spans of text the reranker attended to most, heaviest first"))
    time_notes: str | None = Field(default=None, description="relative time expressions of the text grounded "
                                   "against the session date at ingest, e.g. 'yesterday = 7 May 2023'")


class SearchOut(Out):
    hits: list[HitOut]
    relevance: float | None = Field(None, description=(
        "with rerank and QRRanker: share of its attention on turns of the person the query names "
        "(low: the matching memories were said by someone else); null otherwise"))


class SessionOut(Out):
    session_id: str
    date: str | None
    position: int
    turns: int
    chunks: int
    created_at: dt.datetime


class SessionsOut(Out):
    user_id: str
    sessions: list[SessionOut]


class TurnOut(Out):
    position: int
    speaker: str
    text: str
    time: str | None
    id: str | None
    image_caption: str | None


class SessionTurnsOut(Out):
    user_id: str
    session_id: str
    date: str | None
    position: int
    turns: list[TurnOut]


class DeleteOut(Out):
    user_id: str
    session_id: str | None
    turns: int
    chunks: int
    summaries: int
    needs_resummarize: bool


class SummaryOut(Out):
    kind: Literal["session", "conversation"]
    session_id: str | None
    version: int
    text: str
    model: str | None
    created_at: dt.datetime


class SummariesOut(Out):
    user_id: str
    summaries: list[SummaryOut]


class UsedChunkOut(Out):
    chunk_id: int
    session_id: str
    session_date: str | None
    turn_ids: list[str]
    score: float
    text: str
    time_notes: str | None = None


class ChatOut(Out):
    text: str
    session_id: str
    turn_ids: list[str]
    chunks: list[UsedChunkOut]
    seconds: dict[str, float]
    relevance: float | None = None  # the search's relevance (see SearchOut)
    abstained: bool = False  # answered "no memory of that" without the generator


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class StatusOut(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)

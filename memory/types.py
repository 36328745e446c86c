"""Typed results of the memory layer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from store.types import AddResult

from .ranking import Evidence


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk, best first in a result list."""

    rank: int  # 1-based
    score: float
    text: str
    user_id: str
    session_id: str
    session_date: str | None
    turn_ids: tuple[str, ...]  # external turn ids (e.g. LoCoMo dia_ids) the chunk covers
    chunk_id: int
    evidence: tuple[Evidence, ...] = ()  # spans of `text` the reranker attended to (QRRanker only)
    # Relative time expressions of the text grounded against the session date at ingest
    # ("yesterday = 7 May 2023; last week = week of 1 May 2023"); None: none, or not grounded.
    time_notes: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["turn_ids"] = list(self.turn_ids)
        d["evidence"] = [ev.as_dict() for ev in self.evidence]
        return d


class SearchResults(list[SearchHit]):
    """The hits of one search, best first: a plain list of `SearchHit`, plus `relevance`, what the
    reranker said about the search as a whole (None without one, or when it cannot say).

    `relevance` (in [0, 1]) is the share of the reranker's attention mass on turns spoken by the
    person the query asks about (`memory.attribution`); low values mean the memories that match
    were said by someone else (`MemoryAgent` then answers that it has no memory of it)."""

    def __init__(self, hits: Iterable[SearchHit] = (), *, relevance: float | None = None) -> None:
        super().__init__(hits)
        self.relevance = relevance


@dataclass
class IngestReport:
    """What an ingest did, with where the time went."""

    results: list[AddResult] = field(default_factory=list)
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    summary_seconds: float = 0.0
    summaries_restored: int = 0  # summaries written from an import (`Memory.import_user`)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def turns(self) -> int:
        return sum(r.turns for r in self.results)

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results)


@dataclass
class ReindexReport:
    """What `Memory.reindex` (`qrmem reindex`) did."""

    model: str
    users: int = 0
    embedded: int = 0  # vectors stored now
    default: str | None = None  # the store's embedder, when it was set now
    seconds: float = 0.0

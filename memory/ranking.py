"""The reranker interface and its typed results: one required method, `score`; `rank` (sorted,
typed results) is built on it. Imports no backend, so every reranker (memory/qr too) builds on it.

A reranker that can say which part of a candidate its score rests on (QRRanker: the characters its
QR heads attended to most) fills `RankedResult.evidence` when `rank(..., evidence=True)` asks; the
others leave it empty."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from store.errors import InputError


@dataclass(frozen=True)
class Evidence:
    """A character span of a candidate's text that its score rests on: `text[start:end]`."""

    start: int
    end: int
    text: str
    weight: float  # share of the candidate's (positive) attention mass inside the span, 0..1

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end

    def as_dict(self) -> dict[str, int | float | str]:
        return {"start": self.start, "end": self.end, "text": self.text, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class RankedResult:
    index: int  # position of the candidate in the input list
    score: float
    rank: int  # 1-based
    text: str
    evidence: tuple[Evidence, ...] = ()  # heaviest first; empty unless the reranker gives evidence


@dataclass(frozen=True)
class RankedResults:
    """Candidates ordered best first."""

    query: str
    results: tuple[RankedResult, ...]

    def top_k(self, k: int) -> list[RankedResult]:
        return list(self.results[:k])

    def __iter__(self) -> Iterator[RankedResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RankedResult:
        return self.results[i]


class Reranker(ABC):
    """Scores candidates for a query, all together (listwise) or one by one."""

    #: True when scores are non-negative masses that can be shared out among candidates (attention
    #: mass, as QRRanker's): `Memory.search` then reports `SearchResults.relevance`.
    score_is_mass: bool = False
    #: Weight of the first-stage order fused with this reranker's scores in `Memory.search` (see
    #: `memory.fusion.fuse_with_first_stage`), chosen for this reranker; 0 keeps its order alone.
    fusion_weight: float = 0.0

    @abstractmethod
    def score(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
              summary: str | None = None) -> list[float]:
        """One score per doc, higher is better. `contexts` (one per doc, e.g. its session date or
        summary) and `summary` (the conversation summary) are optional memory context."""

    def rank(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
             summary: str | None = None, evidence: bool = False) -> RankedResults:
        """Docs sorted by score, best first (ties keep input order). With `evidence`, rerankers that
        can (QRRanker) also give each result's evidence spans; this default gives none."""
        validate(query, docs, contexts)
        return ranked(query, docs, self.score(query, docs, contexts=contexts, summary=summary))


def ranked(query: str, docs: Sequence[str], scores: Sequence[float],
           evidence: Sequence[tuple[Evidence, ...]] | None = None) -> RankedResults:
    """Docs sorted by their scores, best first (ties keep input order), with each doc's evidence."""
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    return RankedResults(query, tuple(
        RankedResult(index=i, score=float(scores[i]), rank=r, text=docs[i],
                     evidence=evidence[i] if evidence is not None else ())
        for r, i in enumerate(order, start=1)))


def highlight(text: str, spans: Iterable[tuple[int, int]], before: str = "[[", after: str = "]]") -> str:
    """`text` with each character span [start, end) wrapped in `before`/`after` (e.g. the `span` of
    each `Evidence`); spans outside the text are left out, overlapping ones merged."""
    merged: list[list[int]] = []
    for s, e in sorted((s, e) for s, e in spans if 0 <= s < e <= len(text)):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, at = [], 0
    for s, e in merged:
        out += [text[at:s], before, text[s:e], after]
        at = e
    return "".join(out) + text[at:]


def validate(query: str, docs: Sequence[str], contexts: Sequence[str | None] | None) -> None:
    if not isinstance(query, str) or not query.strip():
        raise InputError("query must be a non-empty string")
    if isinstance(docs, str) or not docs:
        raise InputError("rank needs a non-empty list of candidate texts")
    for i, d in enumerate(docs):
        if not isinstance(d, str) or not d.strip():
            raise InputError(f"candidate {i} must be a non-empty string")
    if contexts is not None and len(contexts) != len(docs):
        raise InputError(f"got {len(contexts)} contexts for {len(docs)} candidates")

"""Retrieval metrics over gold evidence ids (LoCoMo dia_ids), shared by benchmarks and evaluation."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")


def parse_evidence(evidence: Iterable[Any]) -> list[str]:
    """Normalised dia_ids from a LoCoMo evidence list, tolerating its known typos
    (`"D8:6; D9:17"`, `"D:11:26"`); unparseable entries are dropped."""
    out: list[str] = []
    for item in evidence or []:
        for a, b in _EVIDENCE.findall(str(item)):
            dia = f"D{int(a)}:{int(b)}"
            if dia not in out:
                out.append(dia)
    return out


def recall_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Fraction of gold ids covered by the turn ids of the top-k retrieved chunks."""
    if not gold:
        raise ValueError("recall needs at least one gold id")
    covered = {tid for ids in retrieved[:k] for tid in ids}
    return sum(g in covered for g in gold) / len(gold)


def ndcg_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: a chunk is relevant if it covers a gold id not yet credited."""
    if not gold:
        raise ValueError("nDCG needs at least one gold id")
    remaining = set(gold)
    dcg = 0.0
    for rank, ids in enumerate(retrieved[:k], start=1):
        hit = remaining.intersection(ids)
        if hit:
            dcg += 1.0 / math.log2(rank + 1)
            remaining -= hit
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(gold), k) + 1))
    return dcg / ideal


@dataclass(frozen=True)
class LocomoQuestion:
    user_id: str  # the LoCoMo sample_id
    question: str
    answer: str | None
    category: int
    evidence: tuple[str, ...]


def locomo_questions(data: Any, *, exclude_categories: Iterable[int] = (5,),
                     require_evidence: bool = True) -> list[LocomoQuestion]:
    """QA items of LoCoMo samples (a list or one sample), category 5 excluded by default."""
    samples = data if isinstance(data, list) else [data]
    skip = set(exclude_categories)
    out = []
    for sample in samples:
        for qa in sample.get("qa", []):
            cat = int(qa.get("category", 0))
            ev = tuple(parse_evidence(qa.get("evidence", [])))
            if cat in skip or (require_evidence and not ev):
                continue
            answer = qa.get("answer", qa.get("adversarial_answer"))
            out.append(LocomoQuestion(str(sample["sample_id"]), str(qa["question"]),
                                      None if answer is None else str(answer), cat, ev))
    return out


@dataclass(frozen=True)
class Candidates:
    """A query with its first-stage candidates, as a reranker sees them, and the gold ids."""

    question: LocomoQuestion
    texts: tuple[str, ...]
    dates: tuple[str | None, ...]
    turn_ids: tuple[tuple[str, ...], ...]

    def gold_mask(self) -> list[bool]:
        gold = set(self.question.evidence)
        return [bool(gold.intersection(ids)) for ids in self.turn_ids]


def first_stage_candidates(memory: Any, questions: Sequence[LocomoQuestion], k: int,
                           mode: str | None = None) -> list[Candidates]:
    """The first-stage top-k of each question from `memory` (a `Memory`), in first-stage order."""
    out = []
    for q in questions:
        hits = memory.search(q.user_id, q.question, k=k, mode=mode)
        out.append(Candidates(q, tuple(h.text for h in hits), tuple(h.session_date for h in hits),
                              tuple(h.turn_ids for h in hits)))
    return out


def ndcg_from_scores(scores: Sequence[float], gold: Sequence[bool], k: int = 10) -> float:
    """nDCG@k of one candidate list ranked by `scores` against binary per-candidate relevance."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(order) if gold[i])
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(sum(gold), k)))
    return dcg / ideal if ideal else 0.0

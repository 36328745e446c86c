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

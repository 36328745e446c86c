"""LoCoMo data: questions and their evidence, each question's first-stage candidates from a store,
and candidate records (the reranker's training and head-detection input) built from them.

LoCoMo (snap-research/locomo) is CC BY-NC 4.0 and is never shipped: callers pass a path. qrmem ships
only `agent/data/tiny_locomo.json`, a tiny conversation written for its tests.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory import DEFAULT_RERANK_K, Memory
from memory.qr.data import Paragraph, Record, card_records, read_json_or_jsonl
from store import parse_obj
from store.errors import InputError
from store.files import write_private

PUBLIC_URL = "https://raw.githubusercontent.com/snap-research/locomo/main/data/locomo10.json"
TINY = Path(__file__).parent / "data" / "tiny_locomo.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")


def download(dest: Path) -> Path:
    """Fetch the public locomo10.json (CC BY-NC 4.0) when a network exists. Never used by tests."""
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    resp = httpx.get(PUBLIC_URL, timeout=60, follow_redirects=True)
    resp.raise_for_status()
    return write_private(dest, resp.content, force=True, mode=0o644, what="download")


def parse_conversations(text: str | None) -> list[str] | None:
    """'conv-26,conv-30' -> ['conv-26', 'conv-30']; None -> None (all conversations). An empty
    list or an empty item is an error: only the absence of the option means "all"."""
    if text is None:
        return None
    items = [c.strip() for c in str(text).split(",")]
    if not all(items):
        raise InputError(f"--conversations takes ids separated by commas, with none empty, got {text!r}")
    return items


def check_conversations(conversations: Sequence[str] | None) -> None:
    """None means every conversation; an empty list or an empty id is a mistake, not "all"."""
    if conversations is None:
        return
    if isinstance(conversations, str) or not all(isinstance(c, str) and c.strip() for c in conversations):
        raise InputError(f"conversations must be None (all) or a list of non-empty ids, got {conversations!r}")
    if not conversations:
        raise InputError("conversations is an empty list; pass None for all of them")


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


def first_stage_candidates(memory: Memory, questions: Sequence[LocomoQuestion],
                           rerank_k: int = DEFAULT_RERANK_K, mode: str | None = None) -> list[Candidates]:
    """The first-stage top `rerank_k` of each question from `memory`, in first-stage order."""
    out = []
    for q in questions:
        hits = memory.search(q.user_id, q.question, k=rerank_k, mode=mode)
        out.append(Candidates(q, tuple(h.text for h in hits), tuple(h.session_date for h in hits),
                              tuple(h.turn_ids for h in hits)))
    return out


def is_locomo(data: Any) -> bool:
    items = data if isinstance(data, list) else [data]
    return bool(items) and isinstance(items[0], dict) and "conversation" in items[0]


def locomo_records(data: Any, memory: Memory, rerank_k: int = DEFAULT_RERANK_K, *,
                   conversations: Sequence[str] | None = None,
                   exclude_categories: Sequence[int] = (5,)) -> list[Record]:
    """LoCoMo questions as candidate records over `memory`'s first-stage top `rerank_k` (the samples
    must be ingested): gold = turns cited as evidence, title = the session date, group = the
    conversation, so training and detection see what inference sees."""
    check_conversations(conversations)
    questions = locomo_questions(data, exclude_categories=exclude_categories)
    if conversations is not None:
        wanted = set(conversations)
        unknown = wanted - {q.user_id for q in questions}
        if unknown:
            raise InputError(f"no questions for conversations {sorted(unknown)}")
        questions = [q for q in questions if q.user_id in wanted]
    records = []
    for n, c in enumerate(first_stage_candidates(memory, questions, rerank_k)):
        gold = c.gold_mask()
        records.append(Record(
            id=f"{c.question.user_id}#{n}", question=c.question.question, answer=c.question.answer,
            group=c.question.user_id,
            paragraphs=[Paragraph(idx=i, title=d, paragraph_text=t, is_supporting=g)
                        for i, (t, d, g) in enumerate(zip(c.texts, c.dates, gold, strict=True))]))
    return records


def load_records(path: str | Path, *, rerank_k: int = DEFAULT_RERANK_K, db: str | None = None,
                 conversations: Sequence[str] | None = None, memory: Memory | None = None) -> list[Record]:
    """Candidate records from a QRRanker-card file, or from a LoCoMo file through qrmem's first stage.

    For LoCoMo the conversations are ingested into `memory`, else into `db`, else into a temporary
    SQLite store (identical sessions already stored are skipped)."""
    check_conversations(conversations)
    data = read_json_or_jsonl(path)
    if not is_locomo(data):
        return card_records(data, str(path), groups=conversations)
    if memory is None:
        memory = Memory(str(Path(tempfile.mkdtemp(prefix="qrmem-")) / "seed.db") if db is None else db)
    samples = data if isinstance(data, list) else [data]
    if conversations is not None:
        samples = [s for s in samples if str(s.get("sample_id")) in set(conversations)]
    memory.add_sessions(parse_obj(samples, str(path), "locomo"), progress=True)
    return locomo_records(samples, memory, rerank_k, conversations=conversations)

"""Seed and training data for head detection and QRRanker training.

Two sources, one record type:
- the QRRanker card's records, JSON list or JSONL:
  `{"id", "question", "answer"?, "paragraphs": [{"idx", "title"?, "paragraph_text", "is_supporting"?}],
  "summary"?, "group"?}` (`group` names the conversation/document for splits; default: the id);
- LoCoMo: each question becomes a record whose paragraphs are qrmem's own first-stage top-K over
  that conversation (so training sees what inference sees), gold = turns cited as evidence, title =
  the session date, group = the conversation (sample_id).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from store.errors import InputError


class Paragraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idx: int | str | None = None
    title: str | None = None
    paragraph_text: str
    is_supporting: bool = False

    @field_validator("paragraph_text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    question: str
    answer: Any = None
    paragraphs: list[Paragraph] = Field(min_length=1)
    summary: str | None = None
    group: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("must be a string or an integer")
        return str(v)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def texts(self) -> list[str]:
        return [p.paragraph_text for p in self.paragraphs]

    @property
    def titles(self) -> list[str | None] | None:
        titles = [p.title for p in self.paragraphs]
        return titles if any(titles) else None

    @property
    def gold(self) -> list[bool]:
        return [p.is_supporting for p in self.paragraphs]

    @property
    def split_key(self) -> str:
        return self.group or self.id


def parse_records(items: Sequence[Any], source: str) -> list[Record]:
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{source}: record {n}: expected a JSON object")
        try:
            out.append(Record.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
            rid = item.get("id", n)
            raise InputError(f"{source}: record {n} (id {rid}): field {field}: "
                             f"{err['msg'].removeprefix('Value error, ')}") from None
    return out


def read_json_or_jsonl(path: str | Path) -> Any:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{source}: line {n}: malformed JSON: {exc.msg}") from None
    if not items:
        raise InputError(f"{source}: no records")
    return items


def is_locomo(data: Any) -> bool:
    items = data if isinstance(data, list) else [data]
    return bool(items) and isinstance(items[0], dict) and "conversation" in items[0]


def _check_groups(groups: Sequence[str] | None) -> None:
    """None means every group; an empty list or an empty name is a mistake, not "every group"."""
    if groups is not None and (isinstance(groups, str) or not groups
                               or not all(isinstance(g, str) and g.strip() for g in groups)):
        raise InputError(f"conversations must be None (all) or a list of non-empty ids, got {groups!r}")


def locomo_records(data: Any, memory: Any, k: int, *, conversations: Sequence[str] | None = None,
                   exclude_categories: Sequence[int] = (5,)) -> list[Record]:
    """LoCoMo questions as records over `memory`'s first-stage top-k (the samples must be ingested)."""
    from memory.evaluation import first_stage_candidates, locomo_questions

    questions = locomo_questions(data, exclude_categories=exclude_categories)
    _check_groups(conversations)
    if conversations is not None:
        wanted = set(conversations)
        unknown = wanted - {q.user_id for q in questions}
        if unknown:
            raise InputError(f"no questions for conversations {sorted(unknown)}")
        questions = [q for q in questions if q.user_id in wanted]
    records = []
    for n, c in enumerate(first_stage_candidates(memory, questions, k)):
        gold = c.gold_mask()
        records.append(Record(
            id=f"{c.question.user_id}#{n}", question=c.question.question, answer=c.question.answer,
            group=c.question.user_id,
            paragraphs=[Paragraph(idx=i, title=d, paragraph_text=t, is_supporting=g)
                        for i, (t, d, g) in enumerate(zip(c.texts, c.dates, gold, strict=True))]))
    return records


def split_by_group(records: Sequence[Record], val_groups: Sequence[str] | None = None,
                   val_fraction: float = 0.34, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Train/validation split by conversation (`group`), never by question."""
    groups = sorted({r.split_key for r in records})
    if val_groups is None:
        rng = random.Random(seed)
        n_val = max(1, round(len(groups) * val_fraction)) if len(groups) > 1 else 0
        val_groups = rng.sample(groups, n_val)
    missing = set(val_groups) - set(groups)
    if missing:
        raise InputError(f"validation groups {sorted(missing)} have no records")
    val = set(val_groups)
    return [r for r in records if r.split_key not in val], [r for r in records if r.split_key in val]


def sample(records: Sequence[Record], limit: int | None, seed: int = 0,
           require_gold: bool = True) -> list[Record]:
    """Up to `limit` records (seeded), by default only those with a gold candidate."""
    pool = [r for r in records if any(r.gold)] if require_gold else list(records)
    if limit is None or limit >= len(pool):
        return pool
    return random.Random(seed).sample(pool, limit)


def load_records(path: str | Path, *, k: int = 20, db: str | None = None,
                 conversations: Sequence[str] | None = None, memory: Any = None) -> list[Record]:
    """Records from a card-format file, or from a LoCoMo file through qrmem's first stage.

    For LoCoMo the conversations are ingested into `memory`, else into `db`, else into a
    temporary SQLite store (identical sessions already stored are skipped).
    """
    _check_groups(conversations)
    data = read_json_or_jsonl(path)
    if not is_locomo(data):
        items = data if isinstance(data, list) else [data]
        records = parse_records(items, str(path))
        if conversations is not None:
            records = [r for r in records if r.split_key in set(conversations)]
        return records
    if memory is None:
        import tempfile

        from memory import Memory

        memory = Memory(str(Path(tempfile.mkdtemp(prefix="qrmem-")) / "seed.db") if db is None else db)
    samples = data if isinstance(data, list) else [data]
    if conversations is not None:
        samples = [s for s in samples if str(s.get("sample_id")) in set(conversations)]
    from store import parse_obj

    memory.add_sessions(parse_obj(samples, str(path), "locomo"), progress=True)
    return locomo_records(samples, memory, k, conversations=conversations)

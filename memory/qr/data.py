"""Seed and training data for head detection and QRRanker training: candidate records.

One record type, the QRRanker card's, read from a JSON list or JSONL:
`{"id", "question", "answer"?, "paragraphs": [{"idx", "title"?, "paragraph_text", "is_supporting"?}],
"summary"?, "group"?}` (`group` names the conversation/document for splits; default: the id).
Records built from a store's first stage (LoCoMo) come from `agent.locomo.load_records`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from store.errors import InputError
from store.jsonio import parse_json_or_jsonl, read_text


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
    data = parse_json_or_jsonl(read_text(path), source)
    if data == []:
        raise InputError("no records", source=source)
    return data


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


def card_records(data: Any, source: str, *, groups: Sequence[str] | None = None) -> list[Record]:
    """QRRanker-card records from parsed JSON (a list, or one record), only those of `groups` if given."""
    records = parse_records(data if isinstance(data, list) else [data], source)
    if groups is not None:
        wanted = set(groups)
        records = [r for r in records if r.split_key in wanted]
    return records


def split_and_sample(records: Sequence[Record], val_groups: Sequence[str] | None = None, *,
                     limit: int | None = None, val_limit: int | None = None,
                     seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Training and validation records: split by group (`split_by_group`), then up to `limit` /
    `val_limit` of each with a gold candidate (`sample`)."""
    train, val = split_by_group(records, val_groups, seed=seed)
    return sample(train, limit, seed), sample(val, val_limit, seed)

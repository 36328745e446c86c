"""Typed records at the store's boundary: validated input and read results."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_ID_LEN = 200
MAX_TEXT_LEN = 100_000


def _storable(value: str, what: str) -> str:
    """Text every backend stores faithfully: no NUL characters, valid Unicode (no lone surrogates)."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def check_key(value: object, what: str) -> str:
    """A user or session id as given to a lookup: the same rules as on ingest, as an InputError."""
    from .errors import InputError

    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    try:
        return _clean_id(value, what)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _clean_id(value: str, what: str) -> str:
    _storable(value, what)
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LEN:
        raise ValueError(f"{what} is longer than {MAX_ID_LEN} characters")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    return value


class TurnIn(BaseModel):
    """One utterance of a dialogue as given to `Memory.add_session`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)

    speaker: str
    text: str
    time: str | None = None  # free-form timestamp text, kept verbatim
    id: str | None = None  # external id, e.g. LoCoMo's dia_id "D3:7"
    image_caption: str | None = None  # caption of an image shared in the turn (LoCoMo blip_caption)

    @field_validator("speaker")
    @classmethod
    def _speaker(cls, v: str) -> str:
        return _clean_id(v, "speaker")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty")
        if len(v) > MAX_TEXT_LEN:
            raise ValueError(f"text is longer than {MAX_TEXT_LEN} characters")
        return _storable(v, "text")

    @field_validator("time", "image_caption")
    @classmethod
    def _optional_text(cls, v: str | None, info: ValidationInfo) -> str | None:
        limit = MAX_ID_LEN if info.field_name == "time" else MAX_TEXT_LEN
        if v is not None and len(v) > limit:
            raise ValueError(f"{info.field_name} is longer than {limit} characters")
        return None if v is None else _storable(v, info.field_name)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        return None if v is None else _clean_id(v, "turn id")


class SessionIn(BaseModel):
    """One dialogue session for one user: the unit that is written atomically."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str
    session_id: str
    date: str | None = None  # session date/time text, e.g. "1:56 pm on 8 May, 2023"
    turns: list[TurnIn] = Field(min_length=1)
    position: int | None = None  # order of the session in the conversation (default: arrival order)

    @field_validator("user_id", "session_id")
    @classmethod
    def _ids(cls, v: str, info: ValidationInfo) -> str:
        return _clean_id(v, info.field_name)

    @field_validator("date")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None and len(v) > MAX_ID_LEN:
            raise ValueError(f"date is longer than {MAX_ID_LEN} characters")
        return None if v is None else _storable(v, "date")

    @field_validator("position")
    @classmethod
    def _position(cls, v: int | None) -> int | None:
        if v is not None and not -(2**31) <= v < 2**31:
            raise ValueError("position must fit in 32 bits")
        return v

    @model_validator(mode="after")
    def _unique_turn_ids(self) -> SessionIn:
        ids = [t.id for t in self.turns if t.id is not None]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"turn ids repeat within the session: {sorted(dup)[:5]}")
        return self

    def content_hash(self) -> str:
        """Stable hash of what is stored for this session (used for idempotent re-ingest)."""
        payload = {"date": self.date, "turns": [t.model_dump() for t in self.turns]}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ChunkIn:
    """A chunk produced by a chunker: text plus the positions (in the session) of the turns it covers."""

    text: str
    turn_positions: tuple[int, ...]


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    sessions: int
    turns: int
    chunks: int
    created_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    user_id: str
    session_id: str
    date: str | None
    position: int
    turns: int
    chunks: int
    created_at: datetime


@dataclass(frozen=True)
class TurnRecord:
    position: int
    speaker: str
    text: str
    time: str | None
    id: str | None
    image_caption: str | None


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk with what a search hit needs to cite it."""

    chunk_id: int
    user_id: str
    session_id: str
    session_date: str | None
    session_position: int
    position: int
    text: str
    turn_ids: tuple[str, ...]  # external turn ids it covers (dia_ids); positions as "#n" when a turn has none


@dataclass(frozen=True)
class SummaryRecord:
    user_id: str
    kind: str  # "session" or "conversation"
    session_id: str | None
    version: int
    text: str
    model: str | None
    created_at: datetime
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class AddResult:
    """What happened to one session on ingest."""

    user_id: str
    session_id: str
    status: str  # "added", "unchanged" or "replaced"
    turns: int = 0
    chunks: int = 0


@dataclass(frozen=True)
class StoreCounts:
    users: int
    sessions: int
    turns: int
    chunks: int
    embeddings: int
    summaries: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DeleteResult:
    """What a deletion removed, and what happened to the conversation summary."""

    user_id: str
    session_id: str | None
    turns: int
    chunks: int
    summaries: int
    conversation_rolled_back_to: int | None = None  # fresh version holding the rolled-back summary
    needs_resummarize: bool = False  # later sessions must be rolled into the conversation again
    remaining: str | None = None  # secure delete: what may still hold the deleted content, and how to finish


@dataclass(frozen=True)
class CheckReport:
    """The result of `Store.check()` (`qrmem check`)."""

    ok: bool
    counts: StoreCounts
    problems: list[str]  # anything here means damage: ok is False
    warnings: list[str]  # consistent but worth knowing (e.g. chunks not embedded yet)
    checks: list[str]  # what was checked

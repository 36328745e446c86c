"""Typed records at the store's boundary: validated input and read results."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
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


# Explicit bidirectional embeddings, overrides and isolates: they make an id read as another one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _invisible_edge(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def _clean_id(value: str, what: str) -> str:
    """An id (user, session, turn) or a speaker name, exactly as given, or a ValueError. Ids are never
    rewritten: whitespace or an invisible format character at either end, control characters
    (category Cc), line/paragraph separators and bidirectional controls anywhere are refused, so
    two ids that print alike are never two keys, and no id is silently turned into another."""
    _storable(value, what)
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LEN:
        raise ValueError(f"{what} is longer than {MAX_ID_LEN} characters")
    for ch in (value[0], value[-1]):
        if _invisible_edge(ch):
            kind = "whitespace" if ch.isspace() else "an invisible format character"
            raise ValueError(f"{what} must not begin or end with {kind} (U+{ord(ch):04X})")
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            raise ValueError(f"{what} must not contain control characters (U+{ord(ch):04X})")
        if category in ("Zl", "Zp"):
            raise ValueError(f"{what} must not contain line or paragraph separators (U+{ord(ch):04X})")
        if ch in _BIDI_CONTROLS:
            raise ValueError(f"{what} must not contain bidirectional control characters (U+{ord(ch):04X})")
    return value


def shown(value: object) -> str:
    """A value as it may appear inside a one-line message: itself when it is printable text, else
    its escaped form (so whitespace, control characters and lone surrogates are visible)."""
    if isinstance(value, str) and value.isprintable():
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
    return ascii(value)


def _check_text(v: str) -> str:
    """Stored text (a turn's, a summary's): not blank, at most MAX_TEXT_LEN, storable everywhere."""
    if not v.strip():
        raise ValueError("text must not be empty")
    if len(v) > MAX_TEXT_LEN:
        raise ValueError(f"text is longer than {MAX_TEXT_LEN} characters")
    return _storable(v, "text")


def default_turn_id(session_id: str, index: int) -> str:
    """The external id the store gives a turn that has none: `SESSION:N`, N counted from 1."""
    return f"{session_id}:{index + 1}"


class TurnIn(BaseModel):
    """One utterance of a dialogue as given to `Memory.add_session`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)

    speaker: StrictStr  # a name: the same rules as ids (exact, no edge whitespace, no controls)
    text: StrictStr
    time: StrictStr | None = None  # free-form timestamp text, kept verbatim
    id: StrictStr | None = None  # external id, e.g. LoCoMo's dia_id "D3:7"
    image_caption: StrictStr | None = None  # caption of an image shared in the turn (LoCoMo blip_caption)

    @field_validator("speaker")
    @classmethod
    def _speaker(cls, v: str) -> str:
        return _clean_id(v, "speaker")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _check_text(v)

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

    user_id: StrictStr
    session_id: StrictStr
    date: StrictStr | None = None  # session date/time text, e.g. "1:56 pm on 8 May, 2023"
    turns: list[TurnIn] = Field(min_length=1)
    position: StrictInt | None = None  # order in the conversation, >= 0 (default: arrival order)

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
        if v is not None and v < 0:
            raise ValueError(f"position must be >= 0, got {v}")
        if v is not None and v >= 2**31:
            raise ValueError("position must fit in 32 bits")
        return v

    @model_validator(mode="after")
    def _unique_turn_ids(self) -> SessionIn:
        # The ids the store will hold: a turn without one is named SESSION:N.
        ids = [self.turn_id(i) for i in range(len(self.turns))]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"turn ids repeat within the session: {sorted(dup)[:5]} (a turn without "
                             "an id is named SESSION:N)")
        if any(len(i) > MAX_ID_LEN for i in ids):
            raise ValueError(f"session_id is too long to name its turns (SESSION:N must fit in "
                             f"{MAX_ID_LEN} characters): shorten it or give every turn an id")
        return self

    def turn_id(self, index: int) -> str:
        """The external id the store keeps for turn `index`: its own, else `SESSION:N`."""
        own = self.turns[index].id
        return own if own is not None else default_turn_id(self.session_id, index)

    def _hash(self, ids: list[str | None]) -> str:
        turns = [{**t.model_dump(), "id": i} for t, i in zip(self.turns, ids, strict=True)]
        blob = json.dumps({"date": self.date, "turns": turns}, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()

    def content_hash(self) -> str:
        """Stable hash of what is stored for this session (used for idempotent re-ingest). A turn
        id equal to the default the store gives (`SESSION:N`) hashes as no id, since both store the
        same: so an export (which writes the stored ids) re-imports as unchanged."""
        return self._hash([None if self.turn_id(i) == default_turn_id(self.session_id, i) else
                           self.turn_id(i) for i in range(len(self.turns))])

    def content_hashes(self) -> set[str]:
        """Every hash that means "this content is already stored": `content_hash()`, and the forms
        stored before turn ids were normalised (ids exactly as given; every default id written
        out), so stores written by older versions need no migration."""
        return {self.content_hash(), self._hash([t.id for t in self.turns]),
                self._hash([self.turn_id(i) for i in range(len(self.turns))])}


MAX_META_CHARS = 10_000  # a summary's metadata, as JSON
MAX_MODEL_LEN = 300


def _check_meta(value: Any, depth: int = 0) -> None:
    """Summary metadata holds only storable text (JSON columns on every backend), not too deep."""
    if depth > 20:
        raise ValueError("meta is nested too deeply")
    if isinstance(value, str):
        _storable(value, "meta")
    elif isinstance(value, dict):
        for k, v in value.items():
            _storable(k, "meta key")
            _check_meta(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_meta(v, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("meta must not hold NaN or infinite numbers")


class SummaryIn(BaseModel):
    """A stored summary as an export carries it (`summaries` of a qrmem JSON record): its owner is
    the record's user. The latest `version` of each (kind, session) is what an import restores."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Literal["session", "conversation"]
    session_id: str | None = None
    version: int | None = None
    text: str
    model: str | None = None
    meta: dict[str, Any] | None = None  # e.g. {"through_session": "s3"} on a conversation summary

    @field_validator("session_id")
    @classmethod
    def _session(cls, v: str | None) -> str | None:
        return None if v is None else _clean_id(v, "session_id")

    @field_validator("version")
    @classmethod
    def _version(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v < 2**31:
            raise ValueError(f"version must be a positive 32-bit integer, got {v}")
        return v

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _check_text(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and len(v) > MAX_MODEL_LEN:
            raise ValueError(f"model is longer than {MAX_MODEL_LEN} characters")
        return None if v is None else _storable(v, "model")

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        _check_meta(v)
        if len(json.dumps(v, ensure_ascii=False)) > MAX_META_CHARS:
            raise ValueError(f"meta is longer than {MAX_META_CHARS} characters as JSON")
        through = v.get("through_session")
        if through is not None:
            if not isinstance(through, str):
                raise ValueError("meta.through_session must be a session id or null")
            _clean_id(through, "meta.through_session")
        return v

    @model_validator(mode="after")
    def _scope(self) -> SummaryIn:
        if (self.kind == "session") != (self.session_id is not None):
            raise ValueError("a session summary needs session_id; a conversation summary takes none")
        return self

    @property
    def through_session(self) -> str | None:
        """The last session rolled into a conversation summary (None: none, or a session summary)."""
        return (self.meta or {}).get("through_session") if self.kind == "conversation" else None


@dataclass(frozen=True)
class ChunkIn:
    """A chunk produced by a chunker: text plus the positions (in the session) of the turns it covers,
    and optionally notes stored beside it (`time_notes`: its relative time expressions grounded
    against the session date, e.g. `yesterday = 7 May 2023`; the store keeps them as given)."""

    text: str
    turn_positions: tuple[int, ...]
    time_notes: str | None = None


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
    time_notes: str | None = None  # relative time expressions grounded at ingest (None: none, or not grounded)


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


@dataclass(frozen=True)
class IndexChanges:
    """What `Store.index_changes` found: the user's revision now (None: no such user), the chunks
    added and the chunk ids removed since the index's revision, the added chunks' vectors; or
    `full` when the index must be reloaded from scratch."""

    revision: int | None
    added: list[ChunkRecord] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    vectors: dict[int, Any] = field(default_factory=dict)
    full: bool = False

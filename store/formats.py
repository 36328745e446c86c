"""Input formats: LoCoMo (`locomo10.json`, a list of samples or one sample) and qrmem's chat-log format.

qrmem chat-log format (also what `qrmem export` writes), JSON:

    {"user_id": "alice", "speakers": ["alice", "bot"],            # speakers: optional
     "sessions": [{"session_id": "s1", "date": "8 May 2023",      # date, position: optional
                   "turns": [{"speaker": "alice", "text": "...", "time": "...", "id": "s1:1"}]}],
     "summaries": [{"kind": "session", "session_id": "s1", "text": "...", "meta": {...}}],  # optional
     "format": "qrmem.v1"}                                          # optional; exports carry it

or a JSON list of such objects. JSONL: one session per line,
`{"user_id": ..., "session_id": ..., "date": ..., "turns": [...]}`.
When `speakers` is given, a turn by anyone else is an error. A session belongs to its record's user:
a session-level `user_id` naming anyone else is an error. Types are strict (a position is a
non-negative integer, unique per user within one input; a LoCoMo sample_id a string or integer).

Everything is parsed and validated before anything is written; errors name the file, the record and
the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import InputError
from .jsonio import jsonl_lines, parse_json, read_text
from .store import EXPORT_FORMAT
from .types import MAX_ID_LEN, SessionIn, SummaryIn, _clean_id, shown

FORMATS = ("auto", "locomo", "qrmem", "jsonl")
_SESSION_KEY = re.compile(r"session_([0-9]+)")


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _build(source: str, record: str, prefix: str, data: dict[str, Any],
           turns_at: str | None = None) -> SessionIn:
    """Validate one session; errors name the field as a path in the input file.

    `turns_at` is where the turns list sits in the file when that is not `<prefix>.turns`.
    """
    try:
        return SessionIn.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        if turns_at is not None and loc[:1] == ["turns"]:
            field = turns_at + _loc(loc[1:])
        else:
            field = _loc([*([prefix] if prefix else []), *loc]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(msg, source=source, record=record, field=field) from None


def _require(obj: Any, key: str, kind: type | tuple[type, ...], source: str, record: str,
             field: str | None = None) -> Any:
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", source=source, record=record, field=field)
    if key not in obj:
        raise InputError("missing", source=source, record=record, field=f"{field}.{key}" if field else key)
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"expected {names}, got {type(value).__name__}", source=source,
                         record=record, field=f"{field}.{key}" if field else key)
    return value


def _speaker_name(value: Any, source: str, record: str, field: str) -> str:
    """A declared speaker name (LoCoMo speaker_a/b, qrmem `speakers`): the rules of a turn's speaker."""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", source=source, record=record,
                         field=field)
    try:
        return _clean_id(value, "speaker")
    except ValueError as exc:
        raise InputError(str(exc), source=source, record=record, field=field) from None


def _check_speakers(session: SessionIn, speakers: set[str] | None, source: str, record: str,
                    prefix: str, turns_at: str | None = None) -> None:
    if not speakers:
        return
    for i, turn in enumerate(session.turns):
        if turn.speaker not in speakers:
            raise InputError(f"unknown speaker {turn.speaker!r}; expected one of {sorted(speakers)}",
                             source=source, record=record, field=f"{turns_at or prefix + '.turns'}[{i}].speaker")


# -- LoCoMo -----------------------------------------------------------------------------------------

def parse_locomo_sample(sample: Any, source: str, index: int) -> list[SessionIn]:
    """One LoCoMo sample -> its sessions, in session-number order; user_id = sample_id."""
    record = f"#{index}"
    sample_id = _require(sample, "sample_id", (str, int), source, record)
    if isinstance(sample_id, int) and not -(10**MAX_ID_LEN) < sample_id < 10**MAX_ID_LEN:
        raise InputError(f"user id is longer than {MAX_ID_LEN} characters", source=source,
                         record=record, field="sample_id")
    record = f"#{index} ({shown(str(sample_id))})"
    conv = _require(sample, "conversation", dict, source, record)
    speakers = {
        _speaker_name(_require(conv, key, str, source, record, "conversation"), source, record,
                      f"conversation.{key}")
        for key in ("speaker_a", "speaker_b")
    }
    keys: dict[int, str] = {}  # session number -> its key in the file
    for k in conv:
        if (m := _SESSION_KEY.fullmatch(k)) is None:
            continue
        n = int(m.group(1))
        if n in keys:
            first, second = sorted((keys[n], k))
            raise InputError(f"{first!r} and {second!r} are both session {n}; keep one of them",
                             source=source, record=record, field="conversation")
        keys[n] = k
    if not keys:
        raise InputError("no session_N lists", source=source, record=record, field="conversation")
    out = []
    for n in sorted(keys):
        key = keys[n]
        field = f"conversation.{key}"
        raw_turns = conv[key]
        if not isinstance(raw_turns, list):
            raise InputError(f"expected a list, got {type(raw_turns).__name__}", source=source,
                             record=record, field=field)
        if not raw_turns:
            continue  # LoCoMo files may carry empty placeholder sessions
        date = conv.get(f"{key}_date_time")
        if date is not None and not isinstance(date, str):
            raise InputError("expected a string", source=source, record=record,
                             field=f"conversation.{key}_date_time")
        turns = []
        for i, t in enumerate(raw_turns):
            tf = f"{field}[{i}]"
            turns.append({
                "speaker": _require(t, "speaker", str, source, record, tf),
                "text": _require(t, "text", str, source, record, tf),
                "id": t.get("dia_id"),
                "image_caption": t.get("blip_caption"),
            })
        session = _build(source, record, field, {
            "user_id": str(sample_id), "session_id": f"session_{n}", "date": date,
            "position": n, "turns": turns,
        }, turns_at=field)
        _check_speakers(session, speakers, source, record, field, turns_at=field)
        out.append(session)
    return out


# -- qrmem chat-log format -------------------------------------------------------------------------

def parse_user_log(obj: Any, source: str, index: int) -> list[SessionIn]:
    return parse_user_record(obj, source, index)[0]


def parse_user_record(obj: Any, source: str, index: int) -> tuple[list[SessionIn], list[SummaryIn]]:
    """One qrmem JSON record -> its sessions and its summaries (all validated)."""
    record = f"#{index}"
    user_id = _require(obj, "user_id", str, source, record)
    record = f"#{index} ({shown(user_id)})"
    allowed = {k for k in obj if k in {"user_id", "speakers", "sessions", "format", "summaries"}}
    extra = set(obj) - allowed
    if extra:
        raise InputError(f"unknown keys {sorted(extra)}", source=source, record=record)
    if "format" in obj and obj["format"] != EXPORT_FORMAT:
        raise InputError(f"expected {EXPORT_FORMAT!r} (the format this qrmem reads), got "
                         f"{obj['format']!r}", source=source, record=record, field="format")
    speakers = None
    if obj.get("speakers") is not None:
        declared = obj["speakers"]
        if not isinstance(declared, list):
            raise InputError(f"expected a list of names, got {type(declared).__name__}", source=source,
                             record=record, field="speakers")
        if not declared:
            raise InputError("speakers must list at least one speaker (or be left out)", source=source,
                             record=record, field="speakers")
        speakers = {_speaker_name(name, source, record, f"speakers[{i}]") for i, name in enumerate(declared)}
    sessions = _require(obj, "sessions", list, source, record)
    out = []
    for j, s in enumerate(sessions):
        field = f"sessions[{j}]"
        if not isinstance(s, dict):
            raise InputError("expected a JSON object", source=source, record=record, field=field)
        if "user_id" in s and s["user_id"] != user_id:
            # A session is its record's user's: it never writes into another user's memory.
            raise InputError(f"the session names user {s['user_id']!r} but belongs to the record's "
                             f"user {user_id!r}; remove its user_id or move it to that user's record",
                             source=source, record=record, field=f"{field}.user_id")
        session = _build(source, record, field, {**s, "user_id": user_id})
        _check_speakers(session, speakers, source, record, field)
        out.append(session)
    return out, _parse_summaries(obj, out, source, record)


def _parse_summaries(obj: dict[str, Any], sessions: list[SessionIn], source: str,
                     record: str) -> list[SummaryIn]:
    raw = obj.get("summaries")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InputError(f"expected a list of summary objects, got {type(raw).__name__}", source=source,
                         record=record, field="summaries")
    known = {s.session_id for s in sessions}
    seen: set[tuple[str, str | None, int | None]] = set()
    out = []
    for i, item in enumerate(raw):
        field = f"summaries[{i}]"
        if not isinstance(item, dict):
            raise InputError("expected a JSON object", source=source, record=record, field=field)
        try:
            summary = SummaryIn.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(err["msg"].removeprefix("Value error, "), source=source, record=record,
                             field=_loc([field, *err["loc"]])) from None
        if summary.session_id is not None and summary.session_id not in known:
            raise InputError(f"session {summary.session_id!r} is not in this record's sessions",
                             source=source, record=record, field=f"{field}.session_id")
        if summary.through_session is not None and summary.through_session not in known:
            raise InputError(f"session {summary.through_session!r} is not in this record's sessions",
                             source=source, record=record, field=f"{field}.meta.through_session")
        key = (summary.kind, summary.session_id, summary.version)
        if summary.version is not None and key in seen:
            raise InputError(f"version {summary.version} of this summary appears twice", source=source,
                             record=record, field=f"{field}.version")
        seen.add(key)
        out.append(summary)
    return out


def parse_jsonl(text: str, source: str) -> list[SessionIn]:
    out = []
    for n, line in jsonl_lines(text):  # split on "\n" only: JSON strings may hold U+2028 and kin
        obj = parse_json(line, source, record=f"line {n}")
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", source=source, record=f"line {n}")
        out.append(_build(source, f"line {n}", "", obj))
    return out


# -- entry points ------------------------------------------------------------------------------------

def parse_obj(data: Any, source: str, fmt: str = "auto") -> list[SessionIn]:
    """Parse already-loaded JSON in LoCoMo or qrmem format."""
    items = data if isinstance(data, list) else [data]
    if fmt == "auto":
        first = items[0] if items else None
        if isinstance(first, dict) and "conversation" in first:
            fmt = "locomo"
        elif isinstance(first, dict) and ("sessions" in first or "user_id" in first):
            fmt = "qrmem"
        else:
            raise InputError("cannot tell the format: expected LoCoMo samples (with 'conversation') "
                             "or qrmem chat logs (with 'sessions'); pass --format", source=source)
    parse = {"locomo": parse_locomo_sample, "qrmem": parse_user_log}.get(fmt)
    if parse is None:
        raise InputError(f"format {fmt!r} does not apply to a JSON document; use locomo or qrmem",
                         source=source)
    sessions = [s for i, item in enumerate(items) for s in parse(item, source, i)]
    check_unique(sessions, source)
    return sessions


def check_unique(sessions: list[SessionIn], source: str) -> None:
    """Within one input, a (user, session id) appears once, and so does a (user, position)."""
    seen: set[tuple[str, str]] = set()
    positions: dict[tuple[str, int], str] = {}
    for s in sessions:
        key = (s.user_id, s.session_id)
        if key in seen:
            raise InputError(f"session {s.session_id!r} of user {s.user_id!r} appears twice in the input",
                             source=source, record=s.user_id)
        seen.add(key)
        if s.position is not None:
            other = positions.setdefault((s.user_id, s.position), s.session_id)
            if other != s.session_id:
                raise InputError(f"sessions {other!r} and {s.session_id!r} of user {s.user_id!r} both "
                                 f"have position {s.position}", source=source, record=s.user_id)


def load_file(path: str | Path, fmt: str = "auto") -> list[SessionIn]:
    """Read and validate a whole input file; nothing is written anywhere."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}", source=str(path))
    path = Path(path)
    source = str(path)
    text = read_text(path)
    if not text.strip():
        raise InputError("file is empty", source=source)
    if fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() == ".jsonl"):
        sessions = parse_jsonl(text, source)
        check_unique(sessions, source)
        if not sessions:
            raise InputError("no sessions in file", source=source)
        return sessions
    data = parse_json(text, source)
    if not isinstance(data, (list, dict)) or data == []:
        raise InputError("expected a JSON object or a non-empty list", source=source)
    return parse_obj(data, source, fmt)

"""Input formats: LoCoMo (`locomo10.json`, a list of samples or one sample) and qrmem's chat-log format.

qrmem chat-log format (also what `qrmem export` writes), JSON:

    {"user_id": "alice", "speakers": ["alice", "bot"],            # speakers: optional
     "sessions": [{"session_id": "s1", "date": "8 May 2023",      # date: optional
                   "turns": [{"speaker": "alice", "text": "...", "time": "...", "id": "s1:1"}]}]}

or a JSON list of such objects. JSONL: one session per line,
`{"user_id": ..., "session_id": ..., "date": ..., "turns": [...]}`.
When `speakers` is given, a turn by anyone else is an error.

Everything is parsed and validated before anything is written; errors name the file, the record and
the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import InputError
from .types import SessionIn

FORMATS = ("auto", "locomo", "qrmem", "jsonl")
_SESSION_KEY = re.compile(r"session_(\d+)")


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
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"expected {names}, got {type(value).__name__}", source=source,
                         record=record, field=f"{field}.{key}" if field else key)
    return value


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
    record = f"#{index} ({sample_id})"
    conv = _require(sample, "conversation", dict, source, record)
    speakers = {
        str(_require(conv, key, str, source, record, "conversation")) for key in ("speaker_a", "speaker_b")
    }
    numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION_KEY.fullmatch(k)))
    if not numbers:
        raise InputError("no session_N lists", source=source, record=record, field="conversation")
    out = []
    for n in numbers:
        field = f"conversation.session_{n}"
        raw_turns = conv[f"session_{n}"]
        if not isinstance(raw_turns, list):
            raise InputError(f"expected a list, got {type(raw_turns).__name__}", source=source,
                             record=record, field=field)
        if not raw_turns:
            continue  # LoCoMo files may carry empty placeholder sessions
        date = conv.get(f"session_{n}_date_time")
        if date is not None and not isinstance(date, str):
            raise InputError("expected a string", source=source, record=record,
                             field=f"conversation.session_{n}_date_time")
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
    record = f"#{index}"
    user_id = _require(obj, "user_id", str, source, record)
    record = f"#{index} ({user_id})"
    speakers = obj.get("speakers")
    if speakers is not None and not (isinstance(speakers, list) and all(isinstance(s, str) for s in speakers)):
        raise InputError("expected a list of strings", source=source, record=record, field="speakers")
    allowed = {k for k in obj if k in {"user_id", "speakers", "sessions", "format", "summaries"}}
    extra = set(obj) - allowed
    if extra:
        raise InputError(f"unknown keys {sorted(extra)}", source=source, record=record)
    sessions = _require(obj, "sessions", list, source, record)
    out = []
    for j, s in enumerate(sessions):
        field = f"sessions[{j}]"
        if not isinstance(s, dict):
            raise InputError("expected a JSON object", source=source, record=record, field=field)
        session = _build(source, record, field, {"user_id": user_id, **s})
        _check_speakers(session, set(speakers) if speakers else None, source, record, field)
        out.append(session)
    return out


def parse_jsonl(text: str, source: str) -> list[SessionIn]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=source,
                             record=f"line {n}") from None
        except RecursionError:
            raise InputError("JSON nested too deeply", source=source, record=f"line {n}") from None
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
    seen: set[tuple[str, str]] = set()
    for s in sessions:
        key = (s.user_id, s.session_id)
        if key in seen:
            raise InputError(f"session {s.session_id!r} of user {s.user_id!r} appears twice in the input",
                             source=source, record=s.user_id)
        seen.add(key)


def load_file(path: str | Path, fmt: str = "auto") -> list[SessionIn]:
    """Read and validate a whole input file; nothing is written anywhere."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}", source=str(path))
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a JSON or JSONL file", source=source) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"cannot read: {exc}", source=source) from None
    if not text.strip():
        raise InputError("file is empty", source=source)
    if fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() == ".jsonl"):
        sessions = parse_jsonl(text, source)
        check_unique(sessions, source)
        if not sessions:
            raise InputError("no sessions in file", source=source)
        return sessions
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                         source=source) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", source=source) from None
    if not isinstance(data, (list, dict)) or data == []:
        raise InputError("expected a JSON object or a non-empty list", source=source)
    return parse_obj(data, source, fmt)

"""Import of what `Store.export_user` writes: sessions and, with them, the summaries.

An import writes sessions the way an ingest does (identical ones are `unchanged`), then restores
each summary the store does not hold yet: the latest version per session, and the conversation
summary with its `through_session`, so the rolling summaries go on where they stopped. A summary the
store already holds is kept as it is: importing your own export changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConcurrentUpdateError, InputError
from .formats import check_unique, parse_user_record
from .jsonio import read_json_file
from .redact import get_logger
from .types import SessionIn, SummaryIn

if TYPE_CHECKING:
    from .store import Store

log = get_logger(__name__)


@dataclass(frozen=True)
class ImportData:
    """A validated export: its sessions in file order, and each user's summaries."""

    sessions: list[SessionIn]
    summaries: dict[str, list[SummaryIn]] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(s.user_id for s in self.sessions))


def parse_import(data: Any, source: str = "<import>") -> ImportData:
    """A qrmem JSON document (one record or a list of them), validated in full."""
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InputError("expected a qrmem JSON object or a non-empty list of them", source=source)
    sessions: list[SessionIn] = []
    summaries: dict[str, list[SummaryIn]] = defaultdict(list)
    for i, item in enumerate(items):
        found, summ = parse_user_record(item, source, i)
        sessions += found
        if found:
            summaries[found[0].user_id] += summ
        elif summ:
            raise InputError("summaries without sessions", source=source, record=f"#{i}")
    check_unique(sessions, source)
    return ImportData(sessions, dict(summaries))


def load_import(path: str | Path) -> ImportData:
    """Read and validate an export file; nothing is written anywhere."""
    return parse_import(read_json_file(path), str(path))


def _latest(summaries: list[SummaryIn]) -> dict[tuple[str, str | None], SummaryIn]:
    """The newest summary of each scope: the highest version, else the last one listed."""
    out: dict[tuple[str, str | None], SummaryIn] = {}
    for s in summaries:
        key = (s.kind, s.session_id)
        old = out.get(key)
        if old is None or (s.version or 0) >= (old.version or 0):
            out[key] = s
    return out


def restore_summaries(store: Store, data: ImportData) -> int:
    """Write the imported summaries the store lacks (its sessions must be stored first). Returns
    how many were written."""
    written = 0
    for user, summaries in data.summaries.items():
        stored = {(s.kind, s.session_id) for s in store.summaries(user)}
        latest = _latest(summaries)
        for (kind, session_id), s in sorted(latest.items(), key=lambda kv: kv[0][0] == "conversation"):
            if (kind, session_id) in stored:
                continue  # the store's own is kept
            if kind == "session":
                store.add_summary(user, "session", s.text, session_id=session_id, model=s.model, meta=s.meta)
            elif _covers_stored_sessions(store, user, s, data):
                try:
                    store.add_summary(user, "conversation", s.text, model=s.model, meta=s.meta,
                                      if_version=store.conversation_version(user))
                except ConcurrentUpdateError:  # another process rolled it meanwhile: theirs stands
                    continue
            else:
                continue
            written += 1
    return written


def _covers_stored_sessions(store: Store, user: str, summary: SummaryIn, data: ImportData) -> bool:
    """A conversation summary rolled through session S may stand only if every stored session up
    to S is one it was made from (else `catch_up` would never roll the others in)."""
    through = summary.through_session
    if through is None:
        return True
    imported = {s.session_id for s in data.sessions if s.user_id == user}
    stored = store.sessions(user)
    position = next((s.position for s in stored if s.session_id == through), None)
    if position is None:
        return False
    missing = [s.session_id for s in stored if s.position <= position and s.session_id not in imported]
    if missing:
        log.warning("the imported conversation summary of %s is not restored: it was made without "
                    "stored sessions %s; `qrmem summarize --user %s` rolls them in", user, missing[:5], user)
        return False
    return True

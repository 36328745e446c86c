"""Summary versioning: session and conversation summaries are appended as numbered versions, never
edited. A conversation summary's `meta.through_session` names the last session rolled into it.

Version numbers are never reused: rolling back (a session deleted, replaced or inserted before ones
already rolled in) deletes the stale versions and writes the survivor again under a fresh number, so a
process still rolling from a stale version fails its optimistic check (`if_version`). Every function
runs inside the caller's transaction (`Store` owns the transactions).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select

from . import schema as t
from .errors import ConcurrentUpdateError
from .types import SummaryRecord


def latest_version(conn: Connection, user_pk: int, kind: str, session_pk: int | None) -> int:
    """The newest version number of one summary (0: none yet), roll-back markers included."""
    return int(conn.scalar(select(func.max(t.summaries.c.version)).where(
        t.summaries.c.user_id == user_pk, t.summaries.c.kind == kind,
        t.summaries.c.session_id.is_(None) if session_pk is None
        else t.summaries.c.session_id == session_pk)) or 0)


def append(conn: Connection, user_pk: int, session_pk: int | None, kind: str, text: str, *,
           model: str | None, meta: dict[str, Any] | None, if_version: int | None, now: datetime,
           who: str) -> int:
    """Write the next version; with `if_version`, only if the newest is still that one."""
    last = latest_version(conn, user_pk, kind, session_pk)
    if if_version is not None and last != if_version:
        raise ConcurrentUpdateError(
            f"the {kind} summary of {who} is at version {last}, not {if_version}: another process "
            "updated it; read it again")
    conn.execute(t.summaries.insert().values(
        user_id=user_pk, session_id=session_pk, kind=kind, version=last + 1, text=text,
        model=model, meta=meta, created_at=now))
    return last + 1


def read(conn: Connection, user_pk: int, user_id: str, *, latest: bool) -> list[SummaryRecord]:
    """A user's summaries in order (only the newest version of each with `latest`); roll-back
    markers (empty conversation versions) are left out."""
    rows = conn.execute(
        select(t.summaries.c.kind, t.sessions.c.external_id, t.summaries.c.version,
               t.summaries.c.text, t.summaries.c.model, t.summaries.c.created_at, t.summaries.c.meta)
        .outerjoin(t.sessions, t.sessions.c.id == t.summaries.c.session_id)
        .where(t.summaries.c.user_id == user_pk)
        .order_by(t.summaries.c.kind, t.sessions.c.position, t.summaries.c.version)).all()
    out = [SummaryRecord(user_id, *r) for r in rows]
    if latest:
        newest: dict[tuple[str, str | None], SummaryRecord] = {}
        for s in out:
            newest[(s.kind, s.session_id)] = s
        out = list(newest.values())
    return [s for s in out if s.text]


def roll_back_conversation(conn: Connection, user_pk: int, position: int, session_id: str,
                           now: datetime) -> tuple[int, int | None, bool]:
    """Undo every conversation-summary version that rolled in a session at `position` or later.
    The stale versions are deleted and the newest surviving one is written again under a fresh
    version number (an empty marker when none survives). Returns (versions deleted, the fresh
    version or None when nothing was stale, whether later sessions need rolling again)."""
    conv = conn.execute(select(t.summaries.c.id, t.summaries.c.version, t.summaries.c.text,
                               t.summaries.c.model, t.summaries.c.meta)
                        .where(t.summaries.c.user_id == user_pk, t.summaries.c.kind == "conversation")
                        .order_by(t.summaries.c.version)).all()
    positions = dict(conn.execute(select(t.sessions.c.external_id, t.sessions.c.position)
                                  .where(t.sessions.c.user_id == user_pk)).all())

    def through_position(row: Any) -> int | None:
        through = (row.meta or {}).get("through_session")
        return positions.get(through) if through is not None else None

    first_stale = next((r.version for r in conv
                        if (pos := through_position(r)) is not None and pos >= position), None)
    if first_stale is None:
        return 0, None, False
    stale = [r for r in conv if r.version >= first_stale]
    kept = [r for r in conv if r.version < first_stale and r.text]
    needs = any((r.meta or {}).get("through_session") != session_id for r in stale)
    conn.execute(delete(t.summaries).where(t.summaries.c.id.in_([r.id for r in stale])))
    fresh = conv[-1].version + 1
    last = kept[-1] if kept else None
    conn.execute(t.summaries.insert().values(
        user_id=user_pk, session_id=None, kind="conversation", version=fresh,
        text=last.text if last else "", model=last.model if last else None,
        meta={**((last.meta or {}) if last else {"through_session": None}),
              "rolled_back_from": session_id}, created_at=now))
    return len(stale), fresh, needs

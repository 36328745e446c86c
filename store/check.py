"""The store's integrity check (`qrmem check`, `Store.check()`): the database's own checks, orphans,
half-written sessions, embeddings against chunks, summary versions. Read-only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from . import schema as t
from .migrations import MIGRATIONS, applied


def find_problems(conn: Connection) -> tuple[list[str], list[str], list[str]]:
    """(problems, warnings, checks run) for the database behind `conn` (one snapshot)."""
    problems: list[str] = []
    warnings: list[str] = []
    checks: list[str] = []

    def expect_none(name: str, query: Any) -> None:
        checks.append(name)
        n = int(conn.scalar(select(func.count()).select_from(query.subquery())) or 0)
        if n:
            problems.append(f"{name}: {n}")

    if conn.dialect.name == "sqlite":
        checks.append("sqlite integrity_check")
        bad = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"sqlite integrity_check: {m}" for m in bad[:20]]
        checks.append("sqlite foreign_key_check")
        fk = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if fk:
            problems.append(f"foreign keys violated: {len(fk)} rows, e.g. {tuple(fk[0])}")
    checks.append("migrations")
    missing = [name for name, _ in MIGRATIONS if name not in set(applied(conn))]
    if missing:
        problems.append(f"migrations not applied: {missing}")
    s_, u, tu, c, ct, e, sm = t.sessions, t.users, t.turns, t.chunks, t.chunk_turns, t.embeddings, t.summaries
    expect_none("sessions without a user", select(s_.c.id).where(~select(u.c.id).where(u.c.id == s_.c.user_id).exists()))
    expect_none("turns without a session", select(tu.c.id).where(~select(s_.c.id).where(s_.c.id == tu.c.session_id).exists()))
    expect_none("chunks without a session", select(c.c.id).where(~select(s_.c.id).where(s_.c.id == c.c.session_id).exists()))
    expect_none("chunks whose user differs from their session's",
                select(c.c.id).join(s_, s_.c.id == c.c.session_id).where(s_.c.user_id != c.c.user_id))
    expect_none("chunk-turn links to a missing chunk or turn", select(ct.c.chunk_id).where(
        ~select(c.c.id).where(c.c.id == ct.c.chunk_id).exists()
        | ~select(tu.c.id).where(tu.c.id == ct.c.turn_id).exists()))
    expect_none("chunk-turn links across sessions", select(ct.c.chunk_id)
                .join(c, c.c.id == ct.c.chunk_id).join(tu, tu.c.id == ct.c.turn_id)
                .where(c.c.session_id != tu.c.session_id))
    expect_none("sessions without turns (half-written)", select(s_.c.id).where(
        ~select(tu.c.id).where(tu.c.session_id == s_.c.id).exists()))
    expect_none("sessions without chunks (half-written)", select(s_.c.id).where(
        ~select(c.c.id).where(c.c.session_id == s_.c.id).exists()))
    expect_none("chunks covering no turn", select(c.c.id).where(
        ~select(ct.c.chunk_id).where(ct.c.chunk_id == c.c.id).exists()))
    expect_none("turns in no chunk", select(tu.c.id).where(
        ~select(ct.c.turn_id).where(ct.c.turn_id == tu.c.id).exists()))
    expect_none("embeddings without a chunk", select(e.c.chunk_id).where(
        ~select(c.c.id).where(c.c.id == e.c.chunk_id).exists()))
    expect_none("embeddings whose size is not dim x 4 bytes",
                select(e.c.chunk_id).where(func.length(e.c.vector) != e.c.dim * 4))
    checks.append("embeddings vs chunks")
    n_chunks = int(conn.scalar(select(func.count()).select_from(c)) or 0)
    bare = int(conn.scalar(select(func.count()).select_from(c).where(
        ~select(e.c.chunk_id).where(e.c.chunk_id == c.c.id).exists())) or 0)
    if bare:
        warnings.append(f"{bare} chunks have no vector yet (`qrmem reindex` stores them)")
    for model, n, dims in conn.execute(select(e.c.model, func.count(), func.count(e.c.dim.distinct()))
                                       .group_by(e.c.model)):
        if n < n_chunks:
            warnings.append(f"embedding model {model!r} has vectors for {n} of {n_chunks} chunks")
        if dims != 1:
            problems.append(f"embedding model {model!r}: vectors of {dims} different sizes")
    expect_none("summaries without a user", select(sm.c.id).where(
        ~select(u.c.id).where(u.c.id == sm.c.user_id).exists()))
    expect_none("session summaries without their session", select(sm.c.id).where(
        sm.c.kind == "session", ~select(s_.c.id).where(s_.c.id == sm.c.session_id).exists()))
    expect_none("duplicate summary versions", select(sm.c.user_id).group_by(
        sm.c.user_id, sm.c.kind, sm.c.session_id, sm.c.version).having(func.count() > 1))
    return problems, warnings, checks

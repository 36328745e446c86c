"""The store: users, sessions, turns, chunks, embeddings and summaries behind one small API.

Durability rules: every public write is one transaction (SQLite: BEGIN IMMEDIATE), the input is
validated before it starts, and the owning user's `revision` is bumped inside it so that caches in
any process can tell that their copy is stale.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from . import schema as t
from .db import create_store_engine, resolve_url
from .errors import InputError, NotFoundError, SessionConflictError, StoreError
from .migrations import migrate
from .types import (
    AddResult,
    ChunkIn,
    ChunkRecord,
    SessionIn,
    SessionInfo,
    StoreCounts,
    SummaryRecord,
    TurnRecord,
    UserInfo,
)

log = logging.getLogger(__name__)

EXPORT_FORMAT = "qrmem.v1"


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """A qrmem store on any SQLAlchemy URL or SQLite file path (None: `$QRMEM_DB` or the data dir)."""

    def __init__(self, db: str | os.PathLike[str] | None = None) -> None:
        self.url = resolve_url(db)
        self._engine: Engine | None = None

    # -- connection ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, created and migrated on first use."""
        if self._engine is None:
            engine = create_store_engine(self.url)
            try:
                migrate(engine)
            except (OperationalError, DBAPIError) as exc:
                engine.dispose()
                raise StoreError(f"cannot open database {self.safe_url}: {exc.orig}") from None
            self._engine = engine
        return self._engine

    @property
    def safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(qrmem_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- users and sessions --------------------------------------------------------------------------

    @staticmethod
    def _user_pk(conn: Connection, user_id: str) -> int | None:
        return conn.scalar(select(t.users.c.id).where(t.users.c.external_id == user_id))

    def _require_user(self, conn: Connection, user_id: str) -> int:
        pk = self._user_pk(conn, user_id)
        if pk is None:
            raise NotFoundError(f"no user {user_id!r} in {self.safe_url}; `qrmem info` lists the users")
        return pk

    @staticmethod
    def _bump(conn: Connection, user_pk: int) -> None:
        conn.execute(update(t.users).where(t.users.c.id == user_pk)
                     .values(revision=t.users.c.revision + 1))

    def session_status(self, session: SessionIn) -> str:
        """`new`, `unchanged` (stored with identical content) or `conflict` (stored, different)."""
        with self._read() as conn:
            stored = conn.scalar(
                select(t.sessions.c.content_hash)
                .join(t.users, t.users.c.id == t.sessions.c.user_id)
                .where(t.users.c.external_id == session.user_id,
                       t.sessions.c.external_id == session.session_id))
        if stored is None:
            return "new"
        return "unchanged" if stored == session.content_hash() else "conflict"

    def add_session(self, session: SessionIn, chunks: Sequence[ChunkIn], *, chunker: str,
                    embedding_model: str | None = None, vectors: np.ndarray | None = None,
                    replace: bool = False) -> AddResult:
        """Write one session with its turns, chunks and (optionally) chunk embeddings, atomically.

        Identical content already stored is a no-op (`unchanged`); different content is a
        `SessionConflictError` unless `replace`, which swaps the old session for the new one.
        """
        self._check_chunks(session, chunks, embedding_model, vectors)
        digest = session.content_hash()
        try:
            with self._write() as conn:
                user_pk = self._user_pk(conn, session.user_id)
                if user_pk is None:
                    user_pk = conn.execute(t.users.insert().values(
                        external_id=session.user_id, revision=0, created_at=_now())).inserted_primary_key[0]
                row = conn.execute(select(t.sessions.c.id, t.sessions.c.content_hash,
                                          t.sessions.c.position).where(
                    t.sessions.c.user_id == user_pk, t.sessions.c.external_id == session.session_id)).first()
                status = "added"
                position = session.position
                if row is not None:
                    if row.content_hash == digest and not replace:
                        return AddResult(session.user_id, session.session_id, "unchanged")
                    if not replace:
                        raise SessionConflictError(
                            f"session {session.session_id!r} of user {session.user_id!r} is already "
                            "stored with different content; pass --replace (replace=True) to overwrite it")
                    conn.execute(delete(t.sessions).where(t.sessions.c.id == row.id))
                    position = row.position if position is None else position
                    status = "replaced"
                if position is None:
                    last = conn.scalar(select(func.max(t.sessions.c.position))
                                       .where(t.sessions.c.user_id == user_pk))
                    position = 0 if last is None else last + 1
                session_pk = conn.execute(t.sessions.insert().values(
                    user_id=user_pk, external_id=session.session_id, date_text=session.date,
                    position=position, content_hash=digest, chunker=chunker,
                    created_at=_now())).inserted_primary_key[0]
                turn_pks = list(conn.scalars(
                    t.turns.insert().returning(t.turns.c.id, sort_by_parameter_order=True),
                    [{"session_id": session_pk, "position": i, "speaker": turn.speaker,
                      "text": turn.text, "time_text": turn.time, "image_caption": turn.image_caption,
                      "external_id": turn.id if turn.id is not None else f"{session.session_id}:{i + 1}"}
                     for i, turn in enumerate(session.turns)]))
                chunk_pks = list(conn.scalars(
                    t.chunks.insert().returning(t.chunks.c.id, sort_by_parameter_order=True),
                    [{"session_id": session_pk, "user_id": user_pk, "position": i, "text": c.text}
                     for i, c in enumerate(chunks)]))
                conn.execute(t.chunk_turns.insert(), [
                    {"chunk_id": pk, "turn_id": turn_pks[p]}
                    for pk, c in zip(chunk_pks, chunks, strict=True) for p in c.turn_positions])
                if vectors is not None and embedding_model is not None:
                    self._insert_embeddings(conn, embedding_model, chunk_pks, vectors)
                self._bump(conn, user_pk)
        except IntegrityError as exc:
            # A concurrent writer stored the same session first: report what is there now.
            status_now = self.session_status(session)
            if status_now == "unchanged":
                return AddResult(session.user_id, session.session_id, "unchanged")
            raise SessionConflictError(
                f"session {session.session_id!r} of user {session.user_id!r} was written concurrently "
                f"({exc.orig}); run the ingest again") from None
        return AddResult(session.user_id, session.session_id, status, len(session.turns), len(chunks))

    @staticmethod
    def _check_chunks(session: SessionIn, chunks: Sequence[ChunkIn], model: str | None,
                      vectors: np.ndarray | None) -> None:
        if not chunks:
            raise InputError(f"session {session.session_id!r}: a session needs at least one chunk")
        n = len(session.turns)
        for c in chunks:
            if not c.turn_positions or any(not 0 <= p < n for p in c.turn_positions):
                raise InputError(f"session {session.session_id!r}: chunk covers turns "
                                 f"{c.turn_positions} outside 0..{n - 1}")
        if (vectors is None) != (model is None):
            raise InputError("pass both embedding_model and vectors, or neither")
        if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != len(chunks)):
            raise InputError(f"expected one vector per chunk ({len(chunks)}), got shape {vectors.shape}")

    @staticmethod
    def _insert_embeddings(conn: Connection, model: str, chunk_pks: Sequence[int],
                           vectors: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vectors, dtype="<f4")
        if not np.isfinite(vecs).all():
            raise InputError(f"embedding model {model!r} produced non-finite values")
        conn.execute(t.embeddings.insert(), [
            {"chunk_id": pk, "model": model, "dim": vecs.shape[1], "vector": vecs[i].tobytes()}
            for i, pk in enumerate(chunk_pks)
        ])

    def users(self) -> list[UserInfo]:
        with self._read() as conn:
            n_sessions = (select(func.count()).where(t.sessions.c.user_id == t.users.c.id)
                          .correlate(t.users).scalar_subquery())
            n_turns = (select(func.count()).select_from(t.turns)
                       .join(t.sessions, t.sessions.c.id == t.turns.c.session_id)
                       .where(t.sessions.c.user_id == t.users.c.id).correlate(t.users).scalar_subquery())
            n_chunks = (select(func.count()).where(t.chunks.c.user_id == t.users.c.id)
                        .correlate(t.users).scalar_subquery())
            rows = conn.execute(select(t.users.c.external_id, n_sessions, n_turns, n_chunks,
                                       t.users.c.created_at).order_by(t.users.c.external_id))
            return [UserInfo(*r) for r in rows]

    def sessions(self, user_id: str) -> list[SessionInfo]:
        with self._read() as conn:
            user_pk = self._require_user(conn, user_id)
            n_turns = (select(func.count()).where(t.turns.c.session_id == t.sessions.c.id)
                       .correlate(t.sessions).scalar_subquery())
            n_chunks = (select(func.count()).where(t.chunks.c.session_id == t.sessions.c.id)
                        .correlate(t.sessions).scalar_subquery())
            rows = conn.execute(
                select(t.sessions.c.external_id, t.sessions.c.date_text, t.sessions.c.position,
                       n_turns, n_chunks, t.sessions.c.created_at)
                .where(t.sessions.c.user_id == user_pk)
                .order_by(t.sessions.c.position, t.sessions.c.id))
            return [SessionInfo(user_id, *r) for r in rows]

    def turns(self, user_id: str, session_id: str) -> list[TurnRecord]:
        with self._read() as conn:
            session_pk = self._require_session(conn, user_id, session_id)
            rows = conn.execute(
                select(t.turns.c.position, t.turns.c.speaker, t.turns.c.text, t.turns.c.time_text,
                       t.turns.c.external_id, t.turns.c.image_caption)
                .where(t.turns.c.session_id == session_pk).order_by(t.turns.c.position))
            return [TurnRecord(*r) for r in rows]

    def _require_session(self, conn: Connection, user_id: str, session_id: str) -> int:
        user_pk = self._require_user(conn, user_id)
        pk = conn.scalar(select(t.sessions.c.id).where(
            t.sessions.c.user_id == user_pk, t.sessions.c.external_id == session_id))
        if pk is None:
            raise NotFoundError(f"user {user_id!r} has no session {session_id!r}; "
                                f"`qrmem sessions --user {user_id}` lists them")
        return pk

    def delete_session(self, user_id: str, session_id: str) -> None:
        """Delete a session with its turns, chunks, embeddings and summaries."""
        with self._write() as conn:
            pk = self._require_session(conn, user_id, session_id)
            conn.execute(delete(t.sessions).where(t.sessions.c.id == pk))
            self._bump(conn, self._require_user(conn, user_id))

    def delete_user(self, user_id: str) -> None:
        """Delete a user and everything stored for them."""
        with self._write() as conn:
            pk = self._require_user(conn, user_id)
            conn.execute(delete(t.users).where(t.users.c.id == pk))

    # -- chunks and embeddings ------------------------------------------------------------------------

    def revision(self, user_id: str) -> int | None:
        """The user's write counter (None if the user does not exist)."""
        with self._read() as conn:
            return conn.scalar(select(t.users.c.revision).where(t.users.c.external_id == user_id))

    def chunks(self, user_id: str) -> list[ChunkRecord]:
        """All chunks of a user in conversation order (session position, chunk position)."""
        with self._read() as conn:
            user_pk = self._user_pk(conn, user_id)
            if user_pk is None:
                return []
            rows = conn.execute(
                select(t.chunks.c.id, t.sessions.c.external_id, t.sessions.c.date_text,
                       t.sessions.c.position, t.chunks.c.position, t.chunks.c.text)
                .join(t.sessions, t.sessions.c.id == t.chunks.c.session_id)
                .where(t.chunks.c.user_id == user_pk)
                .order_by(t.sessions.c.position, t.sessions.c.id, t.chunks.c.position)).all()
            covered: dict[int, list[tuple[int, str]]] = defaultdict(list)
            for chunk_pk, pos, ext in conn.execute(
                    select(t.chunk_turns.c.chunk_id, t.turns.c.position, t.turns.c.external_id)
                    .join(t.turns, t.turns.c.id == t.chunk_turns.c.turn_id)
                    .join(t.chunks, t.chunks.c.id == t.chunk_turns.c.chunk_id)
                    .where(t.chunks.c.user_id == user_pk)):
                covered[chunk_pk].append((pos, ext))
        return [
            ChunkRecord(chunk_id=r[0], user_id=user_id, session_id=r[1], session_date=r[2],
                        session_position=r[3], position=r[4], text=r[5],
                        turn_ids=tuple(ext for _, ext in sorted(covered[r[0]])))
            for r in rows
        ]

    def embeddings(self, user_id: str, model: str) -> dict[int, np.ndarray]:
        """Stored vectors of a user's chunks for one model, by chunk id."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.embeddings.c.chunk_id, t.embeddings.c.vector)
                .join(t.chunks, t.chunks.c.id == t.embeddings.c.chunk_id)
                .join(t.users, t.users.c.id == t.chunks.c.user_id)
                .where(t.users.c.external_id == user_id, t.embeddings.c.model == model))
            return {pk: np.frombuffer(blob, dtype="<f4") for pk, blob in rows}

    def put_embeddings(self, model: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store vectors for chunks that have none for `model` (e.g. after switching models)."""
        if vectors.ndim != 2 or vectors.shape[0] != len(chunk_ids):
            raise InputError(f"expected {len(chunk_ids)} vectors, got shape {vectors.shape}")
        with self._write() as conn:
            self._insert_embeddings(conn, model, chunk_ids, vectors)

    def embedding_models(self) -> dict[str, int]:
        """Embedding model name -> number of stored vectors."""
        with self._read() as conn:
            rows = conn.execute(select(t.embeddings.c.model, func.count())
                                .group_by(t.embeddings.c.model))
            return dict(rows.all())

    # -- summaries ----------------------------------------------------------------------------------

    def add_summary(self, user_id: str, kind: str, text: str, *, session_id: str | None = None,
                    model: str | None = None, meta: dict[str, Any] | None = None) -> SummaryRecord:
        """Append a new version of a session or conversation summary."""
        if kind not in ("session", "conversation"):
            raise InputError(f"summary kind must be 'session' or 'conversation', got {kind!r}")
        if (kind == "session") != (session_id is not None):
            raise InputError("a session summary needs session_id; a conversation summary takes none")
        with self._write() as conn:
            user_pk = self._require_user(conn, user_id)
            session_pk = self._require_session(conn, user_id, session_id) if session_id else None
            last = conn.scalar(select(func.max(t.summaries.c.version)).where(
                t.summaries.c.user_id == user_pk, t.summaries.c.kind == kind,
                t.summaries.c.session_id.is_(None) if session_pk is None
                else t.summaries.c.session_id == session_pk))
            version = (last or 0) + 1
            now = _now()
            conn.execute(t.summaries.insert().values(
                user_id=user_pk, session_id=session_pk, kind=kind, version=version, text=text,
                model=model, meta=meta, created_at=now))
            self._bump(conn, user_pk)
        return SummaryRecord(user_id, kind, session_id, version, text, model, now)

    def summaries(self, user_id: str, *, latest: bool = True) -> list[SummaryRecord]:
        """A user's summaries (by default only the latest version of each)."""
        with self._read() as conn:
            user_pk = self._require_user(conn, user_id)
            rows = conn.execute(
                select(t.summaries.c.kind, t.sessions.c.external_id, t.summaries.c.version,
                       t.summaries.c.text, t.summaries.c.model, t.summaries.c.created_at)
                .outerjoin(t.sessions, t.sessions.c.id == t.summaries.c.session_id)
                .where(t.summaries.c.user_id == user_pk)
                .order_by(t.summaries.c.kind, t.sessions.c.position, t.summaries.c.version)).all()
        out = [SummaryRecord(user_id, *r) for r in rows]
        if latest:
            newest: dict[tuple[str, str | None], SummaryRecord] = {}
            for s in out:
                newest[(s.kind, s.session_id)] = s
            out = list(newest.values())
        return out

    # -- whole-store views ----------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        with self._read() as conn:
            def n(table: Any) -> int:
                return int(conn.scalar(select(func.count()).select_from(table)) or 0)

            return StoreCounts(users=n(t.users), sessions=n(t.sessions), turns=n(t.turns),
                               chunks=n(t.chunks), embeddings=n(t.embeddings), summaries=n(t.summaries))

    def export_user(self, user_id: str) -> dict[str, Any]:
        """A user's memory in the qrmem chat-log format (re-importable with `import_user`)."""
        sessions = []
        for s in self.sessions(user_id):
            turns = [{"speaker": r.speaker, "text": r.text, "time": r.time, "id": r.id,
                      "image_caption": r.image_caption} for r in self.turns(user_id, s.session_id)]
            sessions.append({"session_id": s.session_id, "date": s.date, "position": s.position,
                             "turns": [{k: v for k, v in tr.items() if v is not None} for tr in turns]})
        summaries = [{"kind": s.kind, "session_id": s.session_id, "version": s.version,
                      "text": s.text, "model": s.model} for s in self.summaries(user_id, latest=False)]
        return {"format": EXPORT_FORMAT, "user_id": user_id, "sessions": sessions,
                "summaries": summaries}

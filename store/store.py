"""The store: users, sessions, turns, chunks, embeddings and summaries behind one small API.

Durability rules: every public write is one transaction (SQLite: BEGIN IMMEDIATE), the input is
validated before it starts, and the owning user's `revision` is bumped inside it so that caches in
any process can tell that their copy is stale.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import schema as t
from . import versions
from .check import find_problems
from .db import (
    SQLITE_BUSY_TIMEOUT_MS,
    create_store_engine,
    is_sqlite,
    resolve_url,
    safe_url,
    sqlite_file,
)
from .dberrors import store_error
from .errors import (
    DamagedStoreError,
    InputError,
    NotFoundError,
    SessionConflictError,
    StoreError,
)
from .migrations import migrate
from .redact import get_logger, remember
from .types import (
    AddResult,
    CheckReport,
    ChunkIn,
    ChunkRecord,
    DeleteResult,
    IndexChanges,
    SessionIn,
    SessionInfo,
    StoreCounts,
    SummaryRecord,
    TurnRecord,
    UserInfo,
    check_key,
    default_turn_id,
)

log = get_logger(__name__)

EXPORT_FORMAT = "qrmem.v1"
EMBEDDER_SETTING = "embedder"  # the embedding model whose vectors the store keeps for every chunk
CHANGE_WINDOW = 1000  # revisions of chunk changes kept per user (an index older than that reloads in full)
WRITE_ATTEMPTS = 5  # a write transaction is retried on lock timeouts, deadlocks and insert races
SECURE_DELETE_WAIT = 5.0  # seconds a secure delete waits for readers before leaving the WAL as it is
T = TypeVar("T")
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available.
_RETRY_SQLSTATES = {"40001", "40P01", "55P03"}


def _transient(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig) or "database table is locked" in str(exc.orig)


def _now() -> datetime:
    return datetime.now(UTC)


def _has_store(engine: Engine) -> bool:
    with engine.connect() as conn:
        return inspect(conn).has_table("schema_migrations")


class Store:
    """A qrmem store on any SQLAlchemy URL or SQLite file path (None: `$QRMEM_DB` or the data dir).

    `secure_delete` (SQLite): deleted content is overwritten with zeros and the write-ahead log is
    truncated after each deletion, so removed conversations do not linger in the file; the
    truncation waits at most `secure_delete_wait` seconds for other connections' read transactions.
    `create=False` refuses a store that does not exist yet instead of creating an empty one (what
    reading commands use, so that a mistyped path is an error).
    """

    def __init__(self, db: str | os.PathLike[str] | None = None, *, secure_delete: bool = False,
                 secure_delete_wait: float = SECURE_DELETE_WAIT, create: bool = True) -> None:
        self.url = resolve_url(db)
        self.secure_delete = secure_delete
        if not isinstance(secure_delete_wait, int | float) or not 0 <= secure_delete_wait <= 3600:
            raise InputError(f"secure_delete_wait must be 0 to 3600 seconds, got {secure_delete_wait!r}")
        self.secure_delete_wait = float(secure_delete_wait)
        self.create = create
        self._engine: Engine | None = None
        remember(make_url(self.url).password if "://" in self.url else None)  # masked in every message

    # -- connection ---------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, created and migrated on first use."""
        if self._engine is None:
            path = sqlite_file(self.url)
            if not self.create and path is not None and not path.exists():
                raise StoreError(f"no store at {path}; run `qrmem ingest` first, or check --db / $QRMEM_DB")
            engine = create_store_engine(self.url, secure_delete=self.secure_delete)
            try:
                if not self.create and not _has_store(engine):
                    raise StoreError(f"no qrmem store in {self.safe_url}; run `qrmem ingest` first, "
                                     "or check --db / $QRMEM_DB")
                migrate(engine)
            except DBAPIError as exc:
                engine.dispose()
                raise store_error(exc, self.safe_url, opening=True) from None
            except BaseException:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    def files(self) -> list[Path]:
        """The files a SQLite store lives in (database, -wal, -shm, -journal); [] otherwise. Nothing
        qrmem writes may land on one of them (see `store.files.write_private(refuse=...)`)."""
        path = sqlite_file(self.url)
        if path is None:
            return []
        return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]

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

    def _write_txn(self, fn: Callable[[Connection], T], *, retry_integrity: bool = False) -> T:
        """Run `fn` in one write transaction. Transient failures (SQLite lock timeouts, PostgreSQL
        deadlocks and serialization failures, and with `retry_integrity` a concurrent insert of the
        same row) roll back and run it again with backoff; nothing half-done is ever committed."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._write() as conn:
                    return fn(conn)
            except IntegrityError:
                if not retry_integrity or attempt == WRITE_ATTEMPTS - 1:
                    raise
            except DBAPIError as exc:
                if not _transient(exc):  # damaged, read-only, full disk ...: one clear line
                    raise store_error(exc, self.safe_url, writing=True) from None
                if attempt == WRITE_ATTEMPTS - 1:
                    raise StoreError(
                        f"{self.safe_url} stayed locked by other writers through {WRITE_ATTEMPTS} attempts "
                        f"({SQLITE_BUSY_TIMEOUT_MS // 1000} s wait each on SQLite): {exc.orig}; nothing "
                        "was written, retry later or move many writers to PostgreSQL") from None
            time.sleep(random.uniform(0.01, 0.05) * 2 ** attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction; with `snapshot`, every statement sees the same committed state
        (SQLite: one read transaction; PostgreSQL: REPEATABLE READ)."""
        try:
            with self.engine.connect() as conn:
                if snapshot and conn.dialect.name == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                yield conn
        except DBAPIError as exc:  # damaged file, lost server ...: one clear line, no traceback
            raise store_error(exc, self.safe_url) from None

    # -- users and sessions --------------------------------------------------------------------------

    @staticmethod
    def _user_pk(conn: Connection, user_id: str, *, lock: bool = False) -> int | None:
        """The user's id (None if unknown). With `lock`, the row is locked for this write
        transaction (PostgreSQL: FOR UPDATE; SQLite writers are serialised by BEGIN IMMEDIATE), so
        one user's writes never interleave."""
        user_id = check_key(user_id, "user id")
        query = select(t.users.c.id).where(t.users.c.external_id == user_id)
        return conn.scalar(query.with_for_update() if lock else query)

    def _require_user(self, conn: Connection, user_id: str, *, lock: bool = False) -> int:
        pk = self._user_pk(conn, user_id, lock=lock)
        if pk is None:
            raise NotFoundError(f"no user {user_id!r} in {self.safe_url}; `qrmem info` lists the users")
        return pk

    @staticmethod
    def _bump(conn: Connection, user_pk: int) -> None:
        conn.execute(update(t.users).where(t.users.c.id == user_pk)
                     .values(revision=t.users.c.revision + 1))

    @staticmethod
    def _next_revision(conn: Connection, user_pk: int) -> int:
        """The revision the write in progress will leave the user at (`_bump` sets it)."""
        return int(conn.scalar(select(t.users.c.revision).where(t.users.c.id == user_pk))) + 1

    def _delete_session_rows(self, conn: Connection, user_pk: int, session_pk: int) -> None:
        """Delete a session (cascading to its turns, chunks, links, vectors and summaries) inside a
        write that then bumps the user's revision; its chunks are logged as deleted under that next
        revision, so in-process indexes drop exactly them (see `Store.index_changes`)."""
        revision = self._next_revision(conn, user_pk)
        conn.execute(t.chunk_changes.insert().from_select(
            ["user_id", "revision", "chunk_id", "added"],
            select(t.chunks.c.user_id, literal(revision), t.chunks.c.id, literal(False))
            .where(t.chunks.c.session_id == session_pk)))
        conn.execute(delete(t.sessions).where(t.sessions.c.id == session_pk))

    def _log_added(self, conn: Connection, user_pk: int, chunk_pks: Sequence[int]) -> None:
        """Log chunks added by the write in progress, and forget changes older than the window."""
        revision = self._next_revision(conn, user_pk)
        conn.execute(t.chunk_changes.insert(), [
            {"user_id": user_pk, "revision": revision, "chunk_id": pk, "added": True} for pk in chunk_pks])
        conn.execute(delete(t.chunk_changes).where(t.chunk_changes.c.user_id == user_pk,
                                                   t.chunk_changes.c.revision <= revision - CHANGE_WINDOW))

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
        return "unchanged" if stored in session.content_hashes() else "conflict"

    def add_session(self, session: SessionIn, chunks: Sequence[ChunkIn], *, chunker: str,
                    embedding_model: str | None = None, vectors: np.ndarray | None = None,
                    replace: bool = False) -> AddResult:
        """Write one session with its turns, chunks and (optionally) chunk embeddings, atomically.

        Identical content already stored is a no-op (`unchanged`); different content is a
        `SessionConflictError` unless `replace`, which swaps the old session for the new one.
        """
        self._check_chunks(session, chunks, embedding_model, vectors)
        digest = session.content_hash()
        same = session.content_hashes()  # older versions hashed the same content another way

        def write(conn: Connection) -> AddResult:
            if embedding_model is not None:
                self._claim_embedder(conn, embedding_model)
            user_pk = self._user_pk(conn, session.user_id, lock=True)
            if user_pk is None:
                user_pk = conn.execute(t.users.insert().values(
                    external_id=session.user_id, revision=0, created_at=_now())).inserted_primary_key[0]
            row = conn.execute(select(t.sessions.c.id, t.sessions.c.content_hash,
                                      t.sessions.c.position).where(
                t.sessions.c.user_id == user_pk, t.sessions.c.external_id == session.session_id)).first()
            status = "added"
            position = session.position
            if row is not None and row.content_hash in same and not replace:
                return AddResult(session.user_id, session.session_id, "unchanged")
            if position is not None:
                self._check_position_free(conn, user_pk, session)
            if row is not None:
                if not replace:
                    raise SessionConflictError(
                        f"session {session.session_id!r} of user {session.user_id!r} is already "
                        "stored with different content; pass --replace (replace=True) to overwrite it")
                position = row.position if position is None else position
                # The conversation summary rolled the old content in: take it back out.
                versions.roll_back_conversation(conn, user_pk, min(position, row.position), session.session_id, _now())
                self._delete_session_rows(conn, user_pk, row.id)
                status = "replaced"
            elif position is not None:
                # A session placed before ones already rolled into the conversation summary.
                versions.roll_back_conversation(conn, user_pk, position, session.session_id, _now())
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
                  "external_id": turn.id if turn.id is not None else default_turn_id(session.session_id, i)}
                 for i, turn in enumerate(session.turns)]))
            chunk_pks = list(conn.scalars(
                t.chunks.insert().returning(t.chunks.c.id, sort_by_parameter_order=True),
                [{"session_id": session_pk, "user_id": user_pk, "position": i, "text": c.text,
                  "time_notes": c.time_notes} for i, c in enumerate(chunks)]))
            conn.execute(t.chunk_turns.insert(), [
                {"chunk_id": pk, "turn_id": turn_pks[p]}
                for pk, c in zip(chunk_pks, chunks, strict=True) for p in c.turn_positions])
            if vectors is not None and embedding_model is not None:
                self._insert_embeddings(conn, embedding_model, chunk_pks, vectors)
            self._log_added(conn, user_pk, chunk_pks)
            self._bump(conn, user_pk)
            return AddResult(session.user_id, session.session_id, status, len(session.turns), len(chunks))

        try:
            # A concurrent writer creating the same user or session first makes the insert fail;
            # the retry then sees its row and answers `unchanged` or a conflict.
            return self._write_txn(write, retry_integrity=True)
        except IntegrityError as exc:
            raise StoreError(f"could not store session {session.session_id!r} of user "
                             f"{session.user_id!r}: {exc.orig}") from None


    @staticmethod
    def _check_position_free(conn: Connection, user_pk: int, session: SessionIn) -> None:
        """A position orders one session of a user: two sessions never share one (an export of
        such a store could not be imported, and their order would be arbitrary)."""
        taken = conn.scalar(select(t.sessions.c.external_id).where(
            t.sessions.c.user_id == user_pk, t.sessions.c.position == session.position,
            t.sessions.c.external_id != session.session_id).limit(1))
        if taken is not None:
            raise InputError(f"position {session.position} of user {session.user_id!r} is taken by session "
                             f"{taken!r}; nothing was written: give session {session.session_id!r} a free "
                             "position, or none to put it last")

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
            if c.time_notes is not None and (not isinstance(c.time_notes, str) or not c.time_notes.strip()):
                raise InputError(f"session {session.session_id!r}: a chunk's time notes must be text or "
                                 f"None, got {c.time_notes!r}")
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

    def _require_session(self, conn: Connection, user_id: str, session_id: str,
                         user_pk: int | None = None) -> int:
        session_id = check_key(session_id, "session id")
        if user_pk is None:
            user_pk = self._require_user(conn, user_id)
        pk = conn.scalar(select(t.sessions.c.id).where(
            t.sessions.c.user_id == user_pk, t.sessions.c.external_id == session_id))
        if pk is None:
            raise NotFoundError(f"user {user_id!r} has no session {session_id!r}; "
                                f"`qrmem sessions --user {user_id}` lists them")
        return pk

    def delete_session(self, user_id: str, session_id: str) -> DeleteResult:
        """Delete a session with its turns, chunks, embeddings and session summaries, and roll the
        conversation summary back to the last version written before this session was rolled in
        (the versions that contain it are deleted). Sessions rolled in after it then need rolling
        again: `needs_resummarize` (a `Memory` with a summarizer does it at once)."""

        def write(conn: Connection) -> DeleteResult:
            user_pk = self._require_user(conn, user_id, lock=True)
            pk = self._require_session(conn, user_id, session_id, user_pk)
            position = conn.scalar(select(t.sessions.c.position).where(t.sessions.c.id == pk))
            turns = conn.scalar(select(func.count()).where(t.turns.c.session_id == pk)) or 0
            chunks = conn.scalar(select(func.count()).where(t.chunks.c.session_id == pk)) or 0
            n_summaries = conn.scalar(select(func.count()).where(t.summaries.c.session_id == pk)) or 0
            stale, fresh, needs = versions.roll_back_conversation(conn, user_pk, position, session_id, _now())
            self._delete_session_rows(conn, user_pk, pk)
            self._bump(conn, user_pk)
            return DeleteResult(user_id, session_id, int(turns), int(chunks), int(n_summaries) + stale,
                                fresh, needs)

        return self._after_delete(self._write_txn(write))

    def delete_user(self, user_id: str) -> DeleteResult:
        """Delete a user and everything stored for them."""

        def write(conn: Connection) -> DeleteResult:
            pk = self._require_user(conn, user_id, lock=True)
            turns = conn.scalar(select(func.count()).select_from(t.turns).join(
                t.sessions, t.sessions.c.id == t.turns.c.session_id).where(t.sessions.c.user_id == pk))
            chunks = conn.scalar(select(func.count()).where(t.chunks.c.user_id == pk))
            n_summaries = conn.scalar(select(func.count()).where(t.summaries.c.user_id == pk))
            conn.execute(delete(t.users).where(t.users.c.id == pk))
            return DeleteResult(user_id, None, int(turns or 0), int(chunks or 0), int(n_summaries or 0))

        return self._after_delete(self._write_txn(write))

    def _after_delete(self, result: DeleteResult) -> DeleteResult:
        """With `secure_delete` on SQLite: the deleted pages were zeroed in the database file, but
        copies of them may sit in the write-ahead log until a checkpoint, so checkpoint and truncate
        it now. Another connection's read transaction blocks that; wait for it at most
        `secure_delete_wait` seconds (short busy timeouts, never the 30 s one), then report what
        remains where in `result.remaining` (and a warning)."""
        if not (self.secure_delete and is_sqlite(self.url)):
            return result
        deadline = time.monotonic() + self.secure_delete_wait
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout = 200")  # each try waits at most 0.2 s
            try:
                while True:
                    busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()[0]
                    conn.commit()
                    if not busy:
                        return result
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
            finally:
                conn.exec_driver_sql("PRAGMA busy_timeout = 30000")  # = SQLITE_BUSY_TIMEOUT_MS
                conn.commit()
        path = sqlite_file(self.url)
        remaining = (f"other connections kept a read transaction open for {self.secure_delete_wait:g} s, so "
                     f"the write-ahead log was not truncated: the deleted content is zeroed in {path}, but "
                     f"copies of it may remain in {path}-wal until those connections close; then run "
                     f"sqlite3 {path} 'PRAGMA wal_checkpoint(TRUNCATE)' (the next `qrmem delete --secure` "
                     "does it too)")
        log.info("secure delete: %s", remaining)  # the caller reports it (DeleteResult.remaining)
        return replace(result, remaining=remaining)

    # -- chunks and embeddings ------------------------------------------------------------------------

    def revision(self, user_id: str) -> int | None:
        """The user's write counter (None if the user does not exist)."""
        user_id = check_key(user_id, "user id")
        with self._read() as conn:
            return conn.scalar(select(t.users.c.revision).where(t.users.c.external_id == user_id))

    def chunks(self, user_id: str) -> list[ChunkRecord]:
        """All chunks of a user in conversation order (session position, chunk position)."""
        return self.chunks_at_revision(user_id)[1]

    def chunks_at_revision(self, user_id: str) -> tuple[int | None, list[ChunkRecord]]:
        """The user's revision and chunks, read from one consistent snapshot (None, [] for an
        unknown user), so a cache keyed by the revision never holds a mix of two states."""
        user_id = check_key(user_id, "user id")
        with self._read(snapshot=True) as conn:
            row = conn.execute(select(t.users.c.id, t.users.c.revision)
                               .where(t.users.c.external_id == user_id)).first()
            if row is None:
                return None, []
            return row.revision, self._chunk_records(conn, row.id, user_id)

    @staticmethod
    def _chunk_records(conn: Connection, user_pk: int, user_id: str,
                       ids: Sequence[int] | None = None) -> list[ChunkRecord]:
        """The user's chunks (only those of `ids`, when given) in conversation order, with the
        external ids of the turns they cover."""
        if ids is not None and len(ids) > 500:  # bounded IN lists on every backend
            parts = [Store._chunk_records(conn, user_pk, user_id, ids[i:i + 500]) for i in range(0, len(ids), 500)]
            return sorted((c for part in parts for c in part), key=lambda c: (c.session_position, c.chunk_id))
        # With `ids`, look the chunks up by primary key (the user's index would scan all their
        # chunks) and keep the user's only.
        which = [t.chunks.c.user_id == user_pk] if ids is None else [t.chunks.c.id.in_(ids)]
        rows = [r for r in conn.execute(
            select(t.chunks.c.id, t.sessions.c.external_id, t.sessions.c.date_text,
                   t.sessions.c.position, t.chunks.c.position, t.chunks.c.text, t.chunks.c.user_id,
                   t.chunks.c.time_notes)
            .join(t.sessions, t.sessions.c.id == t.chunks.c.session_id).where(*which)
            .order_by(t.sessions.c.position, t.sessions.c.id, t.chunks.c.position)) if r[6] == user_pk]
        covered: dict[int, list[tuple[int, str]]] = defaultdict(list)
        links = (select(t.chunk_turns.c.chunk_id, t.turns.c.position, t.turns.c.external_id)
                 .join(t.turns, t.turns.c.id == t.chunk_turns.c.turn_id))
        links = (links.join(t.chunks, t.chunks.c.id == t.chunk_turns.c.chunk_id).where(t.chunks.c.user_id == user_pk)
                 if ids is None else links.where(t.chunk_turns.c.chunk_id.in_([r[0] for r in rows])))
        for chunk_pk, pos, ext in conn.execute(links):
            covered[chunk_pk].append((pos, ext))
        return [ChunkRecord(chunk_id=r[0], user_id=user_id, session_id=r[1], session_date=r[2],
                            session_position=r[3], position=r[4], text=r[5],
                            turn_ids=tuple(ext for _, ext in sorted(covered[r[0]])), time_notes=r[7])
                for r in rows]

    def index_changes(self, user_id: str, since: int, model: str | None = None) -> IndexChanges:
        """What changed in a user's chunks after revision `since` (from the change log), for an
        in-process index at that revision: the chunk ids deleted, the chunks added (those still
        stored) with their vectors from `model`; all from one snapshot. `full` is set (and nothing
        else) when the log no longer reaches back to `since`; `revision` is None for an unknown user."""
        user_id = check_key(user_id, "user id")
        with self._read(snapshot=True) as conn:
            row = conn.execute(select(t.users.c.id, t.users.c.revision)
                               .where(t.users.c.external_id == user_id)).first()
            if row is None:
                return IndexChanges(None)
            if row.revision - since >= CHANGE_WINDOW or since > row.revision:
                return IndexChanges(row.revision, full=True)
            log = conn.execute(select(t.chunk_changes.c.chunk_id, t.chunk_changes.c.added).where(
                t.chunk_changes.c.user_id == row.id, t.chunk_changes.c.revision > since)).all()
            removed = sorted({pk for pk, added in log if not added})
            added_ids = sorted({pk for pk, added in log if added})
            added = self._chunk_records(conn, row.id, user_id, added_ids) if added_ids else []
            vectors: dict[int, np.ndarray] = {}
            if model is not None and added:
                present = [c.chunk_id for c in added]
                for i in range(0, len(present), 500):
                    vectors.update({pk: np.frombuffer(blob, dtype="<f4") for pk, blob in conn.execute(
                        select(t.embeddings.c.chunk_id, t.embeddings.c.vector).where(
                            t.embeddings.c.model == model, t.embeddings.c.chunk_id.in_(present[i:i + 500])))})
        return IndexChanges(row.revision, added=added, removed=removed, vectors=vectors)

    def embeddings(self, user_id: str, model: str) -> dict[int, np.ndarray]:
        """Stored vectors of a user's chunks for one model, by chunk id."""
        user_id = check_key(user_id, "user id")
        with self._read() as conn:
            rows = conn.execute(
                select(t.embeddings.c.chunk_id, t.embeddings.c.vector)
                .join(t.chunks, t.chunks.c.id == t.embeddings.c.chunk_id)
                .join(t.users, t.users.c.id == t.chunks.c.user_id)
                .where(t.users.c.external_id == user_id, t.embeddings.c.model == model))
            return {pk: np.frombuffer(blob, dtype="<f4") for pk, blob in rows}

    def put_embeddings(self, model: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store vectors for chunks that have none for `model` (e.g. after switching models).
        Chunks deleted meanwhile, or given vectors by another process first, are skipped.
        Returns the number stored."""
        if vectors.ndim != 2 or vectors.shape[0] != len(chunk_ids):
            raise InputError(f"expected {len(chunk_ids)} vectors, got shape {vectors.shape}")

        def write(conn: Connection, ids: Sequence[int], vecs: np.ndarray) -> int:
            exists = set(conn.scalars(select(t.chunks.c.id).where(t.chunks.c.id.in_(ids))))
            has = set(conn.scalars(select(t.embeddings.c.chunk_id).where(
                t.embeddings.c.model == model, t.embeddings.c.chunk_id.in_(ids))))
            keep = [i for i, pk in enumerate(ids) if pk in exists and pk not in has]
            if keep:
                self._insert_embeddings(conn, model, [ids[i] for i in keep], vecs[keep])
            return len(keep)

        stored = 0
        for start in range(0, len(chunk_ids), 500):  # bounded IN lists on every backend
            ids, vecs = list(chunk_ids[start:start + 500]), vectors[start:start + 500]
            stored += self._write_txn(lambda conn, ids=ids, vecs=vecs: write(conn, ids, vecs),
                                      retry_integrity=True)
        return stored

    # -- settings ---------------------------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        with self._read() as conn:
            return conn.scalar(select(t.settings.c.value).where(t.settings.c.key == key))

    def default_embedder(self) -> str | None:
        """The embedder whose vectors this store keeps: the one recorded with the first write (or
        by `set_default_embedder`); a store written before that was recorded answers with its only
        embedding model. None for a store with no vectors yet."""
        recorded = self.setting(EMBEDDER_SETTING)
        if recorded is not None:
            return recorded
        models = list(self.embedding_models())
        return models[0] if len(models) == 1 else None

    def set_default_embedder(self, model: str) -> None:
        """Make `model` the store's embedder; every chunk must already have a vector from it."""
        check_key(model, "embedding model")

        def write(conn: Connection) -> None:
            bare = conn.scalar(select(func.count()).select_from(t.chunks).where(~select(t.embeddings.c.chunk_id).where(
                t.embeddings.c.chunk_id == t.chunks.c.id, t.embeddings.c.model == model).exists()))
            if bare:
                raise InputError(f"{bare} chunks have no vector from {model!r}; run `qrmem reindex "
                                 f"--embedder {model}` first")
            self._put_setting(conn, EMBEDDER_SETTING, model)

        self._write_txn(write, retry_integrity=True)

    def _claim_embedder(self, conn: Connection, model: str) -> None:
        """Inside a write: record `model` as the store's embedder if none is recorded yet (a store
        written before the record existed keeps its only model), else insist on the recorded one."""
        recorded = conn.scalar(select(t.settings.c.value).where(t.settings.c.key == EMBEDDER_SETTING))
        if recorded is None:
            models = list(conn.scalars(select(t.embeddings.c.model).distinct().limit(2)))
            recorded = models[0] if len(models) == 1 else model
            self._put_setting(conn, EMBEDDER_SETTING, recorded)
        self.check_embedder(recorded, model)

    @staticmethod
    def check_embedder(recorded: str | None, model: str) -> None:
        """Refuse vectors of `model` in a store that keeps `recorded`'s (None: none recorded yet)."""
        if recorded is not None and recorded != model:
            raise InputError(
                f"this store keeps vectors from the embedder {recorded!r}, not {model!r}: nothing was "
                f"written; ingest with --embedder {recorded} (embedder={recorded!r}), or switch the store "
                f"first with `qrmem reindex --embedder {model} --set-default`")

    @staticmethod
    def _put_setting(conn: Connection, key: str, value: str) -> None:
        conn.execute(delete(t.settings).where(t.settings.c.key == key))
        conn.execute(t.settings.insert().values(key=key, value=value, updated_at=_now()))

    def embedding_models(self) -> dict[str, int]:
        """Embedding model name -> number of stored vectors."""
        with self._read() as conn:
            rows = conn.execute(select(t.embeddings.c.model, func.count())
                                .group_by(t.embeddings.c.model))
            return dict(rows.all())

    # -- summaries (versioning rules in store/versions.py) -------------------------------------------

    def add_summary(self, user_id: str, kind: str, text: str, *, session_id: str | None = None,
                    model: str | None = None, meta: dict[str, Any] | None = None,
                    if_version: int | None = None) -> SummaryRecord:
        """Append a new version of a session or conversation summary. With `if_version`, only if
        the latest stored version is still that one (0: none yet), else `ConcurrentUpdateError`:
        two processes rolling the same conversation never both append."""
        if kind not in ("session", "conversation"):
            raise InputError(f"summary kind must be 'session' or 'conversation', got {kind!r}")
        if (kind == "session") != (session_id is not None):
            raise InputError("a session summary needs session_id; a conversation summary takes none")
        now = _now()

        def write(conn: Connection) -> int:
            user_pk = self._require_user(conn, user_id, lock=True)
            session_pk = (None if session_id is None  # "" is a bad id, never "no session"
                          else self._require_session(conn, user_id, session_id, user_pk))
            version = versions.append(conn, user_pk, session_pk, kind, text, model=model, meta=meta,
                                      if_version=if_version, now=now, who=f"user {user_id!r}")
            self._bump(conn, user_pk)
            return version

        version = self._write_txn(write)
        return SummaryRecord(user_id, kind, session_id, version, text, model, now, meta)

    def summaries(self, user_id: str, *, latest: bool = True) -> list[SummaryRecord]:
        """A user's summaries (by default only the latest version of each)."""
        with self._read() as conn:
            return versions.read(conn, self._require_user(conn, user_id), user_id, latest=latest)

    def conversation_version(self, user_id: str) -> int:
        """The newest conversation-summary version number (0: none), roll-back markers included:
        what `add_summary(..., if_version=)` compares against."""
        with self._read() as conn:
            return versions.latest_version(conn, self._require_user(conn, user_id), "conversation", None)

    # -- whole-store views ----------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        with self._read() as conn:
            def n(table: Any) -> int:
                return int(conn.scalar(select(func.count()).select_from(table)) or 0)

            return StoreCounts(users=n(t.users), sessions=n(t.sessions), turns=n(t.turns),
                               chunks=n(t.chunks), embeddings=n(t.embeddings), summaries=n(t.summaries))

    def check(self) -> CheckReport:
        """Integrity check of the whole store (`qrmem check`; see `store.check`). Read-only. A damaged
        file is reported, not raised."""
        try:
            return self._check()
        except DamagedStoreError as exc:
            from .dberrors import damage_problem, integrity_problems

            try:
                counts = self.counts()
            except StoreError:
                counts = StoreCounts(users=0, sessions=0, turns=0, chunks=0, embeddings=0, summaries=0)
            sqlite = is_sqlite(self.url)
            details = [d for d in (integrity_problems(self.url) if sqlite else []) if exc.reason not in d]
            return CheckReport(
                ok=False, counts=counts,
                problems=[damage_problem(exc.reason), *details],
                warnings=["counts may be incomplete: the file could not be read in full"],
                checks=["open and read the database", *(["sqlite integrity_check"] if sqlite else [])])

    def _check(self) -> CheckReport:
        with self._read(snapshot=True) as conn:
            problems, warnings, checks = find_problems(conn)
        return CheckReport(ok=not problems, counts=self.counts(), problems=problems, warnings=warnings,
                           checks=checks)

    def export_user(self, user_id: str) -> dict[str, Any]:
        """A user's memory in the qrmem chat-log format (re-importable with `import_user`): every
        session with its turns, and the latest version of each summary with the metadata the
        rolling summaries need (a conversation summary's `through_session`)."""
        latest = self.summaries(user_id)  # summaries first: a session added meanwhile is still listed
        sessions = []
        for s in self.sessions(user_id):
            turns = [{"speaker": r.speaker, "text": r.text, "time": r.time, "id": r.id,
                      "image_caption": r.image_caption} for r in self.turns(user_id, s.session_id)]
            sessions.append({"session_id": s.session_id, "date": s.date, "position": s.position,
                             "turns": [{k: v for k, v in tr.items() if v is not None} for tr in turns]})
        listed = {s["session_id"] for s in sessions}

        def in_export(s: SummaryRecord) -> bool:  # (a session deleted meanwhile took its summaries)
            through = (s.meta or {}).get("through_session") if s.kind == "conversation" else None
            return all(x is None or x in listed for x in (s.session_id, through))

        summaries = [{"kind": s.kind, "session_id": s.session_id, "version": s.version,
                      "text": s.text, "model": s.model, "meta": s.meta} for s in latest if in_export(s)]
        return {"format": EXPORT_FORMAT, "user_id": user_id, "sessions": sessions,
                "summaries": summaries}

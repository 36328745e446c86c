"""Named, ordered schema migrations, recorded in `schema_migrations`.

Each migration runs in its own transaction together with the row that records it. Append new
migrations at the end; never edit or reorder applied ones. When a later migration changes a table
that `m001_initial` creates, freeze the initial table definitions here first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
)

from . import schema
from .errors import StoreError
from .redact import get_logger

log = get_logger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


# The tables m001_initial creates.
INITIAL_TABLES = ("users", "sessions", "turns", "chunks", "chunk_turns", "embeddings", "summaries")


def initial_metadata() -> MetaData:
    """The tables of m001_initial exactly as it created them, frozen here: later migrations change
    some of them (m005 adds `chunks.time_notes`), and `schema` holds only the latest definitions."""
    md = MetaData()
    Table("users", md,
          Column("id", Integer, primary_key=True),
          Column("external_id", String(200), nullable=False, unique=True),
          Column("revision", Integer, nullable=False, default=0),
          Column("created_at", DateTime(timezone=True), nullable=False))
    Table("sessions", md,
          Column("id", Integer, primary_key=True),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
          Column("external_id", String(200), nullable=False),
          Column("date_text", String(200)),
          Column("position", Integer, nullable=False),
          Column("content_hash", String(64), nullable=False),
          Column("chunker", String(100), nullable=False),
          Column("created_at", DateTime(timezone=True), nullable=False),
          UniqueConstraint("user_id", "external_id", name="uq_session_user_external"))
    Table("turns", md,
          Column("id", Integer, primary_key=True),
          Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
          Column("position", Integer, nullable=False),
          Column("speaker", String(200), nullable=False),
          Column("text", Text, nullable=False),
          Column("time_text", String(200)),
          Column("external_id", String(200)),
          Column("image_caption", Text),
          UniqueConstraint("session_id", "position", name="uq_turn_position"))
    Table("chunks", md,
          Column("id", Integer, primary_key=True),
          Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
          Column("position", Integer, nullable=False),
          Column("text", Text, nullable=False),
          Index("ix_chunks_user", "user_id"))
    Table("chunk_turns", md,
          Column("chunk_id", Integer, ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
          Column("turn_id", Integer, ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True),
          Index("ix_chunk_turns_turn", "turn_id"))
    Table("embeddings", md,
          Column("chunk_id", Integer, ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
          Column("model", String(300), primary_key=True),
          Column("dim", Integer, nullable=False),
          Column("vector", LargeBinary, nullable=False))
    Table("summaries", md,
          Column("id", Integer, primary_key=True),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
          Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE")),
          Column("kind", String(20), nullable=False),
          Column("version", Integer, nullable=False),
          Column("text", Text, nullable=False),
          Column("model", String(300)),
          Column("meta", JSON),
          Column("created_at", DateTime(timezone=True), nullable=False),
          Index("ix_summaries_scope", "user_id", "kind", "session_id", "version"))
    assert tuple(md.tables) == INITIAL_TABLES
    return md


@migration
def m001_initial(conn: Connection) -> None:
    initial_metadata().create_all(conn)


@migration
def m002_settings(conn: Connection) -> None:
    schema.settings.create(conn)


@migration
def m003_chunk_changes(conn: Connection) -> None:
    schema.chunk_changes.create(conn)


@migration
def m004_api_keys(conn: Connection) -> None:
    schema.api_keys.create(conn)


@migration
def m005_chunk_time_notes(conn: Connection) -> None:
    """`chunks.time_notes` (nullable text): relative time expressions grounded at ingest. Chunks
    stored before it have none (NULL), like chunks ingested with grounding off."""
    conn.execute(text("ALTER TABLE chunks ADD COLUMN time_notes TEXT"))


MIGRATION_LOCK = 7_246_311  # PostgreSQL advisory lock key held while migrating
_NAME = re.compile(r"m[0-9]{3}_[a-z0-9_]{1,90}", re.ASCII)  # how every migration is named


def applied(conn: Connection) -> list[str]:
    return list(conn.scalars(select(schema.schema_migrations.c.name)))


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations in order, in one transaction that holds the database's write lock
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so processes opening a new store at
    the same moment never race. Returns the names applied now."""
    known = {name for name, _ in MIGRATIONS}
    with engine.connect() as conn:  # fast path, no lock: an up-to-date store (the common case)
        if inspect(conn).has_table("schema_migrations") and set(applied(conn)) == known:
            return []
    with engine.connect() as conn:
        conn.execution_options(qrmem_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            schema.schema_migrations.create(conn, checkfirst=True)
            done = set(applied(conn))
            unknown = done - known
            garbage = [n for n in unknown if not (isinstance(n, str) and _NAME.fullmatch(n))]
            if garbage:  # not a newer qrmem: the table's pages were overwritten
                from .dberrors import damaged

                raise damaged(engine.url.render_as_string(hide_password=True),
                              f"the migration table holds {ascii(garbage[:3])[1:-1]}, which are "
                              "not migration names")
            if unknown:
                raise StoreError(
                    f"the database has migrations this qrmem does not know ({sorted(unknown)}); "
                    "upgrade qrmem to open it"
                )
            ran = []
            for name, fn in MIGRATIONS:
                if name in done:
                    continue
                fn(conn)
                conn.execute(schema.schema_migrations.insert().values(
                    name=name, applied_at=datetime.now(UTC)))
                log.info("applied migration %s", name)
                ran.append(name)
    return ran

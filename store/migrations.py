"""Named, ordered schema migrations, recorded in `schema_migrations`.

Each migration runs in its own transaction together with the row that records it. Append new
migrations at the end; never edit or reorder applied ones. When a later migration changes a table
that `m001_initial` creates, freeze the initial table definitions here first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select, text

from . import schema
from .errors import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


# The tables m001_initial creates, frozen: tables added later have their own migrations.
INITIAL_TABLES = ("users", "sessions", "turns", "chunks", "chunk_turns", "embeddings", "summaries")


@migration
def m001_initial(conn: Connection) -> None:
    tables = [schema.metadata.tables[name] for name in INITIAL_TABLES]
    schema.metadata.create_all(conn, tables=tables)


@migration
def m002_api_keys(conn: Connection) -> None:
    schema.api_keys.create(conn)


MIGRATION_LOCK = 7_246_311  # PostgreSQL advisory lock key held while migrating


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

"""Named, ordered schema migrations, recorded in `schema_migrations`.

Each migration runs in its own transaction together with the row that records it. Append new
migrations at the end; never edit or reorder applied ones. When a later migration changes a table
that `m001_initial` creates, freeze the initial table definitions here first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select, text

from . import schema
from .errors import StoreError
from .redact import get_logger

log = get_logger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


# The tables m001_initial creates, frozen: tables added later have their own migrations.
INITIAL_TABLES = ("users", "sessions", "turns", "chunks", "chunk_turns", "embeddings", "summaries")


@migration
def m001_initial(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.metadata.tables[name] for name in INITIAL_TABLES])


@migration
def m002_settings(conn: Connection) -> None:
    schema.settings.create(conn)


@migration
def m003_chunk_changes(conn: Connection) -> None:
    schema.chunk_changes.create(conn)


@migration
def m004_api_keys(conn: Connection) -> None:
    schema.api_keys.create(conn)


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

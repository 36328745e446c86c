"""Named, ordered schema migrations, recorded in `schema_migrations`.

Each migration runs in its own transaction together with the row that records it. Append new
migrations at the end; never edit or reorder applied ones. When a later migration changes a table
that `m001_initial` creates, freeze the initial table definitions here first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select

from . import schema
from .errors import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(conn: Connection) -> None:
    tables = [t for t in schema.metadata.sorted_tables if t.name != "schema_migrations"]
    schema.metadata.create_all(conn, tables=tables)


def applied(engine: Engine) -> list[str]:
    if not inspect(engine).has_table("schema_migrations"):
        return []
    with engine.connect() as conn:
        return list(conn.scalars(select(schema.schema_migrations.c.name)))


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations in order; return the names applied now."""
    schema.schema_migrations.create(engine, checkfirst=True)
    done = set(applied(engine))
    unknown = done - {name for name, _ in MIGRATIONS}
    if unknown:
        raise StoreError(
            f"the database has migrations this qrmem does not know ({sorted(unknown)}); "
            "upgrade qrmem to open it"
        )
    ran = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            # Re-check inside the transaction: another process may have applied it meanwhile.
            if conn.scalar(select(schema.schema_migrations.c.name).where(
                    schema.schema_migrations.c.name == name)):
                continue
            fn(conn)
            conn.execute(schema.schema_migrations.insert().values(
                name=name, applied_at=datetime.now(UTC)))
        log.info("applied migration %s", name)
        ran.append(name)
    return ran

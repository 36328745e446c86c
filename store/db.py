"""Engines for any SQLAlchemy URL; SQLite files get WAL, foreign keys and a busy timeout."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import StoreError

ENV_DB = "QRMEM_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_db_path() -> Path:
    """`$QRMEM_DB` if set, else `memory.db` in the user's data directory."""
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    from platformdirs import user_data_dir

    return Path(user_data_dir("qrmem", appauthor=False)) / "memory.db"


def resolve_url(db: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL for `db`: a URL is kept, a file path becomes `sqlite:///<abs path>`."""
    if db is None:
        env = os.environ.get(ENV_DB)
        if env:
            return resolve_url(env)
        path = default_db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    text = os.fspath(db)
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError as exc:
            raise StoreError(f"not a valid database URL {text!r}: {exc}") from None
        return text
    path = Path(text).expanduser()
    if not path.parent.is_dir():
        raise StoreError(
            f"cannot open database {text!r}: directory {str(path.parent)!r} does not exist; "
            "create it or pass another --db path"
        )
    if path.is_dir():
        raise StoreError(f"cannot open database {text!r}: it is a directory; pass a file path")
    return f"sqlite:///{path.resolve()}"


def _sqlite_setup(engine: Engine, secure_delete: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's BEGIN below drive transactions (pysqlite's own handling is lax).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")  # = SQLITE_BUSY_TIMEOUT_MS (SQL stays a literal)
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        if secure_delete:  # deleted content is overwritten with zeros, not just unlinked
            cur.execute("PRAGMA secure_delete = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Writers take the lock up front, so a read-then-write transaction never fails to upgrade.
        write = conn.get_execution_options().get("qrmem_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_store_engine(url: str, *, secure_delete: bool = False) -> Engine:
    try:
        if is_sqlite(url):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            _sqlite_setup(engine, secure_delete)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise StoreError(f"cannot use database {url!r}: {exc}") from None
    return engine

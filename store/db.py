"""Engines for any SQLAlchemy URL; SQLite files get WAL, foreign keys and a busy timeout."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from .errors import StoreError
from .redact import redact

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
    if not text.strip():
        raise StoreError("the database path is empty; pass a file path or a SQLAlchemy URL (--db)")
    if "://" in text:
        try:
            make_url(text)
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            reason = "its port is not a number" if "port" in str(exc) or "int()" in str(exc) else str(exc)
            raise StoreError(f"not a valid database URL {text!r}: {reason}; write it like "
                             "postgresql+psycopg://qrmem@db.internal:5432/qrmem") from None
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


_DB_ADVICE = (  # (words in the driver's message, what they mean for the user)
    (("readonly", "read-only"), ("the store is read-only here: check the permissions of the database "
                                 "file and of its directory (SQLite writes -wal and -shm files beside it)")),
    (("disk is full", "no space"), "the disk is full: free some space"),
    (("disk i/o error",), "the disk refused a read or write (full, removed or failing)"),
    (("not a database", "malformed"), ("the file is not a qrmem store or it is damaged: check --db, "
                                       "then `qrmem check`")),
    (("unable to open",), "the file cannot be opened: check the path and its permissions"),
)


def describe_db_error(exc: BaseException) -> str:
    """A driver error as one line, with what it means when it is a known kind."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = " ".join(str(orig).split()) or type(orig).__name__
    low = message.lower()
    for words, advice in _DB_ADVICE:
        if any(w in low for w in words):
            return f"{message} ({advice})"
    return message


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


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other backends and for in-memory databases."""
    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    name = parsed.database or ""
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and name.startswith("file:"):
        if parsed.query.get("mode") == "memory":
            return None
        name = name.removeprefix("file:").split("?")[0]
    if name in ("", ":memory:"):
        return None
    return Path(name)


def is_memory(url: str) -> bool:
    """A SQLite database that lives only as long as the process (`sqlite://`, `:memory:`)."""
    return is_sqlite(url) and sqlite_file(url) is None


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages (a URL without one is shown as written)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return redact(url)
    if parsed.password is None:
        return redact(url)  # still: a password may sit in the query string
    return parsed.render_as_string(hide_password=True)


def create_store_engine(url: str, *, secure_delete: bool = False) -> Engine:
    try:
        if is_sqlite(url):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            _sqlite_setup(engine, secure_delete)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise StoreError(f"cannot use database {safe_url(url)}: its driver is not installed ({exc}); "
                         "install it (PostgreSQL: pip install 'qrmem[postgres]') or use another URL") from None
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"cannot use database {safe_url(url)}: {exc}") from None
    return engine

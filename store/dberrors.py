"""Driver errors -> qrmem's one-line errors. A damaged file, a read-only file or a full disk is said
as such, with what to do; no driver error escapes from the store as a traceback."""

from __future__ import annotations

import shlex

from sqlalchemy.exc import DBAPIError

from .errors import DamagedStoreError, StoreError

# What SQLite (and Python's sqlite3) say when the file's content cannot be trusted.
_DAMAGE = ("database disk image is malformed", "file is not a database", "file is encrypted",
           "could not decode to utf-8", "malformed database schema", "database corruption")
_NOT_A_DATABASE = ("file is not a database", "file is encrypted")
_READ_ONLY = ("attempt to write a readonly database", "readonly database", "read-only file system")
_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")


def _db_arg(url_text: str) -> str:
    """What to pass as --db: the file path of a SQLite store, else the URL (password hidden)."""
    return shlex.quote(url_text.removeprefix("sqlite:///") if url_text.startswith("sqlite:///") else url_text)


def damaged(url_text: str, reason: str) -> DamagedStoreError:
    """The error for a store whose file is damaged."""
    return DamagedStoreError(
        f"the store {url_text} is damaged ({reason}): run `qrmem check --db {_db_arg(url_text)}` to "
        "see what is affected, and restore the file from a backup", reason=reason)


def damage_problem(reason: str) -> str:
    """How `qrmem check` reports a damaged file."""
    if any(marker in reason.lower() for marker in _NOT_A_DATABASE):
        return (f"the file is not a SQLite database, or it is damaged ({reason}): check the --db path; "
                "if it is your store, restore it from a backup")
    return f"the database file is damaged ({reason}): restore it from a backup"


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).splitlines()
    return lines[0] if lines else type(orig).__name__


def is_damage(exc: BaseException) -> bool:
    """Whether a driver error says the database file is damaged (or is not a database at all)."""
    return any(marker in _reason(exc).lower() for marker in _DAMAGE)


def store_error(exc: DBAPIError, url_text: str, *, writing: bool = False,
                opening: bool = False) -> StoreError:
    """The StoreError to raise for a driver error on the store at `url_text` (password hidden)."""
    reason = _reason(exc)
    low = reason.lower()
    if any(marker in low for marker in _NOT_A_DATABASE):
        return DamagedStoreError(
            f"cannot open database {url_text}: it is not a SQLite database, or it is damaged ({reason}): "
            f"check the --db path; if it is your store, run `qrmem check --db {_db_arg(url_text)}` "
            "and restore it from a backup", reason=reason)
    if is_damage(exc):
        return damaged(url_text, reason)
    lead = f"cannot open database {url_text}: " if opening else ""
    if any(marker in low for marker in _READ_ONLY):
        return StoreError(f"{lead}the store {url_text} is read-only ({reason}); nothing was written: "
                          "give this user write access to the file and its directory")
    if any(marker in low for marker in _FULL):
        return StoreError(f"{lead}the disk holding {url_text} is full ({reason}); this write was rolled "
                          "back and what was stored before is intact: free some space and run it again")
    if opening:
        return StoreError(f"{lead}{reason}")
    done = "; this write was rolled back, nothing of it was stored" if writing else ""
    return StoreError(f"database error on {url_text}: {reason}{done}")


def integrity_problems(url: str, limit: int = 20) -> list[str]:
    """What SQLite's integrity_check says about a damaged file, read without migrating it."""
    from .db import create_store_engine

    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
        return [f"sqlite integrity_check: {r}" for r in rows if r != "ok"][:limit]
    except DBAPIError as exc:
        return [f"sqlite integrity_check could not run: {_reason(exc)}"]
    finally:
        engine.dispose()

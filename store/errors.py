"""The errors every layer shares. Every message says what went wrong and what to do next.

Errors about models (loading, missing optional dependencies, generation) live with the models, in
`memory.errors`: the store knows nothing of models."""

from __future__ import annotations


class QrmemError(Exception):
    """Base class of every error qrmem raises on purpose."""


class InputError(QrmemError):
    """Input data is malformed. Names the source, the record and the field."""

    def __init__(self, message: str, *, source: str | None = None, record: str | None = None,
                 field: str | None = None) -> None:
        self.source, self.record, self.field, self.reason = source, record, field, message
        where = ", ".join(
            f"{label} {value}" for label, value in (("record", record), ("field", field)) if value
        )
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where + ': ' if where else ''}{message}")


class MalformedJSONError(InputError):
    """Input text is not valid JSON (a syntax error; see `store.jsonio`)."""


class StoreError(QrmemError):
    """The database cannot be opened or is not in a usable state."""


class DamagedStoreError(StoreError):
    """The database file is damaged (or is not a database); `qrmem check` reports what it can."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message  # what the database said, without advice


class SessionConflictError(QrmemError):
    """A session with this id is already stored for the user with different content."""


class NotFoundError(QrmemError):
    """A user or session does not exist."""


class ConcurrentUpdateError(QrmemError):
    """Another writer changed the same record first; read it again and retry."""

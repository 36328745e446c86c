"""The errors every layer shares. Every message says what went wrong and what to do next.

Errors about models (loading, missing optional dependencies, generation) live with the models, in
`memory.errors`: the store knows nothing of models."""

from __future__ import annotations

from .redact import redact


class QrmemError(Exception):
    """Base class of every error qrmem raises on purpose. The message is redacted when the error is
    made (passwords, API keys, URL credentials: see `store.redact`), so no handler can leak them."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class InputError(QrmemError):
    """Input data is malformed. Names the source, the record and the field."""

    def __init__(self, message: str, *, source: str | None = None, record: str | None = None,
                 field: str | None = None) -> None:
        self.source, self.record, self.field, self.reason = source, record, field, redact(message)
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


class OutputError(QrmemError):
    """A file could not be written where asked: the path is refused (exists, a symlink, the store
    itself, not a regular file) or the system refused the write (no space, no permission)."""


class ConcurrentUpdateError(QrmemError):
    """Another writer changed the same record first; read it again and retry."""

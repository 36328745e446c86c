"""Errors of the service and their HTTP form: `{"error": {"type", "message"}}` with a status.

The library's errors keep their one-line messages; each class maps to one status. Anything that is
not a qrmem error is a bug: the client gets a 500 with no detail, the server log gets the trace.
"""

from __future__ import annotations

from typing import Any

from memory import GenerationError, MissingDependencyError, ModelLoadError
from store import (
    ConcurrentUpdateError,
    InputError,
    NotFoundError,
    OutputError,
    QrmemError,
    SessionConflictError,
    StoreError,
)
from store.errors import DamagedStoreError


class ServiceError(QrmemError):
    """An error of the service itself, with its HTTP status."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(ServiceError):
    status, kind = 401, "unauthorized"


class ForbiddenError(ServiceError):
    status, kind = 403, "forbidden"


class PayloadTooLargeError(ServiceError):
    status, kind = 413, "payload_too_large"


class OverloadedError(ServiceError):
    status, kind = 429, "overloaded"


class RequestTimeoutError(ServiceError):
    status, kind = 503, "timeout"


class NotReadyError(ServiceError):
    status, kind = 503, "not_ready"


class NotConfiguredError(ServiceError):
    """The request needs a part this server was started without (a reranker, a generator)."""

    status, kind = 503, "not_configured"


# Most specific first: SessionConflictError before InputError would matter if one derived from the other.
LIBRARY_ERRORS: tuple[tuple[type[QrmemError], int, str], ...] = (
    (InputError, 400, "invalid_input"),
    (NotFoundError, 404, "not_found"),
    (SessionConflictError, 409, "conflict"),
    (ConcurrentUpdateError, 409, "conflict"),
    (GenerationError, 502, "generation_failed"),
    (MissingDependencyError, 503, "missing_dependency"),
    (ModelLoadError, 503, "model_unavailable"),
    (DamagedStoreError, 500, "store_damaged"),  # no retry helps: the operator must restore it
    (StoreError, 503, "store_unavailable"),
    (OutputError, 500, "output_refused"),
)
RETRY_AFTER_UNAVAILABLE = 5  # seconds, for 503s of the library (store locked or down, model loading)


def classify(exc: QrmemError) -> tuple[int, str, int | None]:
    """(status, type, Retry-After seconds or None) of a qrmem error."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.kind, exc.retry_after
    for cls, status, kind in LIBRARY_ERRORS:
        if isinstance(exc, cls):
            return status, kind, RETRY_AFTER_UNAVAILABLE if status == 503 else None
    return 500, "error", None


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def error_headers(status: int, retry_after: int | None) -> dict[str, str]:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="qrmem"'
    return headers


def one_line(message: str, redact: str | None = None) -> str:
    """The message on one line, without the database URL (clients need not know where it lives)."""
    if redact:
        message = message.replace(redact, "the store")
    return " ".join(message.split())

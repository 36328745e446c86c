"""JSON error responses, for route handlers and for the ASGI middleware that answers early."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from store import QrmemError

from .errors import classify, error_body, error_headers, one_line


def error_response(exc: QrmemError, *, redact: str | None = None) -> JSONResponse:
    status, kind, retry_after = classify(exc)
    return JSONResponse(error_body(kind, one_line(str(exc), redact)), status_code=status,
                        headers=error_headers(status, retry_after))


def plain_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=error_headers(status, None))


async def send_error(exc: QrmemError, scope: Scope, receive: Receive, send: Send, *,
                     redact: str | None = None) -> None:
    await error_response(exc, redact=redact)(scope, receive, send)

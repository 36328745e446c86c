"""One redaction function for every message qrmem shows: errors, warnings and log lines.

`redact(text)` masks passwords and credentials in URLs (`scheme://user:***@host`, `?password=***`),
bearer tokens and API-key shapes (`Bearer ***`, `sk-***`), and every secret value qrmem has been
handed (`remember(value)`: database passwords, API keys) or that sits in an environment variable
whose name says it is secret (`*KEY*`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*PASSWD*`).
`QrmemError` redacts its message when it is made; `RedactingFilter` does the same for log records.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words
_remembered: set[str] = set()

# scheme://user:password@host -> scheme://user:***@host (the password runs to the last @ before
# the path; a password holding '/' is masked up to it, which still hides what precedes the '/')
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s/'\"]*)@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_token|api[_-]?key|apikey|key)=)"
    r"(?P<value>[^&\s'\"]+)")
_BEARER = re.compile(r"(?i)\b(?P<head>(?:bearer|basic|token)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{4,})")
_KEY_SHAPE = re.compile(r"\b(?P<head>(?:sk|pk|rk)-)(?P<value>[A-Za-z0-9_\-]{8,})")
# OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, PGPASSWORD; not PWD, KEYBOARD or MONKEY.
_SECRET_ENV = re.compile(r"(?i)password|passwd|(?:^|_)(?:api_?key|key|token|secret|pass)(?:$|_)")


def remember(value: str | None) -> None:
    """Mask this exact value (and its stripped form) in every later message."""
    if not isinstance(value, str):
        return
    for v in (value, value.strip()):
        if len(v) >= _MIN_SECRET:
            _remembered.add(v)


def _secrets() -> list[str]:
    found = set(_remembered)
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value.strip()) >= _MIN_SECRET:
            found.update((value, value.strip()))
    # Longest first, so a secret that contains another is masked whole.
    return sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True)


def redact(text: object) -> str:
    """`text` (str() of it) with every known kind of secret replaced by `***`."""
    out = str(text)
    for secret in _secrets():
        if secret in out:
            out = out.replace(secret, MASK)
        escaped = repr(secret)[1:-1]  # as it appears inside a repr(): newlines as \n, etc.
        if escaped != secret and escaped in out:
            out = out.replace(escaped, MASK)
    out = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", out)
    out = _QUERY_SECRET.sub(lambda m: m["head"] + MASK, out)
    out = _BEARER.sub(lambda m: m["head"] + MASK, out)
    return _KEY_SHAPE.sub(lambda m: m["head"] + MASK, out)


class RedactingFilter(logging.Filter):
    """Redacts a log record's message (with its arguments merged in) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed format string: redact what is there
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with the redacting filter on it: qrmem's modules log through these,
    so their records are redacted whatever handlers the application installs."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def install(handler: logging.Handler) -> None:
    """Redact everything `handler` emits (the CLI installs it on the root handlers it configures,
    which covers the records of other libraries too: httpx, SQLAlchemy, transformers)."""
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)

"""API keys of `qrmem serve`: created once, stored hashed, listed without their secret, revoked.

A key reads `qrm_<key id>_<secret>`: the key id (12 hex characters) is public and names the key in
listings and revocations; the secret is 32 random bytes. Only the SHA-256 of the whole key is
stored. A fast hash is enough here, unlike for passwords: slow KDFs (bcrypt, scrypt, argon2) exist to
make guessing low-entropy secrets expensive, but guessing a 256-bit random secret is out of reach
at any hash speed, so a leaked hash gives nothing usable, and checking a request costs microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, select, update

from . import schema as t
from .errors import InputError, NotFoundError
from .store import Store
from .types import check_key

KEY_PREFIX = "qrm"
_KEY = re.compile(r"qrm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    name: str
    users: tuple[str, ...] | None  # None: every user
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, user_id: str) -> bool:
        return self.users is None or user_id in self.users


@dataclass(frozen=True)
class NewKey:
    """A key just created: `secret` is the full key, shown once and never stored."""

    key: ApiKey
    secret: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _row(r) -> ApiKey:
    return ApiKey(r.key_id, r.name, None if r.users is None else tuple(r.users), r.created_at, r.revoked_at)


class ApiKeys:
    """The API keys kept in a store (table `api_keys`, migration `m004_api_keys`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _write(self, fn):
        with self.store.engine.connect() as conn:
            conn.execution_options(qrmem_write=True)  # SQLite: BEGIN IMMEDIATE (see store.db)
            with conn.begin():
                return fn(conn)

    def create(self, name: str, users: Sequence[str] | None = None) -> NewKey:
        """A new key for `users` (None: every user). The returned secret is the only copy."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InputError("a key needs a name of 1 to 200 characters")
        if users is not None:
            if isinstance(users, str) or not users:
                raise InputError("users must be a non-empty list of user ids, or None for every user")
            users = tuple(dict.fromkeys(check_key(u, "user id") for u in users))
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        assert _KEY.fullmatch(secret), secret
        key = ApiKey(key_id, name.strip(), users, datetime.now(UTC))

        def write(conn: Connection) -> None:
            conn.execute(t.api_keys.insert().values(
                key_id=key.key_id, name=key.name, secret_hash=_digest(secret),
                users=None if users is None else list(users), created_at=key.created_at))

        self._write(write)
        return NewKey(key, secret)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        with self.store.engine.connect() as conn:
            query = select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
            if not include_revoked:
                query = query.where(t.api_keys.c.revoked_at.is_(None))
            return [_row(r) for r in conn.execute(query)]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by its id (the 12 hex characters after `qrm_`); it stops working at once in
        every server process, since each request looks its key up."""
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id.strip()):
            raise InputError(f"{key_id!r} is not a key id (12 hex characters); `qrmem keys list` shows them")
        key_id = key_id.strip()

        def write(conn: Connection):
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.key_id == key_id)).first()
            if row is None:
                raise NotFoundError(f"no API key {key_id!r}; `qrmem keys list` shows the keys")
            if row.revoked_at is None:
                conn.execute(update(t.api_keys).where(t.api_keys.c.id == row.id)
                             .values(revoked_at=datetime.now(UTC)))
            return conn.execute(select(t.api_keys).where(t.api_keys.c.id == row.id)).first()

        return _row(self._write(write))

    def verify(self, token: str) -> ApiKey | None:
        """The active key `token` is, or None (malformed, unknown, wrong secret or revoked)."""
        match = _KEY.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.key_id == match.group(1))).first()
        if row is None or not hmac.compare_digest(row.secret_hash, _digest(token)):
            return None
        return _row(row) if row.revoked_at is None else None

    def any_active(self) -> bool:
        with self.store.engine.connect() as conn:
            return conn.scalar(select(t.api_keys.c.id).where(t.api_keys.c.revoked_at.is_(None)).limit(1)) is not None

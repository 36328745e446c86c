"""Who is calling: `Authorization: Bearer KEY` checked against the store's API keys on every
request to `/v1` and `/mcp` (so a revoked key stops working at once in every process), and which
users that key may touch (403 otherwise)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from store import ApiKey, InputError, QrmemError
from store.types import check_key

from .errors import AuthError, ForbiddenError
from .responses import send_error

log = logging.getLogger(__name__)

PROTECTED = ("/v1/", "/mcp")
USER_HEADER = "x-qrmem-user"  # names the memory's user on /mcp when the key may touch several


@dataclass(frozen=True)
class Principal:
    """The caller: an API key, or nobody in particular under `--no-auth` (loopback only)."""

    key: ApiKey | None

    def check(self, user_id: str) -> str:
        user_id = check_key(user_id, "user id")
        if self.key is not None and not self.key.allows(user_id):
            raise ForbiddenError(f"API key {self.key.name!r} ({self.key.key_id}) may not touch user "
                                 f"{user_id!r}; use a key created with --users {user_id} or --all")
        return user_id

    def bound_user(self, header: str | None) -> str:
        """The one user an MCP connection acts for: the X-Qrmem-User header, else the key's only user."""
        if header is not None:
            return self.check(header)
        if self.key is not None and self.key.users is not None and len(self.key.users) == 1:
            return self.key.users[0]
        raise InputError("name the user whose memory the tools act on with the X-Qrmem-User header "
                         "(this key may touch several users)")


def principal_of(scope: Scope) -> Principal:
    principal = scope.get("state", {}).get("qrmem_principal")
    if not isinstance(principal, Principal):  # fail closed: the gate did not run
        raise AuthError("not authenticated")
    return principal


class AuthGate:
    """ASGI middleware: authenticates requests to the protected paths before anything else runs
    (before their body is read or validated) and leaves the `Principal` in the scope's state."""

    def __init__(self, app: ASGIApp, *, keys, no_auth: bool, redact: str | None = None) -> None:
        self.app, self.keys, self.no_auth, self.redact = app, keys, no_auth, redact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        try:
            principal = Principal(None) if self.no_auth else await self._authenticate(scope)
        except QrmemError as exc:
            await send_error(exc, scope, receive, send, redact=self.redact)
            return
        scope.setdefault("state", {})["qrmem_principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values:
            raise AuthError("missing API key: send 'Authorization: Bearer KEY' (`qrmem keys create` makes one)")
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer KEY'")
        key = await anyio.to_thread.run_sync(self.keys.verify, token.strip())
        if key is None:
            raise AuthError("invalid or revoked API key; `qrmem keys list` shows the active keys")
        return Principal(key)

"""Request body limit: a body over `max_body` bytes is answered 413 before the app sees it, whether
its size is announced (Content-Length) or only found while it streams in (chunked)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLargeError
from .responses import plain_error, send_error

DRAIN_BYTES = 8 << 20  # read (and drop) up to this much of a refused body, so the client sees the 413


class BodyLimit:
    """ASGI middleware: reads the whole body (at most `max_body` bytes) before calling the app,
    then hands it over in one message; later `receive` calls (disconnect) pass through."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLargeError(
            f"the request body is over the server's limit of {self.max_body} bytes (--max-body); "
            "send fewer turns per request")
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        if lengths:
            try:
                announced = int(lengths[0])
            except ValueError:
                await plain_error(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
                return
            if announced > self.max_body:
                if announced <= self.max_body + DRAIN_BYTES:
                    await _drain(receive)
                await send_error(too_large, scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if message.get("more_body", False):
                    await _drain(receive)
                await send_error(too_large, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive: Receive) -> None:
    """Read the rest of a refused body (bounded): closing a connection with unread data resets it,
    and the client would see a broken connection instead of the 413."""
    drained = 0
    while drained <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return

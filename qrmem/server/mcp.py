"""qrmem as an MCP server (the official `mcp` SDK, v2): five tools over one user's memory.

The user is never a tool argument: `qrmem mcp --user U` binds it for a stdio server, and on
`qrmem serve`'s `/mcp` endpoint it is the caller's key's only user, or the `X-Qrmem-User` header
when the key may touch several (checked against the key like every REST route). Tools run their work
in the service's lanes, like the REST routes, and report qrmem errors as tool errors (one line the
model can act on).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Receive, Scope, Send

from store import InputError, NotFoundError, QrmemError, SessionInfo, TurnIn
from store.types import check_key

from .auth import USER_HEADER, principal_of
from .config import ServeConfig
from .errors import AuthError, one_line
from .responses import send_error
from .service import MemoryService

log = logging.getLogger(__name__)
T = TypeVar("T")
UserOf = Callable[[Context], str]

INSTRUCTIONS = (
    "qrmem is your long-term memory of conversations with the current user, kept across sessions. "
    "Call search_memories before answering anything that may depend on what the user told you "
    "before (their life, plans, preferences, earlier decisions). Call add_memory when the user "
    "shares something worth remembering later. The user is fixed by the connection: you never "
    "choose whose memory you read or write."
)


class ChatMessage(BaseModel):
    role: str = Field(description="'user' (the user), 'assistant' (you), or another speaker's name")
    content: str = Field(description="what was said")


class Stored(BaseModel):
    session_id: str = Field(description="the session the memory is in; pass it to add_memory to add more")
    status: Literal["added", "unchanged", "replaced"]
    turns: int = Field(description="turns now in the session")


class MemoryHit(BaseModel):
    rank: int
    score: float
    text: str
    session_id: str
    session_date: str | None
    turn_ids: list[str]
    evidence: list[str] = Field(default_factory=list, description=(
        "with rerank: the words of this memory the reranker attended to most, heaviest first"))
    time_notes: str | None = None  # e.g. "yesterday = 7 May 2023": what the text's relative dates mean


class Found(BaseModel):
    hits: list[MemoryHit]
    relevance: float | None = Field(None, description=(
        "with rerank: share of the reranker's attention on turns of the person the query names; "
        "low means the matching memories were said by someone else, so say you do not remember it"))


class SessionItem(BaseModel):
    session_id: str
    date: str | None
    turns: int


class TurnItem(BaseModel):
    speaker: str
    text: str
    time: str | None
    id: str | None


class Memories(BaseModel):
    sessions: list[SessionItem] = Field(default_factory=list, description="the sessions, oldest first")
    session_id: str | None = None
    date: str | None = None
    turns: list[TurnItem] = Field(default_factory=list, description="one session's turns, in order")


class Deleted(BaseModel):
    session_id: str | None = Field(description="the session deleted; null when everything was")
    turns: int
    chunks: int


def build_mcp(service: MemoryService, user_of: UserOf) -> MCPServer:
    """An MCP server whose tools act on the memory of `user_of(ctx)`."""
    server = MCPServer("qrmem", instructions=INSTRUCTIONS, version="0.1.0", log_level="WARNING")

    def tool(**hints: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a tool; its docstring (dedented) is the description a model reads."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            server.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""),
                            annotations=ToolAnnotations(open_world_hint=False, **hints))
            return fn
        return register

    redact = service.memory.store.safe_url

    async def call(ctx: Context, fn: Callable[..., T], *args: Any, model: bool = False,
                   needs_models: bool = True, **kwargs: Any) -> T:
        """`fn(user, *args, **kwargs)` in its lane for the bound user; qrmem errors become tool errors."""
        try:
            user = user_of(ctx)
            if needs_models:
                service.require_ready()
            return await service.run(fn, user, *args, model=model, **kwargs)
        except QrmemError as exc:
            raise ToolError(one_line(str(exc), redact)) from None

    @tool(title="Remember", read_only_hint=False, destructive_hint=False, idempotent_hint=False)
    async def add_memory(
        ctx: Context,
        text: Annotated[str | None, Field(description="a fact or event to remember, in the user's words or yours")] = None,
        messages: Annotated[list[ChatMessage] | None, Field(description="or: an exchange to remember, in order")] = None,
        session_id: Annotated[str | None, Field(description="add to this session (from an earlier add_memory); "
                                                            "omit to start a new one")] = None,
        date: Annotated[str | None, Field(description="when it was said, e.g. '8 May 2024' [default: today]")] = None,
    ) -> Stored:
        """Store something worth remembering in later conversations. Call it when the user shares
        facts about themselves, people and pets in their life, plans, preferences, decisions or
        events with dates. Give `text` for one statement or `messages` for an exchange; pass the
        returned session_id to add more to the same conversation. Do not store small talk."""
        if (text is None) == (messages is None):
            raise ToolError("give either text or messages")

        def write(user: str) -> Any:
            return service.append(user, _turns(user, text, messages), session_id=session_id, date=date)

        result = await call(ctx, write)
        return Stored(session_id=result.session_id, status=result.status, turns=result.turns)

    @tool(title="Recall", read_only_hint=True)
    async def search_memories(
        ctx: Context,
        query: Annotated[str, Field(description="what to look for, as a question or keywords")],
        limit: Annotated[int, Field(ge=1, le=50, description="how many memories to return")] = 5,
        rerank: Annotated[bool, Field(description="rerank with the QR reranker: better for specific details, slower")] = False,
        session_ids: Annotated[list[str] | None, Field(description="only these sessions")] = None,
        after: Annotated[str | None, Field(description="only sessions dated on or after YYYY-MM-DD")] = None,
        before: Annotated[str | None, Field(description="only sessions dated on or before YYYY-MM-DD")] = None,
    ) -> Found:
        """Search the user's long-term memory. Call it before answering a question that may depend
        on earlier conversations (what they told you, when something happened, names, plans).
        Returns the best matching turns, best first, with their session and date."""
        hits = await call(ctx, service.search, query, k=limit, mode=None, rerank=rerank, rerank_k=None,
                          session_ids=session_ids, after=after, before=before, model=rerank)
        return Found(hits=[MemoryHit(rank=h.rank, score=h.score, text=h.text, session_id=h.session_id,
                                     session_date=h.session_date, turn_ids=list(h.turn_ids),
                                     evidence=[e.text for e in h.evidence], time_notes=h.time_notes)
                           for h in hits],
                     relevance=hits.relevance)

    @tool(title="List memories", read_only_hint=True)
    async def get_memories(
        ctx: Context,
        session_id: Annotated[str | None, Field(description="a session to read in full; omit to list the sessions")] = None,
    ) -> Memories:
        """List the user's stored conversation sessions (id, date, size), or read one session's
        turns in full. Call it when the user asks what you remember about them, or to read the
        conversation around a search hit."""
        if session_id is None:
            rows = await call(ctx, _sessions_or_none, service, needs_models=False)
            return Memories(sessions=[SessionItem(session_id=s.session_id, date=s.date, turns=s.turns)
                                      for s in rows])
        got = await call(ctx, service.session, session_id, needs_models=False)
        return Memories(session_id=got.info.session_id, date=got.info.date,
                        turns=[TurnItem(speaker=t.speaker, text=t.text, time=t.time, id=t.id) for t in got.turns])

    @tool(title="Forget a session", read_only_hint=False, destructive_hint=True, idempotent_hint=True)
    async def delete_memory(
        ctx: Context,
        session_id: Annotated[str, Field(description="the session to delete (from get_memories or a search hit)")],
    ) -> Deleted:
        """Delete one stored session for good. Call it only when the user asks you to forget that
        conversation or something in it."""
        result = await call(ctx, service.delete_session, session_id, needs_models=False)
        return Deleted(session_id=result.session_id, turns=result.turns, chunks=result.chunks)

    @tool(title="Forget everything", read_only_hint=False, destructive_hint=True, idempotent_hint=True)
    async def delete_all_memories(
        ctx: Context,
        confirm: Annotated[bool, Field(description="must be true: the user explicitly asked to forget everything")],
    ) -> Deleted:
        """Delete everything remembered about the user, for good. Call it only when the user
        explicitly asks you to forget all of it, with confirm=true."""
        if confirm is not True:
            raise ToolError("nothing deleted: call again with confirm=true once the user has asked to forget everything")
        result = await call(ctx, service.delete_user, needs_models=False)
        return Deleted(session_id=None, turns=result.turns, chunks=result.chunks)

    return server


def _turns(user: str, text: str | None, messages: list[ChatMessage] | None) -> list[TurnIn]:
    pairs = [(user, text)] if text is not None else [
        ({"user": user, "assistant": "assistant"}.get(m.role, m.role), m.content) for m in messages or []]
    if not pairs:
        raise InputError("messages must hold at least one message")
    try:
        return [TurnIn(speaker=speaker, text=said) for speaker, said in pairs]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(err["msg"], field=".".join(map(str, err["loc"])) or None) from None


def _sessions_or_none(user: str, service: MemoryService) -> list[SessionInfo]:
    try:
        return service.sessions(user)
    except NotFoundError:  # nothing stored for this user yet
        return []


def http_user(ctx: Context) -> str:
    """The user `/mcp` bound for this request (set by `McpEndpoint` after checking the key)."""
    request = ctx.request_context.request
    user = getattr(request, "scope", {}).get("state", {}).get("qrmem_user")
    if not isinstance(user, str):  # fail closed
        raise AuthError("no user is bound to this MCP request")
    return user


class McpEndpoint:
    """ASGI app for `/mcp`: binds the caller's user, then hands the request to the SDK's
    streamable-HTTP transport (stateless, JSON responses: any process can answer any request)."""

    def __init__(self, manager: StreamableHTTPSessionManager, redact: str | None) -> None:
        self.manager, self.redact = manager, redact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            header = next((v.decode("utf-8", "replace") for k, v in scope["headers"]
                           if k == USER_HEADER.encode()), None)
            user = principal_of(scope).bound_user(header)
        except QrmemError as exc:
            await send_error(exc, scope, receive, send, redact=self.redact)
            return
        scope.setdefault("state", {})["qrmem_user"] = user
        await self.manager.handle_request(scope, receive, send)


def mount_mcp(server: MCPServer, service: MemoryService) -> McpEndpoint:
    """The `/mcp` endpoint; `server.session_manager.run()` must run in the app's lifespan."""
    server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                               host=service.cfg.host, max_request_body_size=service.cfg.max_body)
    return McpEndpoint(server.session_manager, service.memory.store.safe_url)


def run_stdio(cfg: ServeConfig, user: str) -> None:
    """`qrmem mcp`: serve one user's memory over stdio until the host closes stdin. The models are
    loaded before the first message is read."""
    user = check_key(user, "user id")
    service = MemoryService(cfg)
    service.load_models()
    service.require_ready()
    server = build_mcp(service, lambda ctx: user)
    try:
        anyio.run(server.run_stdio_async)
    finally:
        service.close()


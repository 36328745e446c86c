"""The REST API (`/v1`), health and readiness, OpenAPI at `/openapi.json` and docs at `/docs`, and the
MCP streamable-HTTP endpoint at `/mcp`, in one ASGI app. Routes validate, call `MemoryService` in a
lane and turn errors into `{"error": {"type", "message"}}` with the right status."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from store import QrmemError, StoreError

from .auth import AuthGate, principal_of
from .limits import BodyLimit
from .mcp import build_mcp, http_user, mount_mcp
from .models import (
    AddOut,
    ChatBody,
    ChatOut,
    DeleteOut,
    ErrorOut,
    HitOut,
    MessagesBody,
    SearchBody,
    SearchOut,
    SessionBody,
    SessionOut,
    SessionsOut,
    SessionTurnsOut,
    StatusOut,
    SummariesOut,
    SummaryOut,
    TurnOut,
    UsedChunkOut,
)
from .responses import error_response, plain_error
from .service import MemoryService

log = logging.getLogger(__name__)


def get_service(request: Request) -> MemoryService:
    return request.app.state.service


def allowed_user(request: Request, user_id: Annotated[str, Path(description="the memory's owner")]) -> str:
    """The path's user, if the caller's key may touch it (403 otherwise)."""
    return principal_of(request.scope).check(user_id)


Service = Annotated[MemoryService, Depends(get_service)]
User = Annotated[str, Depends(allowed_user)]
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": what} for status, what in [
        (400, "invalid input (the message names the field)"), (401, "missing, invalid or revoked API key"),
        (403, "the key may not touch this user"), (404, "no such user or session"),
        (409, "the session is stored with different content (pass replace)"),
        (413, "body over the size limit"), (422, "body fails validation (wrong types, unknown fields)"),
        (429, "queue full: retry after Retry-After seconds"),
        (503, "models loading, store unavailable, timeout, or a part not configured")]}

v1 = APIRouter(prefix="/v1/users/{user_id}", responses=ERRORS)


@v1.post("/sessions", response_model=AddOut, summary="Store one session")
async def add_session(body: SessionBody, user: User, service: Service) -> AddOut:
    """One session with its turns, written atomically. The same content again is a no-op
    (`unchanged`); different content under a stored id is a 409 unless `replace`."""
    service.require_ready()
    result = await service.run(service.add_session, user, body.turns, session_id=body.session_id,
                               date=body.date, replace=body.replace)
    return AddOut.model_validate(result)


@v1.post("/messages", response_model=AddOut, summary="Append turns to a session")
async def add_messages(body: MessagesBody, user: User, service: Service) -> AddOut:
    """Append turns as they happen (the chat write path). Without `session_id` a new session is
    opened; its id comes back, send it with the next turns of the same conversation."""
    service.require_ready()
    result = await service.run(service.append, user, body.turns, session_id=body.session_id, date=body.date)
    return AddOut.model_validate(result)


@v1.post("/search", response_model=SearchOut, summary="Search the user's memory")
async def search(body: SearchBody, user: User, service: Service) -> SearchOut:
    """The user's best chunks for `query`, best first, with the same fields as `qrmem search --json`.
    `rerank` runs the server's reranker (QRRanker) over the first-stage top `rerank_k`."""
    service.require_ready()
    hits = await service.run(service.search, user, body.query, k=body.k, mode=body.mode, rerank=body.rerank,
                             rerank_k=body.rerank_k, session_ids=body.session_ids, after=body.after,
                             before=body.before, model=body.rerank)
    return SearchOut(hits=[HitOut.model_validate(h.as_dict()) for h in hits], relevance=hits.relevance)


@v1.get("/sessions", response_model=SessionsOut, summary="List the user's sessions")
async def list_sessions(user: User, service: Service) -> SessionsOut:
    rows = await service.run(service.sessions, user)
    return SessionsOut(user_id=user, sessions=[SessionOut.model_validate(s) for s in rows])


@v1.get("/sessions/{session_id}", response_model=SessionTurnsOut, summary="One session's turns")
async def get_session(session_id: str, user: User, service: Service) -> SessionTurnsOut:
    got = await service.run(service.session, user, session_id)
    return SessionTurnsOut(user_id=user, session_id=got.info.session_id, date=got.info.date,
                           position=got.info.position, turns=[TurnOut.model_validate(t) for t in got.turns])


@v1.delete("/sessions/{session_id}", response_model=DeleteOut, summary="Delete one session")
async def delete_session(session_id: str, user: User, service: Service) -> DeleteOut:
    """Deletes the session's turns, chunks, vectors and summary; the conversation summary is rolled
    back to before it (`needs_resummarize`: later sessions must be rolled in again)."""
    result = await service.run(service.delete_session, user, session_id)
    return DeleteOut.model_validate(result)


@v1.get("/export", summary="Export the user's memory (qrmem JSON, re-importable)")
async def export(user: User, service: Service) -> dict[str, Any]:
    return await service.run(service.export, user)


@v1.get("/summaries", response_model=SummariesOut, summary="Latest session and conversation summaries")
async def summaries(user: User, service: Service) -> SummariesOut:
    rows = await service.run(service.summaries, user)
    return SummariesOut(user_id=user, summaries=[SummaryOut.model_validate(s) for s in rows])


@v1.post("/chat", response_model=ChatOut, summary="Chat with memory (needs --generator)")
async def chat(body: ChatBody, user: User, service: Service) -> ChatOut:
    """Retrieve (and rerank) memories, answer with the generator, write the exchange back into the
    user's open chat session on this server."""
    service.require_ready()
    service.require_generator()
    answer = await service.run(service.chat, user, body.message, date=body.date, model=True)
    return ChatOut(text=answer.text, session_id=answer.session_id, turn_ids=answer.turn_ids,
                   chunks=[UsedChunkOut.model_validate(c) for c in answer.chunks], seconds=answer.seconds,
                   relevance=answer.relevance, abstained=answer.abstained)


users = APIRouter(prefix="/v1/users", responses=ERRORS)


@users.delete("/{user_id}", response_model=DeleteOut, summary="Delete a user and all their memory")
async def delete_user(user: User, service: Service) -> DeleteOut:
    result = await service.run(service.delete_user, user)
    return DeleteOut.model_validate(result)


health = APIRouter()


@health.get("/healthz", response_model=StatusOut, summary="The process is alive")
async def healthz() -> StatusOut:
    return StatusOut(status="ok")


@health.get("/readyz", response_model=StatusOut, responses={503: {"model": ErrorOut}},
            summary="The store is reachable and the models are loaded")
async def readyz(service: Service) -> StatusOut:
    service.require_ready()
    try:
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(service.keys.any_active, abandon_on_cancel=True)
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the answer is "not ready"
        log.warning("readiness: store unreachable: %s", exc)
        raise StoreError("the store does not answer; check the database and the server log") from None
    return StatusOut(status="ready", detail={"embedder": service.memory.embedder.name,
                                             "reranker": service.cfg.reranker,
                                             "generator": service.cfg.generator})


def create_app(service: MemoryService) -> FastAPI:
    """The whole ASGI app for one service. Starting it (its lifespan) loads the models in the
    background (`/readyz` says when they are in), stopping it finishes the work already accepted."""
    mcp = build_mcp(service, http_user)
    mcp_endpoint = mount_mcp(mcp, service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=service.load_models, name="qrmem-load", daemon=True).start()
        async with mcp.session_manager.run():
            yield
        await asyncio.to_thread(service.close)  # waits for jobs still running in the lanes

    app = FastAPI(title="qrmem", version="0.1.0", lifespan=lifespan, redoc_url=None,
                  description="Long-term conversational memory as a service. Authenticate with "
                              "`Authorization: Bearer KEY` (`qrmem keys create`). MCP (streamable HTTP) "
                              "is at `/mcp`.")
    app.state.service = service
    app.include_router(v1)
    app.include_router(users)
    app.include_router(health)
    app.add_route("/mcp", mcp_endpoint, include_in_schema=False)
    redact = service.memory.store.safe_url

    @app.exception_handler(QrmemError)
    async def qrmem_error(request: Request, exc: QrmemError) -> JSONResponse:
        return error_response(exc, redact=redact)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if isinstance(exc.body, bytes | bytearray):  # a body FastAPI did not read as JSON
            return plain_error(415, "unsupported_media_type", "send the body as JSON with "
                                                              "Content-Type: application/json")
        if any(e.get("type") == "json_invalid" for e in errors):
            return plain_error(400, "bad_json", "the request body is not valid JSON; send a JSON object "
                                                "with Content-Type: application/json")
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                          for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return plain_error(422, "validation_error", f"{where}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        message = {404: f"no route {request.method} {request.url.path}; see /docs"}.get(exc.status_code, detail)
        return plain_error(exc.status_code, kinds.get(exc.status_code, "http_error"), message)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return plain_error(500, "internal_error", "internal error; the server log has the details")

    # Outermost first: authenticate before reading the body, then bound the body.
    app.add_middleware(BodyLimit, max_body=service.cfg.max_body)
    app.add_middleware(AuthGate, keys=service.keys, no_auth=service.cfg.no_auth, redact=redact)
    return app

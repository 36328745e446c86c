"""The `qrmem` command line: thin commands over the library. Failures exit 1 with one line."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from memory import Memory

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qrmem: long-term memory for chatbots. Store dialogue, search it, rerank it.")

DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar="QRMEM_DB", help="SQLite file or SQLAlchemy URL [default: $QRMEM_DB or the user data dir]")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="user (conversation owner) id")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
EmbedderOpt = Annotated[str | None, typer.Option(
    "--embedder", help="sentence-transformers name/path or BACKEND:ARG (e.g. hashing:256) "
                       "[default: the model already in the store, else the offline MiniLM]")]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def handle_errors(fn: F) -> F:
    """Turn qrmem's own errors into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from store.errors import QrmemError

        try:
            return fn(*args, **kwargs)
        except QrmemError as exc:
            raise _fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def open_memory(db: str | None, embedder: str | None = None, chunker: str = "turn") -> Memory:
    from memory import Memory

    return Memory(db, embedder=embedder, chunker=chunker)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
@handle_errors
def ingest(
    file: Annotated[Path, typer.Argument(help="LoCoMo JSON, qrmem JSON or JSONL chat log")],
    db: DbOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, locomo, qrmem or jsonl")] = "auto",
    replace: Annotated[bool, typer.Option("--replace", help="overwrite stored sessions that differ")] = False,
    chunker: Annotated[str, typer.Option(help="turn, window or window:SIZE:OVERLAP")] = "turn",
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a dialogue file. LoCoMo samples become users (user id = sample_id).

    The whole file is validated first; each session is then written in one transaction, and
    re-ingesting identical sessions does nothing, so an interrupted ingest can simply be re-run.
    """
    mem = open_memory(db, embedder, chunker)
    report = mem.ingest_file(file, fmt=fmt, replace=replace, progress=not as_json and sys.stderr.isatty())
    summary = {"added": report.count("added"), "replaced": report.count("replaced"),
               "unchanged": report.count("unchanged"), "turns": report.turns, "chunks": report.chunks,
               "embed_seconds": round(report.embed_seconds, 2),
               "write_seconds": round(report.write_seconds, 2)}
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"{summary['added']} sessions added, {summary['replaced']} replaced, "
                   f"{summary['unchanged']} unchanged; {report.turns} turns, {report.chunks} chunks "
                   f"(embedding {report.embed_seconds:.1f}s, database {report.write_seconds:.1f}s)")


@app.command()
@handle_errors
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    user: UserOpt,
    db: DbOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="number of hits")] = 10,
    mode: Annotated[str, typer.Option(help="hybrid, dense or bm25")] = "hybrid",
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search one user's memory; best hits first."""
    hits = open_memory(db, embedder).search(user, query, k=k, mode=mode)  # type: ignore[arg-type]
    if as_json:
        _print_json([h.as_dict() for h in hits])
        return
    if not hits:
        typer.echo(f"no memory for user {user!r}")
    for h in hits:
        typer.echo(f"{h.rank:3d}. {h.score:.4f} [{h.session_id}, {h.session_date or 'no date'}] "
                   f"{','.join(h.turn_ids)}  {h.text}")


@app.command()
@handle_errors
def sessions(user: UserOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List a user's sessions in conversation order."""
    rows = open_memory(db).sessions(user)
    if as_json:
        _print_json([{"session_id": s.session_id, "date": s.date, "position": s.position,
                      "turns": s.turns, "chunks": s.chunks} for s in rows])
        return
    for s in rows:
        typer.echo(f"{s.session_id}\t{s.date or '-'}\t{s.turns} turns\t{s.chunks} chunks")


@app.command()
@handle_errors
def delete(
    user: UserOpt,
    db: DbOpt = None,
    session: Annotated[str | None, typer.Option(help="delete only this session")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a session, or a whole user, with all their turns, chunks, embeddings and summaries."""
    what = f"session {session!r} of user {user!r}" if session else f"user {user!r} and all their memory"
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        raise _fail("nothing deleted")
    mem = open_memory(db)
    if session:
        mem.delete_session(user, session)
    else:
        mem.delete_user(user)
    typer.echo(f"deleted {what}")


@app.command()
@handle_errors
def export(
    user: UserOpt,
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file to write (mode 0600)")] = None,
) -> None:
    """Export a user's memory as qrmem JSON (to stdout, or to --out readable by the owner only)."""
    mem = open_memory(db)
    if out is None:
        _print_json(mem.export_user(user))
    else:
        mem.export_to(user, out)
        typer.echo(f"wrote {out}")


@app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="a file written by `qrmem export`")],
    db: DbOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="overwrite stored sessions that differ")] = False,
    embedder: EmbedderOpt = None,
) -> None:
    """Import memory exported by `qrmem export` (re-chunked and re-embedded here)."""
    report = open_memory(db, embedder).ingest_file(file, fmt="qrmem", replace=replace)
    typer.echo(f"{report.count('added')} sessions added, {report.count('replaced')} replaced, "
               f"{report.count('unchanged')} unchanged")


@app.command()
@handle_errors
def info(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of users, sessions, turns, chunks, embeddings and summaries; embedding models."""
    data = open_memory(db).info()
    counts = {k: data[k] for k in ("users", "sessions", "turns", "chunks", "embeddings", "summaries")}
    if as_json:
        _print_json(counts)
        return
    typer.echo(f"db: {data['db']}")
    for key, value in counts.items():
        typer.echo(f"{key}: {value}")
    for model, n in data["embedding_models"].items():
        typer.echo(f"embedding model {model}: {n} vectors")

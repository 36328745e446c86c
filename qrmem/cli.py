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


def open_memory(db: str | None, embedder: str | None = None, chunker: str = "turn",
                reranker=None, secure_delete: bool = False) -> Memory:
    from memory import Memory

    return Memory(db, embedder=embedder, chunker=chunker, reranker=reranker, secure_delete=secure_delete)


ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="reranker LM: local dir, .gguf file or hub id [default: embedded SmolLM2]")]
HeadsOpt = Annotated[str | None, typer.Option(
    "--heads", help="QR heads as LAYER-HEAD,... or a head-file .json [default: the model's own]")]
CalOpt = Annotated[bool | None, typer.Option(
    "--calibrate/--no-calibrate", help="null-query calibration [default: as the head list was chosen]")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... [default: auto]")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16, float16")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code",
                                        help="run code shipped with a hub model (needed by MindscapeRAG/QRRanker)")]


def load_qr(model: str | None, heads: str | None, calibrate: bool | None, device: str | None, dtype: str,
            trust_remote_code: bool):
    from memory import QRRanker

    options = {} if calibrate is None else {"calibrate": calibrate}
    return QRRanker.load(model, heads=heads, device=device, dtype=dtype,
                         trust_remote_code=trust_remote_code, **options)


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
    rerank: Annotated[bool, typer.Option("--rerank", help="rerank the first stage with QRRanker")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="first-stage candidates to rerank")] = 20,
    model: ModelOpt = None,
    heads: HeadsOpt = None,
    calibrate: CalOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    session: Annotated[list[str] | None, typer.Option(
        "--session", metavar="ID", help="only this session (repeat for several)")] = None,
    after: Annotated[str | None, typer.Option(metavar="DATE", help="only sessions dated on or after YYYY-MM-DD")] = None,
    before: Annotated[str | None, typer.Option(metavar="DATE", help="only sessions dated on or before YYYY-MM-DD")] = None,
) -> None:
    """Search one user's memory; best hits first. --rerank reorders the first-stage top
    --rerank-k with QRRanker (the embedded SmolLM2 unless --model). --session, --after and
    --before keep only those sessions (undated sessions are left out by a date bound)."""
    ranker = load_qr(model, heads, calibrate, device, dtype, trust_remote_code) if rerank else None
    hits = open_memory(db, embedder, reranker=ranker).search(  # type: ignore[arg-type]
        user, query, k=k, mode=mode, rerank=rerank, rerank_k=rerank_k, session_ids=session,
        after=after, before=before)
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
def rank(
    file: Annotated[Path, typer.Argument(
        help="candidates: a JSON list of strings or {text, context?} objects, or a text file with "
             "one per line; or QRRanker records {question, paragraphs: [{paragraph_text, title?}]}")],
    query: Annotated[str | None, typer.Option("--query", "-q", help="the query (not for records)")] = None,
    k: Annotated[int | None, typer.Option("--k", "-k", help="show only the best k")] = None,
    model: ModelOpt = None,
    heads: HeadsOpt = None,
    calibrate: CalOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rerank candidates for a query with QRRanker (listwise, one prompt)."""
    from memory.qr.records import read_rank_input

    jobs = read_rank_input(file, query)
    ranker = load_qr(model, heads, calibrate, device, dtype, trust_remote_code)
    out = []
    for job in jobs:
        ranked = ranker.rank(job.query, job.texts, contexts=job.contexts, summary=job.summary)
        rows = [{"rank": r.rank, "index": r.index, "score": r.score, "text": r.text}
                for r in ranked.top_k(k or len(ranked))]
        out.append({"id": job.id, "query": job.query, "results": rows})
    if as_json:
        _print_json(out if len(out) > 1 or out[0]["id"] is not None else out[0]["results"])
        return
    for job in out:
        typer.echo(f"query: {job['query']}" + (f"  (id {job['id']})" if job["id"] is not None else ""))
        for row in job["results"]:
            typer.echo(f"{row['rank']:3d}. {row['score']:+.4f} [{row['index']}] {row['text']}")


heads_app = typer.Typer(no_args_is_help=True, help="Find the QR heads of a causal LM.")
app.add_typer(heads_app, name="heads")


@heads_app.command("detect")
@handle_errors
def heads_detect(
    data: Annotated[Path, typer.Option("--data", help="LoCoMo file, or QRRanker records (JSON/JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="head file to write (a .png heatmap lands beside it)")],
    method: Annotated[str, typer.Option("--method", help="qr (per-head nDCG@10) or core (contrastive)")] = "qr",
    limit: Annotated[int, typer.Option("--limit", help="seed queries to use (with a gold candidate)")] = 64,
    top: Annotated[int, typer.Option("--top", help="heads to keep")] = 16,
    k: Annotated[int, typer.Option("--k", help="LoCoMo: first-stage candidates per question")] = 20,
    conversations: Annotated[str | None, typer.Option(help="only these groups/conversations (comma-separated)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="LoCoMo: store to ingest into [default: a temp file]")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Score every (layer, head) on seed queries and write the best as a head list."""
    from memory import QRRanker
    from memory.qr import data as qdata
    from memory.qr.detect import METHODS, detect, write

    if method not in METHODS:
        raise _fail(f"unknown method {method!r}; choose one of {list(METHODS)}")
    groups = conversations.split(",") if conversations else None
    records = qdata.sample(qdata.load_records(data, k=k, db=db, conversations=groups), limit, seed)
    ranker = QRRanker.load(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           all_layers=True)
    det = detect(ranker, records, method=method, top=top, seed=seed, progress=sys.stderr.isatty(),
                 meta={"seed_data": data.name, "k": k, "limit": limit, "sampling_seed": seed,
                       "groups": sorted({r.split_key for r in records})})
    head_file, png = write(det, out)
    typer.echo(f"{len(det.heads)} heads by {method} on {det.queries} queries: {', '.join(map(str, det.heads))}")
    typer.echo(f"top-{top} overlap across random halves of the queries: {det.stability:.2f}")
    typer.echo(f"wrote {head_file} and {png}")


@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="LoCoMo file, or QRRanker records (JSON/JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write (QRRanker.load(DIR))")],
    model: ModelOpt = None,
    heads: HeadsOpt = None,
    val_conversations: Annotated[str | None, typer.Option(
        help="validation groups/conversations (comma-separated) [default: a third, by seed]")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many training queries")] = None,
    val_limit: Annotated[int | None, typer.Option(help="at most this many validation queries")] = None,
    k: Annotated[int, typer.Option("--k", help="LoCoMo: first-stage candidates per question")] = 20,
    db: Annotated[str | None, typer.Option("--db", help="LoCoMo: store to ingest into [default: a temp file]")] = None,
    method: Annotated[str, typer.Option(help="lora or attention (train the projections themselves)")] = "lora",
    epochs: Annotated[int, typer.Option()] = 1,
    lr: Annotated[float, typer.Option()] = 2e-4,
    grad_accum: Annotated[int, typer.Option(help="queries per optimizer step")] = 8,
    lora_r: Annotated[int, typer.Option()] = 8,
    layers_from: Annotated[int | None, typer.Option(help="lowest layer to train [default: lowest QR layer - 2]")] = None,
    temperature: Annotated[float, typer.Option(help="softmax temperature of the listwise loss")] = 0.1,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many optimizer steps")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/checkpoint")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Train QR heads listwise (group-wise contrastive loss on max-min normalised QR scores).

    Splits by conversation, never by question; validates each epoch; checkpoints every optimizer
    step (resume with --resume); writes a directory that `QRRanker.load(DIR)` and --model accept.
    """
    from memory import QRRanker
    from memory.qr import data as qdata
    from memory.qr.train import TrainConfig
    from memory.qr.train import train as run_training

    cfg = TrainConfig(method=method, epochs=epochs, lr=lr, grad_accum=grad_accum, lora_r=lora_r,
                      lora_alpha=2 * lora_r, layers_from=layers_from, temperature=temperature,
                      max_steps=max_steps, seed=seed, gradient_checkpointing=gradient_checkpointing)
    records = qdata.load_records(data, k=k, db=db)
    val_groups = val_conversations.split(",") if val_conversations else None
    train_recs, val_recs = qdata.split_by_group(records, val_groups, seed=seed)
    train_recs = qdata.sample(train_recs, limit, seed)
    val_recs = qdata.sample(val_recs, val_limit, seed)
    typer.echo(f"training on {len(train_recs)} queries ({len({r.split_key for r in train_recs})} groups), "
               f"validating on {len(val_recs)} ({', '.join(sorted({r.split_key for r in val_recs}))})")
    ranker = QRRanker.load(model, heads=heads, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    base = str(Path(model).resolve()) if model and Path(model).exists() else model
    report = run_training(ranker, train_recs, val_recs, out, cfg, base=base, resume=resume,
                          progress=sys.stderr.isatty())
    typer.echo(f"before training: {report.baseline}")
    for ep in report.epochs:
        typer.echo(f"epoch {ep.epoch}: loss {ep.train_loss:.4f}, {ep.seconds_per_query:.2f}s/query, "
                   f"validation {ep.val}")
    typer.echo(f"wrote {out} in {report.seconds:.0f}s")


@app.command()
@handle_errors
def summarize(
    user: UserOpt,
    db: DbOpt = None,
    redo: Annotated[bool, typer.Option("--redo", help="recompute every session and restart the rolling summary")] = False,
    generator: Annotated[str, typer.Option(help="transformers[:MODEL] (default: offline SmolLM2) or openai:MODEL")] = "transformers",
    base_url: Annotated[str | None, typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8000/v1")] = None,
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the key")] = "OPENAI_API_KEY",
) -> None:
    """Compute the missing session summaries of a user in order, rolling the conversation summary."""
    from memory import Summarizer, load_generator

    mem = open_memory(db)
    mem.summarizer = Summarizer(load_generator(generator, base_url=base_url, api_key_env=api_key_env))
    n = mem.summarize(user, redo=redo)
    conv = next((s for s in mem.summaries(user) if s.kind == "conversation"), None)
    typer.echo(f"summarised {n} sessions of {user!r}")
    if conv is not None:
        typer.echo(f"conversation summary (v{conv.version}): {conv.text}")


@app.command()
@handle_errors
def chat(
    user: UserOpt,
    db: DbOpt = None,
    generator: Annotated[str, typer.Option(help="transformers[:MODEL] (default: offline SmolLM2) or openai:MODEL")] = "transformers",
    base_url: Annotated[str | None, typer.Option(help="openai: server URL")] = None,
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the key")] = "OPENAI_API_KEY",
    top_n: Annotated[int, typer.Option(help="memories given to the generator")] = 3,
    rerank: Annotated[bool, typer.Option("--rerank/--no-rerank", help="rerank with QRRanker")] = True,
    summarize: Annotated[bool, typer.Option("--summarize/--no-summarize", help="roll summaries at the end")] = True,
) -> None:
    """Chat with persistent memory: each exchange is stored; memory carries over between runs.
    Type /end (or Ctrl-D) to close the session."""
    from agent import MemoryAgent
    from memory import Summarizer, load_generator

    gen = load_generator(generator, base_url=base_url, api_key_env=api_key_env)
    mem = open_memory(db)
    mem.summarizer = Summarizer(gen) if summarize else None
    agent = MemoryAgent(mem, gen, top_n=top_n, rerank=rerank)
    typer.echo(f"memory: {mem.store.safe_url}, user {user!r}; /end to finish")
    try:
        while True:
            try:
                message = input("you> ").strip()
            except EOFError:
                break
            if message in ("/end", "/quit", "/exit"):
                break
            if not message:
                continue
            answer = agent.chat(user, message)
            cited = ", ".join(answer.turn_ids) or "no memories"
            typer.echo(f"bot> {answer.text}\n     (memories: {cited})")
    finally:
        session = agent.end_session(user)
        if session:
            typer.echo(f"saved session {session}")


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate qrmem end to end.")
app.add_typer(eval_app, name="eval")


@eval_app.command("locomo")
@handle_errors
def eval_locomo(
    data: Annotated[Path | None, typer.Option(help="locomo10.json-style file [default: a slice of locomo_dev, else the shipped tiny one]")] = None,
    conversations: Annotated[str | None, typer.Option(help="sample ids, comma-separated")] = None,
    limit: Annotated[int | None, typer.Option(help="questions in all")] = None,
    out: Annotated[Path, typer.Option(help="results folder")] = Path("runs/locomo"),
    k: Annotated[int, typer.Option("--k", help="first-stage candidates to rerank")] = 20,
    top_n: Annotated[int, typer.Option("--top-n", help="chunks given to the generator")] = 3,
    reranker: Annotated[str, typer.Option(help="qr, qr:PATH or none")] = "qr",
    generator: Annotated[str, typer.Option(help="transformers[:MODEL] or openai:MODEL")] = "transformers",
    base_url: Annotated[str | None, typer.Option(help="openai: server URL")] = None,
    summaries: Annotated[bool, typer.Option("--summaries", help="roll summaries, give them to the reranker")] = False,
    categories: Annotated[str | None, typer.Option(help="question categories, e.g. 1,2,3,4 [default: all]")] = None,
    no_answer: Annotated[bool, typer.Option("--no-answer", help="retrieval only: skip the generator, no F1")] = False,
    download: Annotated[bool, typer.Option("--download", help="fetch the public locomo10.json (needs network)")] = False,
) -> None:
    """Ingest LoCoMo conversations session by session, answer every question from memory, score it."""
    from agent.locomo import build_and_run, parse_categories, report

    summary = build_and_run(out=out, data=data, limit=limit, k=k, top_n=top_n,
                            conversations=conversations.split(",") if conversations else None,
                            reranker=reranker, generator=generator, base_url=base_url,
                            summaries=summaries, download_public=download, progress=sys.stderr.isatty(),
                            categories=parse_categories(categories), answer=not no_answer)
    typer.echo(report(summary))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'chart.png'}")


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
    secure: Annotated[bool, typer.Option("--secure", help="SQLite: overwrite the deleted content and "
                                                           "truncate the write-ahead log")] = False,
) -> None:
    """Delete a session, or a whole user, with all their turns, chunks, embeddings and summaries.
    Deleting a session rolls the conversation summary back to before it (`qrmem summarize` rolls
    the later sessions in again)."""
    what = f"session {session!r} of user {user!r}" if session else f"user {user!r} and all their memory"
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        raise _fail("nothing deleted")
    mem = open_memory(db, secure_delete=secure)
    result = mem.delete_session(user, session) if session else mem.delete_user(user)
    typer.echo(f"deleted {what}: {result.turns} turns, {result.chunks} chunks, {result.summaries} summaries")
    if result.needs_resummarize:
        typer.echo(f"the conversation summary was rolled back; run `qrmem summarize --user {user}` "
                   "to roll the later sessions in again")


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
def check(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Integrity check: database checks, orphans, half-written sessions, embeddings vs chunks.
    Exits 1 when anything is damaged."""
    from store import Store

    report = Store(db).check()
    if as_json:
        _print_json({"ok": report.ok, "counts": report.counts.as_dict(), "problems": report.problems,
                     "warnings": report.warnings, "checks": report.checks})
    else:
        typer.echo(" ".join(f"{k}={v}" for k, v in report.counts.as_dict().items()))
        for w in report.warnings:
            typer.echo(f"warning: {w}")
        for prob in report.problems:
            typer.echo(f"problem: {prob}")
        typer.echo(f"{'ok' if report.ok else 'DAMAGED'}: {len(report.checks)} checks, "
                   f"{len(report.problems)} problems")
    if not report.ok:
        raise typer.Exit(1)


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


# -- the service: `qrmem keys`, `qrmem serve`, `qrmem mcp` ------------------------------------------

keys_app = typer.Typer(no_args_is_help=True, help="API keys for `qrmem serve` (stored hashed).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@handle_errors
def keys_create(
    name: Annotated[str, typer.Option("--name", help="what the key is for, e.g. the app using it")],
    users: Annotated[str | None, typer.Option("--users", help="the users it may touch, comma-separated")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="it may touch every user")] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    from store import ApiKeys, Store

    if all_users == (users is not None):
        raise _fail("give exactly one of --users U1,U2 and --all")
    wanted = None if all_users else [u.strip() for u in (users or "").split(",") if u.strip()]
    new = ApiKeys(Store(db)).create(name, wanted)
    if as_json:
        _print_json({"id": new.key.key_id, "name": new.key.name, "users": new.key.users, "key": new.secret})
        return
    typer.echo(new.secret)
    scope = "every user" if new.key.users is None else ", ".join(new.key.users)
    typer.echo(f"key {new.key.key_id} ({new.key.name}) for {scope}: store it now, it is not shown again",
               err=True)


@keys_app.command("list")
@handle_errors
def keys_list(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List the API keys (id, name, users, created, revoked), never their secrets."""
    from store import ApiKeys, Store

    keys = ApiKeys(Store(db)).list()
    if as_json:
        _print_json([{"id": k.key_id, "name": k.name, "users": k.users, "created_at": k.created_at,
                      "revoked_at": k.revoked_at} for k in keys])
        return
    for k in keys:
        typer.echo(f"{k.key_id}\t{k.name}\t{'*' if k.users is None else ','.join(k.users)}\t"
                   f"{k.created_at:%Y-%m-%d %H:%M}\t{'revoked' if k.revoked_at else 'active'}")


@keys_app.command("revoke")
@handle_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id, from `qrmem keys list`")],
                db: DbOpt = None) -> None:
    """Revoke an API key: every server process refuses it from the next request on."""
    from store import ApiKeys, Store

    key = ApiKeys(Store(db)).revoke(key_id)
    typer.echo(f"revoked key {key.key_id} ({key.name})")


RerankerOpt = Annotated[str, typer.Option("--reranker", help="qr (embedded QRRanker), qr:PATH_OR_HUB_ID, or none")]


@app.command()
@handle_errors
def serve(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="address to bind; loopback unless you mean it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8420,
    workers: Annotated[int, typer.Option(help="threads for database and embedding work in this process")] = 4,
    queue: Annotated[int, typer.Option(help="requests that may wait for a thread; more get 429")] = 64,
    model_queue: Annotated[int, typer.Option(help="rerank/chat requests that may wait for the model; more get 429")] = 8,
    timeout: Annotated[float, typer.Option(help="seconds a request may take, waiting included (then 503)")] = 30.0,
    max_body: Annotated[int, typer.Option(help="largest request body in bytes (larger: 413)")] = 1_048_576,
    embedder: EmbedderOpt = None,
    reranker: RerankerOpt = "qr",
    generator: Annotated[str | None, typer.Option(help="enables /chat: transformers[:MODEL] or openai:MODEL")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai: server URL")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="openai: environment variable holding the key")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="no API keys (only on a loopback host)")] = False,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug")] = "info",
) -> None:
    """Serve memory over HTTP: the REST API under /v1 (docs at /docs) and MCP at /mcp.

    Every request needs `Authorization: Bearer KEY` (`qrmem keys create`), unless the server binds
    to loopback with --no-auth. SIGTERM stops it gracefully: requests in flight are finished.
    """
    from qrmem.server.config import ServeConfig
    from qrmem.server.run import serve as run_server

    cfg = ServeConfig.of(db=db, host=host, port=port, workers=workers, queue=queue, model_queue=model_queue,
                         timeout=timeout, max_body=max_body, embedder=embedder, reranker=reranker,
                         generator=generator, base_url=base_url, api_key_env=api_key_env, no_auth=no_auth,
                         log_level=log_level)
    run_server(cfg)


@app.command("mcp")
@handle_errors
def mcp_stdio(
    user: UserOpt,
    db: DbOpt = None,
    embedder: EmbedderOpt = None,
    reranker: RerankerOpt = "qr",
) -> None:
    """Serve one user's memory over MCP on stdin/stdout (what desktop agent hosts launch)."""
    from qrmem.server.config import ServeConfig
    from qrmem.server.run import serve_stdio

    serve_stdio(ServeConfig.of(db=db, embedder=embedder, reranker=reranker, log_level="warning"), user)

"""The `qrmem` command line: thin commands over the library. Failures exit 1 with one line."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from memory.ranking import highlight
from memory.retrieval import DEFAULT_RERANK_K
from store.errors import InputError, QrmemError

if TYPE_CHECKING:
    from memory import Memory

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qrmem: long-term memory for chatbots. Store dialogue, search it, rerank it.")

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> typer.Exit:
    """Print `error: MESSAGE` as one line (secrets redacted) and return the exit to raise."""
    from store.redact import redact

    typer.echo(f"error: {' '.join(redact(message).split())}", err=True)
    return typer.Exit(1)


def _given(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """Option callback: an option that is given must have a value; an empty or blank one is an
    error, never the same as leaving the option out (`--session ''` must not mean every session)."""
    if isinstance(value, str) and not value.strip():
        raise _fail(f"{param.opts[0]} is empty; give a value, or leave the option out")
    return value


DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar="QRMEM_DB", callback=_given,
    help="SQLite file or SQLAlchemy URL [default: $QRMEM_DB or the user data dir]")]
UserOpt = Annotated[str, typer.Option("--user", "-u", callback=_given, help="user (conversation owner) id")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
FusionOpt = Annotated[float | None, typer.Option(
    "--fusion-weight", min=0.0,
    help="weight of the first-stage order fused with the reranker's scores (0: reranker alone) [default: the reranker's own, 0.3 for QRRanker]")]


def _abstain(value: str | None) -> str | None:
    """--abstain-below: a number in [0, 1], or 'none' (never abstain)."""
    if value is None or value.strip().lower() == "none":
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 1:
        raise typer.BadParameter(f"takes a number in [0, 1] or none, got {value!r}")
    return value


AbstainOpt = Annotated[str | None, typer.Option(
    "--abstain-below", callback=_abstain, metavar="X|none",
    help="answer 'no memory of that' when the reranked search's relevance is below X [default: the shipped threshold]")]


def abstain_value(value: str | None) -> float | None:
    from agent import DEFAULT_ABSTAIN_BELOW

    if value is None:
        return DEFAULT_ABSTAIN_BELOW
    return None if value.strip().lower() == "none" else float(value)
EmbedderOpt = Annotated[str | None, typer.Option(
    "--embedder", callback=_given, help="sentence-transformers name/path or BACKEND:ARG (e.g. hashing:256) "
                                        "[default: the store's own embedder, else the offline MiniLM]")]
TemporalOpt = Annotated[bool, typer.Option(
    "--temporal/--no-temporal",
    help="ground relative time expressions ('yesterday', 'last week') against the session date")]
ConversationsOpt = Annotated[str | None, typer.Option(
    "--conversations", callback=_given, help="only these groups/conversations (comma-separated)")]


def handle_errors(fn: F) -> F:
    """Turn every failure the user can cause into one `error:` line on stderr and exit status 1:
    qrmem's own errors, and the system's (a file or disk problem, a database error, a request too
    large for memory) where one reaches the command without a qrmem error around it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from store.db import describe_db_error
        from store.files import os_advice

        try:
            return fn(*args, **kwargs)
        except QrmemError as exc:
            raise _fail(str(exc)) from None
        except MemoryError:
            raise _fail("out of memory: the request is too large for this machine; ask for less "
                        "(a smaller embedder dimension, fewer candidates, a smaller model)") from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise _fail(f"{where}{os_advice(exc)}") from None
        except SQLAlchemyError as exc:
            raise _fail(f"database error: {describe_db_error(exc)}") from None

    return wrapper  # type: ignore[return-value]


def open_memory(db: str | None, embedder: str | None = None, chunker: str = "turn",
                reranker=None, secure_delete: bool = False, secure_delete_wait: float = 5.0,
                create: bool = True, temporal: bool = True) -> Memory:
    """The command's Memory. Reading commands pass `create=False`: a store that does not exist is
    an error, not a new empty one. An in-memory SQLite database is refused: it would vanish with
    the command, and the command would still report success."""
    from memory import Memory
    from store import Store
    from store.db import is_memory

    store = Store(db, secure_delete=secure_delete, secure_delete_wait=secure_delete_wait, create=create)
    if is_memory(store.url):
        raise _fail(f"{store.safe_url} is an in-memory database: it would be gone when this command "
                    "ends; pass a file path or a server URL (--db)")
    if not create:
        store.engine  # noqa: B018 -- a store that does not exist is refused now, before any prompt
    return Memory(store, embedder=embedder, chunker=chunker, reranker=reranker, temporal=temporal)


# -- option groups: declared once, added to each command that takes them ------------------------------

@dataclass
class ModelOptions:
    """Which causal LM the QR reranker runs, and where."""

    model: Annotated[str | None, typer.Option(
        "--model", callback=_given, help="reranker LM: local dir, .gguf file or hub id [default: embedded SmolLM2]",
        rich_help_panel="Model")] = None
    device: Annotated[str | None, typer.Option(
        "--device", callback=_given, help="cpu, cuda, cuda:1 ... [default: auto]", rich_help_panel="Model")] = None
    dtype: Annotated[str, typer.Option(
        "--dtype", help="auto, float32, bfloat16, float16", rich_help_panel="Model")] = "auto"
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="run code shipped with a hub model (needed by MindscapeRAG/QRRanker)",
        rich_help_panel="Model")] = False
    quantize: Annotated[str | None, typer.Option(
        "--quantize", callback=_given, help="int8: dynamic int8 quantisation of the linear layers (CPU, float32)",
        rich_help_panel="Model")] = None

    def load_options(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code,
                **({} if self.quantize is None else {"quantize": self.quantize})}


@dataclass
class HeadOptions:
    """Which QR heads score, and how."""

    heads: Annotated[str | None, typer.Option(
        "--heads", callback=_given, help="QR heads as LAYER-HEAD,... or a head-file .json [default: the model's own]",
        rich_help_panel="QR heads")] = None
    calibrate: Annotated[bool | None, typer.Option(
        "--calibrate/--no-calibrate", help="null-query calibration [default: as the head list was chosen]",
        rich_help_panel="QR heads")] = None

    def load_options(self) -> dict[str, Any]:
        return {"heads": self.heads, **({} if self.calibrate is None else {"calibrate": self.calibrate})}


@dataclass
class GeneratorOptions:
    """The chat model that answers and summarises."""

    generator: Annotated[str, typer.Option(
        "--generator", callback=_given, help="transformers[:MODEL] (default: offline SmolLM2), openai:MODEL, or a plug-in's NAME[:ARG]",
        rich_help_panel="Generator")] = "transformers"
    base_url: Annotated[str | None, typer.Option(
        "--base-url", callback=_given, help="openai: server URL, e.g. http://127.0.0.1:8000/v1", rich_help_panel="Generator")] = None
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", callback=_given, help="openai: environment variable holding the key",
        rich_help_panel="Generator")] = "OPENAI_API_KEY"

    def load(self):
        from memory import load_generator

        return load_generator(self.generator, base_url=self.base_url, api_key_env=self.api_key_env)


G = TypeVar("G")


def options(name: str, group: type[G]) -> Callable[[F], F]:
    """Add the fields of the option group `group` to a command as options, and hand the command one
    `group` instance as its parameter `name`."""
    fields_ = dataclasses.fields(group)  # type: ignore[arg-type]
    hints = typing.get_type_hints(group, include_extras=True)

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        kept = [p for p in sig.parameters.values() if p.name != name]
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                   annotation=hints[f.name]) for f in fields_]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields_})
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=kept + added)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def load_ranker(spec: str, model: ModelOptions, heads: HeadOptions | None = None):
    """The reranker named by `spec` (`qr`, `qr:PATH`, a plug-in's NAME[:ARG]) with the model and head
    options (which only the QR reranker takes)."""
    from memory import load_reranker

    name, _, arg = spec.partition(":")
    qr_options = {**model.load_options(), **(heads.load_options() if heads else {})}
    if name != "qr":
        given = [o for o, v in (("--model", model.model), ("--heads", heads and heads.heads),
                                ("--calibrate", heads and heads.calibrate is not None),
                                ("--quantize", model.quantize)) if v]
        if given:
            raise InputError(f"{', '.join(given)} apply to the qr reranker, not {spec!r}")
        return load_reranker(spec)
    if model.model is not None:
        if arg:
            raise InputError(f"pass the model once: --reranker {spec!r} or --model {model.model!r}")
        spec = f"qr:{model.model}"
    return load_reranker(spec, **qr_options)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details")] = False) -> None:
    from store.redact import install

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # every log line is redacted, other libraries' too
        install(handler)


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
    temporal: TemporalOpt = True,
) -> None:
    """Ingest a dialogue file. LoCoMo samples become users (user id = sample_id).

    The whole file is validated first; each session is then written in one transaction, and
    re-ingesting identical sessions does nothing, so an interrupted ingest can simply be re-run.
    Relative time expressions are grounded against each session's date unless --no-temporal.
    """
    mem = open_memory(db, embedder, chunker, temporal=temporal)
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
@options("model", ModelOptions)
@options("qr", HeadOptions)
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    user: UserOpt,
    model: ModelOptions,
    qr: HeadOptions,
    db: DbOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="number of hits")] = 10,
    mode: Annotated[str, typer.Option(help="hybrid, dense or bm25")] = "hybrid",
    embedder: EmbedderOpt = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="rerank the first stage (QRRanker unless --reranker)")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="first-stage candidates to rerank")] = DEFAULT_RERANK_K,
    reranker: Annotated[str, typer.Option(help="with --rerank: qr, qr:PATH, or a plug-in's NAME[:ARG]")] = "qr",
    fusion_weight: FusionOpt = None,
    as_json: JsonOpt = False,
    session: Annotated[list[str] | None, typer.Option(
        "--session", metavar="ID", help="only this session (repeat for several)")] = None,
    after: Annotated[str | None, typer.Option(metavar="DATE", help="only sessions dated on or after YYYY-MM-DD")] = None,
    before: Annotated[str | None, typer.Option(metavar="DATE", help="only sessions dated on or before YYYY-MM-DD")] = None,
) -> None:
    """Search one user's memory; best hits first. --rerank reorders the first-stage top
    --rerank-k with QRRanker (the embedded SmolLM2 unless --model) or another --reranker, and marks
    in each hit the evidence its QR heads attended to most: bold on a terminal, [[like this]] in a
    pipe (--json: character offsets). Reranked scores are fused with the first-stage order
    (--fusion-weight); with QRRanker the search's relevance is printed (the share of its attention
    on the asked person's own turns). --session, --after and --before keep only those sessions
    (undated sessions are left out by a date bound)."""
    mem = open_memory(db, embedder, create=False)  # a missing store is refused before a model loads
    if rerank:
        mem = open_memory(db, embedder, reranker=load_ranker(reranker, model, qr), create=False)
    mem.fusion_weight = fusion_weight
    hits = mem.search(user, query, k=k, mode=mode, rerank=rerank, rerank_k=rerank_k, session_ids=session,
                      after=after, before=before)
    if as_json:
        _print_json([h.as_dict() for h in hits])
        return
    if not hits:
        typer.echo(f"no memory for user {user!r}")
    marks = _evidence_marks()
    for h in hits:
        typer.echo(f"{h.rank:3d}. {h.score:.4f} [{h.session_id}, {h.session_date or 'no date'}] "
                   f"{','.join(h.turn_ids)}  {highlight(h.text, [e.span for e in h.evidence], *marks)}")
    if hits.relevance is not None:
        typer.echo(f"relevance {hits.relevance:.2f}: share of the reranker's attention on turns of the person asked about")


def _evidence_marks() -> tuple[str, str]:
    """How `search --rerank` marks evidence spans: bold on a terminal (unless NO_COLOR is set),
    else [[ and ]] (pipes, files)."""
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return "\x1b[1m", "\x1b[22m"
    return "[[", "]]"


@app.command()
@handle_errors
@options("model", ModelOptions)
@options("qr", HeadOptions)
def rank(
    file: Annotated[Path, typer.Argument(
        help="candidates: a JSON list of strings or {text, context?} objects, or a text file with "
             "one per line; or QRRanker records {question, paragraphs: [{paragraph_text, title?}]}")],
    model: ModelOptions,
    qr: HeadOptions,
    query: Annotated[str | None, typer.Option("--query", "-q", callback=_given,
                                              help="the query (not for records)")] = None,
    k: Annotated[int | None, typer.Option("--k", "-k", help="show only the best k")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rerank candidates for a query with QRRanker (listwise, one prompt)."""
    from memory.qr.records import read_rank_input

    if k is not None and k < 1:
        raise _fail(f"--k must be at least 1, got {k}; leave it out to show every candidate")
    jobs = read_rank_input(file, query)
    ranker = load_ranker("qr", model, qr)
    out = []
    for job in jobs:
        ranked = ranker.rank(job.query, job.texts, contexts=job.contexts, summary=job.summary)
        rows = [{"rank": r.rank, "index": r.index, "score": r.score, "text": r.text}
                for r in ranked.top_k(len(ranked) if k is None else k)]
        out.append({"id": job.id, "query": job.query, "results": rows})
    if as_json:
        _print_json(out if len(out) > 1 or out[0]["id"] is not None else out[0]["results"])
        return
    for job in out:
        typer.echo(f"query: {job['query']}" + (f"  (id {job['id']})" if job["id"] is not None else ""))
        for row in job["results"]:
            typer.echo(f"{row['rank']:3d}. {row['score']:+.4f} [{row['index']}] {row['text']}")


RerankKOpt = Annotated[int, typer.Option(
    "--rerank-k", "--k", help="first-stage candidates per question (the reranker's shortlist)")]
MaxLayerOpt = Annotated[int | None, typer.Option(
    "--max-layer", min=0, help="layer budget: no layer above it is loaded or scored (0-based) [default: all]")]
SeedDbOpt = Annotated[str | None, typer.Option(
    "--db", callback=_given, help="LoCoMo: store to ingest into [default: a temp file]")]


heads_app = typer.Typer(no_args_is_help=True, help="Find the QR heads of a causal LM.")
app.add_typer(heads_app, name="heads")


@heads_app.command("detect")
@handle_errors
@options("model", ModelOptions)
def heads_detect(
    data: Annotated[Path, typer.Option("--data", help="LoCoMo file, or QRRanker records (JSON/JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="head file to write (a .png heatmap lands beside it)")],
    model: ModelOptions,
    method: Annotated[str, typer.Option("--method", help="qr (per-head nDCG@10) or core (contrastive)")] = "qr",
    limit: Annotated[int, typer.Option("--limit", help="seed queries to use (with a gold candidate)")] = 64,
    top: Annotated[int, typer.Option("--top", help="heads to keep")] = 16,
    rerank_k: RerankKOpt = DEFAULT_RERANK_K,
    conversations: ConversationsOpt = None,
    db: SeedDbOpt = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing head file")] = False,
    max_layer: MaxLayerOpt = None,
) -> None:
    """Score every (layer, head) on seed queries and write the best as a head list."""
    from agent.locomo import load_records, parse_conversations
    from memory.qr.detect import check_method, check_outputs, detect_heads, write

    check_method(method)  # both before the work, not after it
    check_outputs(out, force=force)
    records = load_records(data, rerank_k=rerank_k, db=db, conversations=parse_conversations(conversations))
    det = detect_heads(records, model=model.model, method=method, top=top, limit=limit, seed=seed,
                       progress=sys.stderr.isatty(), meta={"seed_data": data.name, "rerank_k": rerank_k},
                       max_layer=max_layer, **model.load_options())
    head_file, png = write(det, out, force=force)
    typer.echo(f"{len(det.heads)} heads by {method} on {det.queries} queries: {', '.join(map(str, det.heads))}")
    typer.echo(f"top-{top} overlap across random halves of the queries: {det.stability:.2f}")
    typer.echo(f"wrote {head_file} and {png}")


@app.command()
@handle_errors
@options("model", ModelOptions)
@options("qr", HeadOptions)
def train(
    data: Annotated[Path, typer.Option("--data", help="LoCoMo file, or QRRanker records (JSON/JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write (QRRanker.load(DIR))")],
    model: ModelOptions,
    qr: HeadOptions,
    val_conversations: Annotated[str | None, typer.Option(
        callback=_given, help="validation groups/conversations (comma-separated) [default: a third, by seed]")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many training queries")] = None,
    val_limit: Annotated[int | None, typer.Option(help="at most this many validation queries")] = None,
    rerank_k: RerankKOpt = DEFAULT_RERANK_K,
    db: SeedDbOpt = None,
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
    max_layer: MaxLayerOpt = None,
) -> None:
    """Train QR heads listwise (group-wise contrastive loss on max-min normalised QR scores).

    Splits by conversation, never by question; validates each epoch; checkpoints every optimizer
    step (resume with --resume); writes a directory that `QRRanker.load(DIR)` and --model accept.
    """
    from agent.locomo import load_records, parse_conversations
    from memory.qr.data import split_and_sample
    from memory.qr.train import TrainConfig, train_heads

    if model.quantize is not None:  # before the data is read
        raise InputError("--quantize applies to ranking and head detection; a quantised model cannot be "
                         "trained: leave it out and quantise the trained model when you load it")
    cfg = TrainConfig(method=method, epochs=epochs, lr=lr, grad_accum=grad_accum, lora_r=lora_r,
                      lora_alpha=2 * lora_r, layers_from=layers_from, temperature=temperature,
                      max_steps=max_steps, seed=seed, gradient_checkpointing=gradient_checkpointing)
    records = load_records(data, rerank_k=rerank_k, db=db)
    train_recs, val_recs = split_and_sample(records, parse_conversations(val_conversations), limit=limit,
                                            val_limit=val_limit, seed=seed)
    typer.echo(f"training on {len(train_recs)} queries ({len({r.split_key for r in train_recs})} groups), "
               f"validating on {len(val_recs)} ({', '.join(sorted({r.split_key for r in val_recs}))})")
    report = train_heads(train_recs, val_recs, out, cfg, model=model.model, resume=resume,
                         progress=sys.stderr.isatty(), max_layer=max_layer, **model.load_options(),
                         **qr.load_options())
    typer.echo(f"before training: {report.baseline}")
    for ep in report.epochs:
        typer.echo(f"epoch {ep.epoch}: loss {ep.train_loss:.4f}, {ep.seconds_per_query:.2f}s/query, "
                   f"validation {ep.val}")
    typer.echo(f"wrote {out} in {report.seconds:.0f}s")


@app.command()
@handle_errors
@options("gen", GeneratorOptions)
def summarize(
    user: UserOpt,
    gen: GeneratorOptions,
    db: DbOpt = None,
    redo: Annotated[bool, typer.Option("--redo", help="recompute every session and restart the rolling summary")] = False,
) -> None:
    """Compute the missing session summaries of a user in order, rolling the conversation summary."""
    from memory import Summarizer

    mem = open_memory(db, create=False)
    mem.summarizer = Summarizer(gen.load())
    n = mem.summarize(user, redo=redo)
    conv = next((s for s in mem.summaries(user) if s.kind == "conversation"), None)
    typer.echo(f"summarised {n} sessions of {user!r}")
    if conv is not None:
        typer.echo(f"conversation summary (v{conv.version}): {conv.text}")


@app.command()
@handle_errors
@options("gen", GeneratorOptions)
def chat(
    user: UserOpt,
    gen: GeneratorOptions,
    db: DbOpt = None,
    top_n: Annotated[int, typer.Option(help="memories given to the generator")] = 3,
    rerank: Annotated[bool, typer.Option("--rerank/--no-rerank", help="rerank with QRRanker")] = True,
    summarize: Annotated[bool, typer.Option("--summarize/--no-summarize", help="roll summaries at the end")] = True,
    fusion_weight: FusionOpt = None,
    abstain_below: AbstainOpt = None,
) -> None:
    """Chat with persistent memory: each exchange is stored; memory carries over between runs.
    Type /end (or Ctrl-D) to close the session. A message that could not be stored (too long, a
    NUL character, not UTF-8) is refused with its reason before anything is sent, and the chat
    goes on."""
    from agent import MemoryAgent
    from memory import GenerationError, Summarizer

    generator = gen.load()
    mem = open_memory(db)
    mem.summarizer = Summarizer(generator) if summarize else None
    mem.fusion_weight = fusion_weight
    agent = MemoryAgent(mem, generator, top_n=top_n, rerank=rerank, abstain_below=abstain_value(abstain_below))
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 refuse one line, not the chat
        sys.stdin.reconfigure(errors="surrogateescape")
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
            try:
                answer = agent.chat(user, message)
            except InputError as exc:
                reason = "the line is not valid UTF-8" if _has_surrogates(message) else str(exc)
                typer.echo(" ".join(f"refused: {reason}; nothing was sent or stored".split()), err=True)
                continue
            except GenerationError as exc:
                typer.echo(f"error: {' '.join(str(exc).split())}; this message was not stored, "
                           "send it again or /end", err=True)
                continue
            cited = ", ".join(answer.turn_ids) or "no memories"
            typer.echo(f"bot> {answer.text}\n     (memories: {cited})")
    finally:
        session = agent.end_session(user)  # None unless an exchange was stored
        if session:
            typer.echo(f"saved session {session}")


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate qrmem end to end.")
app.add_typer(eval_app, name="eval")


@eval_app.command("locomo")
@handle_errors
@options("gen", GeneratorOptions)
def eval_locomo(
    gen: GeneratorOptions,
    data: Annotated[Path | None, typer.Option(help="locomo10.json-style file [default: the tiny conversation shipped with qrmem]")] = None,
    conversations: ConversationsOpt = None,
    limit: Annotated[int | None, typer.Option(help="questions in all")] = None,
    out: Annotated[Path, typer.Option(help="results folder")] = Path("runs/locomo"),
    rerank_k: RerankKOpt = DEFAULT_RERANK_K,
    top_n: Annotated[int, typer.Option("--top-n", help="chunks given to the generator")] = 3,
    reranker: Annotated[str, typer.Option(help="qr, qr:PATH, a plug-in's NAME[:ARG], or none")] = "qr",
    summaries: Annotated[bool, typer.Option("--summaries", help="roll summaries, give them to the reranker")] = False,
    categories: Annotated[str | None, typer.Option(
        callback=_given, help="question categories, e.g. 1,2,3,4 [default: all]")] = None,
    no_answer: Annotated[bool, typer.Option("--no-answer", help="retrieval only: skip the generator, no F1")] = False,
    download: Annotated[bool, typer.Option("--download", help="fetch the public locomo10.json (needs network)")] = False,
    fusion_weight: FusionOpt = None,
    abstain_below: AbstainOpt = None,
    temporal: TemporalOpt = True,
) -> None:
    """Ingest LoCoMo conversations session by session, answer every question from memory, score it."""
    from agent.evaluation import build_and_run, parse_categories, report
    from agent.locomo import parse_conversations

    summary = build_and_run(out=out, data=data, limit=limit, rerank_k=rerank_k, top_n=top_n,
                            conversations=parse_conversations(conversations), reranker=reranker,
                            generator=gen.generator, base_url=gen.base_url, api_key_env=gen.api_key_env,
                            summaries=summaries, download_public=download, progress=sys.stderr.isatty(),
                            categories=parse_categories(categories), answer=not no_answer,
                            fusion_weight=fusion_weight, abstain_below=abstain_value(abstain_below),
                            temporal=temporal)
    typer.echo(report(summary))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'chart.png'}")


@app.command()
@handle_errors
def sessions(user: UserOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List a user's sessions in conversation order."""
    rows = open_memory(db, create=False).sessions(user)
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
    session: Annotated[str | None, typer.Option(
        callback=_given, help="delete only this session [default: the whole user]")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    secure: Annotated[bool, typer.Option("--secure", help="SQLite: overwrite the deleted content and "
                                                           "truncate the write-ahead log")] = False,
    secure_wait: Annotated[float, typer.Option(
        "--secure-wait", metavar="SECONDS", help="--secure: wait at most this long for other "
                                                 "connections' reads before leaving the log as it is")] = 5.0,
) -> None:
    """Delete a session, or a whole user, with all their turns, chunks, embeddings and summaries.
    Deleting a session rolls the conversation summary back to before it (`qrmem summarize` rolls
    the later sessions in again)."""
    whole_user = session is None  # only the absence of --session means the whole user
    what = f"user {user!r} and all their memory" if whole_user else f"session {session!r} of user {user!r}"
    mem = open_memory(db, secure_delete=secure, secure_delete_wait=secure_wait, create=False)
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        raise _fail("nothing deleted")
    result = mem.delete_user(user) if whole_user else mem.delete_session(user, session)  # type: ignore[arg-type]
    typer.echo(f"deleted {what}: {result.turns} turns, {result.chunks} chunks, {result.summaries} summaries")
    if result.remaining:
        typer.echo(f"warning: {result.remaining}", err=True)
    if result.needs_resummarize:
        typer.echo(f"the conversation summary was rolled back; run `qrmem summarize --user {user}` "
                   "to roll the later sessions in again")


@app.command()
@handle_errors
def export(
    user: UserOpt,
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file to write (mode 0600)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out file")] = False,
) -> None:
    """Export a user's memory as qrmem JSON (to stdout, or to --out readable by the owner only).

    --out is written to a new file renamed into place: a symlink, a directory, the store's own
    files and (without --force) an existing file are refused."""
    mem = open_memory(db, create=False)
    if out is None:
        _print_json(mem.export_user(user))
    else:
        mem.export_to(user, out, force=force)
        typer.echo(f"wrote {out}")


@app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="a file written by `qrmem export`")],
    db: DbOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="overwrite stored sessions that differ")] = False,
    embedder: EmbedderOpt = None,
    temporal: TemporalOpt = True,
) -> None:
    """Import memory exported by `qrmem export` (re-chunked, re-embedded and its relative time
    expressions grounded here), with its summaries; importing a store's own export changes nothing."""
    report = open_memory(db, embedder, temporal=temporal).import_file(file, replace=replace)
    typer.echo(f"{report.count('added')} sessions added, {report.count('replaced')} replaced, "
               f"{report.count('unchanged')} unchanged; {report.summaries_restored} summaries restored")


@app.command()
@handle_errors
def reindex(
    db: DbOpt = None,
    embedder: EmbedderOpt = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="only this user [default: every user]")] = None,
    set_default: Annotated[bool, typer.Option(
        "--set-default", help="then make this embedder the store's own (searches and ingests use it)")] = False,
) -> None:
    """Store vectors from an embedder for every chunk that has none (searching never writes them).
    With --set-default the store switches to that embedder."""
    report = open_memory(db, embedder).reindex(user, set_default=set_default)
    typer.echo(f"embedded {report.embedded} chunks of {report.users} users with {report.model} "
               f"in {report.seconds:.1f}s" + (f"; the store's embedder is now {report.default}"
                                              if report.default else ""))


@app.command()
@handle_errors
def check(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Integrity check: database checks, orphans, half-written sessions, embeddings vs chunks.
    Exits 1 when anything is damaged."""
    report = open_memory(db, create=False).store.check()
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
    data = open_memory(db, create=False).info()
    counts = {k: data[k] for k in ("users", "sessions", "turns", "chunks", "embeddings", "summaries")}
    if as_json:
        _print_json(counts)
        return
    typer.echo(f"db: {data['db']}")
    typer.echo(f"embedder: {data['embedder'] or '(none yet)'}")
    for key, value in counts.items():
        typer.echo(f"{key}: {value}")
    for model, n in data["embedding_models"].items():
        typer.echo(f"embedding model {model}: {n} vectors")
    cache = data["index_cache"]
    typer.echo(f"index cache (this process): {cache['users']} users, {cache['bytes'] / 2**20:.1f} MiB of "
               f"{cache['budget_bytes'] / 2**20:.0f} MiB, {cache['evictions']} evictions")


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
    rerank_batch: Annotated[int, typer.Option(help="concurrent reranks run together in one rank_many pass")] = 8,
    rerank_wait_ms: Annotated[float, typer.Option(help="how long the first of them waits for others to join")] = 5.0,
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
                         rerank_batch=rerank_batch, rerank_wait_ms=rerank_wait_ms,
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

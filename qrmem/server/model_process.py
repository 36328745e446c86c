"""The reranker and the generator in a child process of the server.

Reranking runs many small torch operations glued by Python; in the server process it would compete
for the interpreter lock with the threads that validate, embed and write, and lose: a rerank that
takes 1.3 s alone took 12 s beside four busy threads here. In a child process it has an interpreter
of its own. The child loads each model once, runs one job at a time (the model lane feeds it), and
ignores SIGINT/SIGTERM: the server finishes its requests, then closes it.

Only plain data crosses the process boundary (query and candidate texts, scores and evidence
spans, chat messages).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from memory import (
    Generator,
    ModelLoadError,
    QRRanker,
    Reranker,
    load_generator,
    load_reranker,
)
from memory.generators import GenerationOptions, Message
from memory.ranking import RankedResults

T = TypeVar("T")
_loaded: dict[str, Any] = {}  # in the child: "reranker", "generator"


def _start(reranker: str | None, generator: tuple[str, str | None, str | None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Under `qrmem mcp` the inherited stdout is the MCP channel: whatever a library prints goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    if reranker is not None:
        _loaded["reranker"] = load_reranker(reranker)
    if generator is not None:
        spec, base_url, api_key_env = generator
        _loaded["generator"] = load_generator(spec, base_url=base_url, api_key_env=api_key_env)


def _score(query: str, docs: list[str], contexts: list[str | None] | None, summary: str | None) -> list[float]:
    return [float(s) for s in _loaded["reranker"].score(query, docs, contexts=contexts, summary=summary)]


def _rank_many(jobs: list[tuple[str, list[str], list[str | None] | None, str | None, bool]]) -> list[RankedResults]:
    """Several `rank` jobs in one call: one padded `rank_many` pass where the reranker has it
    (QRRanker) and the jobs agree on `evidence`, else one `rank` each."""
    ranker = _loaded["reranker"]
    if len(jobs) > 1 and hasattr(ranker, "rank_many") and len({j[4] for j in jobs}) == 1:
        return ranker.rank_many([j[0] for j in jobs], [j[1] for j in jobs], [j[2] for j in jobs],
                                summaries=[j[3] for j in jobs], batch_size=len(jobs), evidence=jobs[0][4])
    return [ranker.rank(q, d, contexts=c, summary=s, evidence=e) for q, d, c, s, e in jobs]


def _generate(messages: list[dict[str, str]], options: dict[str, Any]) -> str:
    return _loaded["generator"].generate(messages, GenerationOptions(**options))


class ModelProcess:
    """One child process holding the models; `call` runs a job there and waits for it."""

    def __init__(self, reranker: str | None, generator: tuple[str, str | None, str | None] | None) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start, initargs=(reranker, generator))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise ModelLoadError("the model process died (out of memory?) or could not load its models; "
                                 "the server log says why; restart the server") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Job:
    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args, self.done = args, False
        self.result: RankedResults | None = None
        self.error: BaseException | None = None


class ProcessReranker(Reranker):
    """A `Reranker` that runs in the model process, with the child's evidence spans. Concurrent
    `rank` calls share a pass: up to `max_batch` waiting queries go to the model process together
    and run as one `rank_many` (one right-padded forward pass on the GPU or CPU). No thread waits for
    a batch to fill: the first caller leads, lets `max_wait` seconds pass for others to join, takes
    everything waiting (up to `max_batch`), and hands the lead on when its pass returns; the results
    are those of `rank` for each query."""

    def __init__(self, process: ModelProcess, name: str, *, max_batch: int = 8, max_wait: float = 0.005) -> None:
        self.process, self.name = process, name
        is_qr = name.partition(":")[0] == "qr"
        self.score_is_mass = is_qr  # QRRanker: attention mass (relevance)
        self.fusion_weight = QRRanker.fusion_weight if is_qr else 0.0
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait >= 0, got {max_batch}, {max_wait}")
        self.max_batch, self.max_wait = max_batch, max_wait
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._busy = False
        self.batches: list[int] = []  # the size of each pass run (for tests and logs)

    def score(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
              summary: str | None = None) -> list[float]:
        return self.process.call(_score, query, list(docs), None if contexts is None else list(contexts), summary)

    def rank(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
             summary: str | None = None, evidence: bool = False) -> RankedResults:
        job = _Job((query, list(docs), None if contexts is None else list(contexts), summary, evidence))
        with self._cond:
            self._pending.append(job)
        while True:
            with self._cond:
                while not job.done and self._busy:
                    self._cond.wait()
                if job.done:
                    if job.error is not None:
                        raise job.error
                    assert job.result is not None
                    return job.result
                self._busy = True  # this thread runs the next pass
            if self.max_wait:
                time.sleep(self.max_wait)
            with self._cond:
                batch = self._pending[: self.max_batch]
                del self._pending[: len(batch)]
            try:
                results, error = self.process.call(_rank_many, [j.args for j in batch]), None
            except BaseException as exc:  # every caller of the pass gets the error, as from its own call
                results, error = [None] * len(batch), exc
            with self._cond:
                for j, r in zip(batch, results, strict=True):
                    j.result, j.error, j.done = r, error, True
                self.batches.append(len(batch))
                self._busy = False
                self._cond.notify_all()


class ProcessGenerator(Generator):
    """A `Generator` whose generation runs in the model process."""

    def __init__(self, process: ModelProcess, name: str) -> None:
        self.process, self.name = process, name

    def generate(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        return self.process.call(_generate, [dict(m) for m in messages], options.model_dump())

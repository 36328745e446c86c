"""Crash safety: SIGKILL a process in the middle of ingesting, then check the store it leaves.

    python benchmarks/crash_ingest.py --db /tmp/crash.db --runs 50
    python benchmarks/crash_ingest.py --db postgresql+psycopg://USER@HOST:PORT/DB --runs 50

Each run starts a worker that ingests large sessions (`--turns` turns each, with summaries rolled
by a deterministic summarizer) into the same store, kills it with SIGKILL after a random delay,
and then checks that the store opens, that `Store.check()` finds nothing wrong, and that every
session is there whole (all its turns, chunks and vectors) or not at all. It also records where
the kill landed: inside an `add_session` call (between the worker's "begin" and "done" lines),
and inside an open write transaction (between SQLAlchemy's begin and commit events). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def turns_of(session_id: str, n: int) -> list[dict[str, str]]:
    return [{"speaker": "A" if i % 2 == 0 else "B", "text": f"{session_id} turn {i}: " + "words " * 20}
            for i in range(n)]


def worker(db: str, run: int, turns: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sqlalchemy import event
    from store_load import _summarizer

    from memory import HashingEmbedder, Memory

    mem = Memory(db, embedder=HashingEmbedder(64), summarizer=_summarizer())

    @event.listens_for(mem.store.engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get("qrmem_write"):
            print("txn-open", flush=True)

    @event.listens_for(mem.store.engine, "commit")
    def _commit(conn):
        if conn.get_execution_options().get("qrmem_write"):
            print("txn-done", flush=True)

    for i in range(10_000):
        sid = f"r{run}-s{i}"
        print(f"begin {sid}", flush=True)
        mem.add_session("crash-user", turns_of(sid, turns), session_id=sid)
        print(f"done {sid}", flush=True)


def verify(db: str, turns: int) -> dict:
    from store import NotFoundError, Store

    store = Store(db)
    report = store.check()
    partial = []
    try:
        sessions = store.sessions("crash-user")
    except NotFoundError:
        sessions = []
    for s in sessions:
        if s.turns != turns or s.chunks != turns:
            partial.append(f"{s.session_id}: {s.turns} turns, {s.chunks} chunks")
    vectors = store.embedding_models().get("hashing:64", 0)
    store.close()
    return {"ok": report.ok, "problems": report.problems, "partial_sessions": partial,
            "sessions": len(sessions), "vectors_match": vectors == sum(s.chunks for s in sessions),
            "stored": {s.session_id for s in sessions}}


def crash_runs(db: str, runs: int, turns: int, seed: int, max_delay: float) -> dict:
    from store import Store

    Store(db).counts()  # the schema exists before the first kill
    rng = random.Random(seed)
    survived, inside, in_txn, failures = 0, 0, 0, []
    for run in range(runs):
        proc = subprocess.Popen([sys.executable, __file__, "--db", db, "--role", "worker", "--run", str(run),
                                 "--turns", str(turns)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        first = proc.stdout.readline()  # the worker is up and has begun its first session
        if not first.startswith("begin"):
            failures.append(f"run {run}: worker did not start: {proc.stderr.read()[-500:]}")
            proc.kill()
            continue
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        lines = [first.strip(), *out.split("\n")]
        lines = [x for x in lines if x]
        starts = [x for x in lines if x.startswith(("begin", "done"))]
        inside += starts[-1].startswith("begin")
        marks = [x for x in lines if x.startswith("txn-")]
        in_txn += bool(marks) and marks[-1] == "txn-open"  # killed with a write transaction open
        result = verify(db, turns)
        bad = not result["ok"] or result["partial_sessions"] or not result["vectors_match"]
        done = {x.split()[1] for x in lines if x.startswith("done")}
        if done - result["stored"]:  # a session the worker saw committed must be there
            bad = True
            result["problems"].append(f"committed sessions missing: {sorted(done - result['stored'])[:3]}")
        if bad:
            failures.append(f"run {run}: {({k: v for k, v in result.items() if k != 'stored'})}")
        else:
            survived += 1
    final = verify(db, turns)
    return {"db": Store(db).safe_url.split("?")[0], "runs": runs, "survived": survived,
            "killed_inside_add_session": inside, "killed_inside_open_write_transaction": in_txn,
            "sessions_stored": final["sessions"],
            "turns_per_session": turns, "failures": failures[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--turns", type=int, default=300, help="turns per session (a longer transaction)")
    ap.add_argument("--max-delay", type=float, default=1.5, help="seconds; the kill lands in [0, this)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--role", choices=["worker"], help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "worker":
        worker(args.db, args.run, args.turns)
        return
    print(json.dumps(crash_runs(args.db, args.runs, args.turns, args.seed, args.max_delay), indent=1))


if __name__ == "__main__":
    main()

"""Many processes on one store: W writers ingest sessions while R readers search, all at once.

    python benchmarks/store_load.py --db /tmp/load.db --writers 4 --sessions 200 --readers 4
    python benchmarks/store_load.py --db postgresql+psycopg://USER@HOST:PORT/DB ...

Each writer ingests `--sessions` sessions (5 turns each) into `--users` users: most are its own,
and `--shared` of them are ingested by every writer (idempotence under races: stored once). Every
ingest also rolls summaries with a deterministic summarizer (a session's summary is its id; a
roll appends it), so the final conversation summaries show whether any session was rolled in
twice or lost. Readers search random users until the writers are done and check that every hit
belongs to the user they asked about. The parent then verifies the store and prints one JSON
object: counts expected vs found, lost / duplicated rows, errors by process, `Store.check()`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TURNS = 5


def session_ids(writer: int, sessions: int, shared: int) -> list[str]:
    own = [f"w{writer}-s{i:04d}" for i in range(sessions - shared)]
    return own + [f"shared-s{i:04d}" for i in range(shared)]


def user_of(session_id: str, users: int) -> str:
    return f"user{sum(map(ord, session_id)) % users}"


def turns_of(session_id: str) -> list[dict[str, str]]:
    return [{"speaker": "A" if i % 2 == 0 else "B", "text": f"{session_id} says fact number {i} about kites"}
            for i in range(TURNS)]


def _summarizer():
    from memory import Summarizer
    from memory.generators import Generator

    class Ids(Summarizer):
        """Deterministic summaries: a session's summary is its id, a roll appends it."""

        def summarize_session(self, turns, date):
            return turns[0].text.split()[0]

        def roll(self, previous, session_summary, date):
            return session_summary if not previous else f"{previous}|{session_summary}"

    class Never(Generator):
        name = "ids"

        def generate(self, messages, options):
            raise AssertionError("not used")

    return Ids(Never())


def writer(db: str, index: int, sessions: int, shared: int, users: int, seed: int) -> dict:
    from memory import HashingEmbedder, Memory

    mem = Memory(db, embedder=HashingEmbedder(64), summarizer=_summarizer())
    ids = session_ids(index, sessions, shared)
    random.Random(seed * 100 + index).shuffle(ids)
    statuses: dict[str, int] = {}
    errors: list[str] = []
    t0 = time.perf_counter()
    for sid in ids:
        try:
            r = mem.add_session(user_of(sid, users), turns_of(sid), session_id=sid)
            statuses[r.status] = statuses.get(r.status, 0) + 1
        except Exception as exc:  # noqa: BLE001 - counted and reported, the harness must go on
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"statuses": statuses, "errors": errors[:5], "n_errors": len(errors),
            "seconds": time.perf_counter() - t0, "sessions": len(ids)}


def reader(db: str, index: int, users: int, stop_file: str, seed: int) -> dict:
    from memory import HashingEmbedder, Memory

    mem = Memory(db, embedder=HashingEmbedder(64))
    rng = random.Random(seed * 1000 + index)
    queries, errors, leaks, latencies = 0, [], 0, []
    while not Path(stop_file).exists() or queries < 5:
        user = f"user{rng.randrange(users)}"
        t0 = time.perf_counter()
        try:
            hits = mem.search(user, f"fact number {rng.randrange(TURNS)} about kites", k=5)
            latencies.append(time.perf_counter() - t0)
            leaks += sum(h.user_id != user or user_of(h.session_id, users) != user for h in hits)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        queries += 1
    latencies.sort()
    return {"queries": queries, "errors": errors[:5], "n_errors": len(errors), "leaks": leaks,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None}


def verify(db: str, writers: int, sessions: int, shared: int, users: int) -> dict:
    from memory import Memory
    from store import NotFoundError, Store

    expected = sorted({sid for w in range(writers) for sid in session_ids(w, sessions, shared)})
    store = Store(db)
    found: list[str] = []
    wrong_turns = 0
    summaries_bad = 0
    summaries_lagging = 0
    mem = Memory(store, summarizer=_summarizer())
    for u in range(users):
        user = f"user{u}"
        try:
            infos = store.sessions(user)
        except NotFoundError:  # a user no session was assigned to
            continue
        found += [s.session_id for s in infos]
        for s in infos:
            texts = [t.text for t in store.turns(user, s.session_id)]
            wrong_turns += texts != [t["text"] for t in turns_of(s.session_id)]
        # Summaries as the writers left them: sessions rolled in at most once, in conversation
        # order (a prefix; a lagging tail is pending work, not damage) ...
        order = [s.session_id for s in infos]
        conv = next((s for s in store.summaries(user) if s.kind == "conversation"), None)
        rolled = conv.text.split("|") if conv else []
        summaries_bad += rolled != order[: len(rolled)]
        summaries_lagging += len(rolled) < len(order)
        # ... and after a catch-up, exactly every session once.
        mem.summarize(user)
        conv = next(s for s in store.summaries(user) if s.kind == "conversation")
        summaries_bad += conv.text.split("|") != order
    check = store.check()
    return {"expected_sessions": len(expected), "found_sessions": len(found),
            "lost": len(set(expected) - set(found)), "duplicated": len(found) - len(set(found)),
            "unexpected": len(set(found) - set(expected)), "sessions_with_wrong_turns": wrong_turns,
            "users_with_inconsistent_summaries": summaries_bad,
            "users_with_summaries_still_pending_after_load": summaries_lagging,
            "counts": store.counts().as_dict(), "check_ok": check.ok, "check_problems": check.problems}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="SQLite path or SQLAlchemy URL (must be empty)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=200, help="sessions per writer")
    ap.add_argument("--shared", type=int, default=20, help="of which every writer ingests the same ones")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--role", choices=["writer", "reader"], help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "writer":
        print(json.dumps(writer(args.db, args.index, args.sessions, args.shared, args.users, args.seed)))
        return
    if args.role == "reader":
        print(json.dumps(reader(args.db, args.index, args.users, args.stop_file, args.seed)))
        return

    import tempfile

    from store import Store

    Store(args.db).counts()  # create the schema once, as an application's deploy step would
    stop = Path(tempfile.mkdtemp()) / "stop"
    base = [sys.executable, __file__, "--db", args.db, "--sessions", str(args.sessions),
            "--shared", str(args.shared), "--users", str(args.users), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*base, "--role", "writer", "--index", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(args.writers)]
    procs += [subprocess.Popen([*base, "--role", "reader", "--index", str(i), "--stop-file", str(stop)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(args.readers)]
    outs = []
    for i, p in enumerate(procs):
        if i == args.writers:
            stop.touch()  # all writers are done: tell the readers
        out, err = p.communicate()
        outs.append(json.loads(out) if p.returncode == 0 and out.strip()
                    else {"crashed": p.returncode, "stderr": err[-2000:]})
    if args.writers == 0:
        stop.touch()
    wall = time.perf_counter() - t0
    w, r = outs[: args.writers], outs[args.writers:]
    result = {
        "db": Store(args.db).safe_url.split("?")[0], "writers": args.writers, "sessions_per_writer": args.sessions,
        "readers": args.readers, "wall_seconds": round(wall, 2),
        "writer_statuses": [o.get("statuses") for o in w],
        "writer_errors": sum(o.get("n_errors", 1) for o in w), "reader_errors": sum(o.get("n_errors", 1) for o in r),
        "queries": sum(o.get("queries", 0) for o in r), "leaked_hits": sum(o.get("leaks", 0) for o in r),
        "reader_p50_ms": [round(o["p50_ms"], 2) if o.get("p50_ms") else None for o in r],
        "error_samples": [e for o in outs for e in (o.get("errors") or [o.get("stderr")] if "crashed" in o else o.get("errors", []))][:5],
        **verify(args.db, args.writers, args.sessions, args.shared, args.users),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

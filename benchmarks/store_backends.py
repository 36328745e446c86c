"""Ingest and search latency on SQLite vs PostgreSQL, side by side in one run.

    . .ci/postgres   # a throwaway local server; exports QRMEM_TEST_POSTGRES_URL
    python benchmarks/store_backends.py --sessions 200 --queries 200

The same sessions (LoCoMo-like: 20 turns each) go through `Memory.add_session` on a fresh SQLite
file and on a fresh PostgreSQL database, with the hashing embedder so that the figures are the
store's own cost, not a model's. Then the same queries run on both: "cold" is the first search
after a write (the user's chunks and vectors are read from the database), "warm" hits the
in-process index. Prints a table with medians and PostgreSQL / SQLite ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["kite", "marathon", "kitten", "painting", "Lisbon", "pottery", "sunrise", "support", "group", "camping", "adoption", "violin", "museum", "recipe", "garden", "festival", "beach", "novel", "puppy", "bakery", "mountain"]


def turns(i: int, n: int = 20) -> list[dict[str, str]]:
    return [{"speaker": "A" if j % 2 == 0 else "B",
             "text": f"session {i} turn {j}: we talked about the {WORDS[(i + j) % len(WORDS)]} and "
                     f"the {WORDS[(i * 7 + j) % len(WORDS)]} again"} for j in range(n)]


def measure(db: str, sessions: int, queries: int) -> dict[str, float]:
    from memory import HashingEmbedder, Memory

    mem = Memory(db, embedder=HashingEmbedder(384))
    mem.store.counts()  # schema created before timing
    ingest = []
    for i in range(sessions):
        t0 = time.perf_counter()
        mem.add_session(f"user{i % 4}", turns(i), session_id=f"s{i}", summarize=False)
        ingest.append(time.perf_counter() - t0)
    cold, warm, listing = [], [], []
    for q in range(queries):
        user = f"user{q % 4}"
        query = f"what about the {WORDS[q % len(WORDS)]}"
        mem._index.clear()  # the next search reads the user's chunks and vectors from the database
        t0 = time.perf_counter()
        mem.search(user, query, k=10)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mem.search(user, query, k=10)
        warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mem.sessions(user)
        listing.append(time.perf_counter() - t0)
    mem.store.close()
    ms = lambda xs: 1000 * statistics.median(xs)
    return {"ingest ms / session (20 turns)": ms(ingest), "search ms, cold (read from db)": ms(cold),
            "search ms, warm (in-process index)": ms(warm), "list sessions ms": ms(listing)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default=os.environ.get("QRMEM_TEST_POSTGRES_URL"),
                    help="server URL [default: $QRMEM_TEST_POSTGRES_URL]")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    if not args.postgres:
        sys.exit("error: give --postgres URL (or source .ci/postgres to start a throwaway server)")
    import sqlalchemy as sa

    from store.admin import CreateDatabase, DropDatabase

    admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"qrmem_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(CreateDatabase(name))  # the name is quoted by the dialect
    try:
        pg_url = admin.url.set(database=name).render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = measure(str(Path(tmp) / "bench.db"), args.sessions, args.queries)
        pg = measure(pg_url, args.sessions, args.queries)
    finally:
        with admin.connect() as conn:
            conn.execute(DropDatabase(name))
    print(f"{args.sessions} sessions x 20 turns into 4 users ({args.sessions * 5} chunks each), "
          f"{args.queries} queries, medians")
    print(f"| {'':36} | {'SQLite':>8} | {'PostgreSQL':>10} | {'PG / SQLite':>11} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 12}|{'-' * 13}|")
    for key in sqlite:
        print(f"| {key:36} | {sqlite[key]:8.2f} | {pg[key]:10.2f} | {pg[key] / sqlite[key]:10.2f}x |")


if __name__ == "__main__":
    main()

"""First-stage cost as one user's memory grows, and many users under an index budget.

    python benchmarks/index_scale.py [--sizes 1000,10000,100000] [--postgres URL] [--searches 30] [--writes 15]
    python benchmarks/index_scale.py --many-users 10000 --turns-per-user 100 --budget-mib 256

Part 1, for each backend (a new SQLite file; PostgreSQL when --postgres or $QRMEM_TEST_POSTGRES_URL
names a server: a fresh database is created there and dropped after) and each size: one user with
that many turns (sessions of 20 varied turns), hashing embedder (so the store and the indexes are what
is timed), hybrid search, medians:
- warm search: the index is current;
- first search after a one-turn write: a new one-turn session is written, then searched (the index
  applies the change);
- the same with a full rebuild (the index dropped first): what every first search after a write cost
  before indexes were incremental;
- one write (a one-turn session), and the index's size in memory.
Part 2 (--many-users): N users x T turns on SQLite, then random searches with the index cache capped
at --budget-mib: latency, how many searches found their user's index in memory, evictions, RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from memory import HashingEmbedder, Memory
from store import SessionIn
from store.admin import CreateDatabase, DropDatabase

WORDS = ("cat kitten miso marathon lisbon october painting sunrise support group caroline melanie dog "
         "hiking tea pottery concert guitar beach camping sister brother birthday cake garden rain "
         "school teacher museum photo trip mountain river book novel chess piano job interview").split()
QUERIES = ["when is the marathon in lisbon", "what is the kitten called", "pottery class with tea",
           "birthday cake for my sister", "camping trip to the mountain", "piano and chess at school"]


def turns(rng: random.Random, n: int, tag: str) -> list[dict]:
    return [{"speaker": rng.choice(["ana", "ben"]), "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
             + f" {tag}{i}"} for i in range(n)]


def med_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def _admin(url: str, statement) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(statement)  # the name is quoted by the dialect
    engine.dispose()


def one_user(db: str, size: int, searches: int, writes: int, rng: random.Random) -> dict:
    mem = Memory(db, embedder=HashingEmbedder(256))
    sessions = [SessionIn(user_id="u", session_id=f"s{i}", date=f"{1 + i % 28} May 2024",
                          turns=turns(rng, min(20, size - 20 * i), f"t{i}_"))
                for i in range((size + 19) // 20)]
    mem.add_sessions(sessions)
    mem.search("u", "warm up", k=10)
    warm = []
    for i in range(searches):
        t0 = time.perf_counter()
        mem.search("u", QUERIES[i % len(QUERIES)], k=10)
        warm.append(time.perf_counter() - t0)
    write, after, rebuilt = [], [], []
    for i in range(writes):  # a chatbot: write, then search, again and again
        t0 = time.perf_counter()
        mem.add_session("u", turns(rng, 1, f"w{i}_"), session_id=f"w{i}")
        write.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mem.search("u", QUERIES[i % len(QUERIES)], k=10)
        after.append(time.perf_counter() - t0)
    for i in range(writes):  # the old behaviour: every write invalidated the whole index
        mem.add_session("u", turns(rng, 1, f"x{i}_"), session_id=f"x{i}")
        mem.retriever.forget("u")
        t0 = time.perf_counter()
        mem.search("u", QUERIES[i % len(QUERIES)], k=10)
        rebuilt.append(time.perf_counter() - t0)
    stats = mem.info()["index_cache"]
    mem.store.close()
    return {"turns": size, "warm_ms": med_ms(warm), "after_write_ms": med_ms(after),
            "after_write_rebuild_ms": med_ms(rebuilt), "write_ms": med_ms(write),
            "index_mib": round(stats["bytes"] / 2**20, 1)}


def many_users(db: str, users: int, per_user: int, budget_mib: int, searches: int, rng: random.Random) -> dict:
    mem = Memory(db, embedder=HashingEmbedder(256), index_cache_bytes=budget_mib << 20)
    t0 = time.perf_counter()
    batch = []
    stored = mem.info()["users"]  # --db of an earlier run: ingest only what is missing
    for u in range(stored, users):
        batch += [SessionIn(user_id=f"user{u}", session_id=f"s{j}", turns=turns(rng, 20, f"u{u}s{j}_"))
                  for j in range(per_user // 20)]
        if len(batch) >= 500:
            mem.add_sessions(batch)
            batch = []
    if batch:
        mem.add_sessions(batch)
    ingest = time.perf_counter() - t0
    hot = [f"user{u}" for u in rng.sample(range(users), min(users, 200))]  # a working set, then everyone
    lat, hits = [], 0
    for i in range(searches):
        user = rng.choice(hot) if i % 2 else f"user{rng.randrange(users)}"
        cached = mem.retriever.cache.get(user) is not None
        t0 = time.perf_counter()
        mem.search(user, QUERIES[i % len(QUERIES)], k=10)
        lat.append(time.perf_counter() - t0)
        hits += cached
    stats = mem.info()["index_cache"]
    return {"users": users, "turns_per_user": per_user, "ingest_s": round(ingest, 1),
            "search_p50_ms": med_ms(lat), "search_p95_ms": round(sorted(lat)[int(0.95 * len(lat))] * 1000, 2),
            "served_from_memory": f"{hits}/{searches}", "cache_mib": round(stats["bytes"] / 2**20, 1),
            "budget_mib": budget_mib, "cached_users": stats["users"], "evictions": stats["evictions"],
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--postgres", default=os.environ.get("QRMEM_TEST_POSTGRES_URL"))
    ap.add_argument("--searches", type=int, default=30)
    ap.add_argument("--writes", type=int, default=15)
    ap.add_argument("--many-users", type=int, default=0)
    ap.add_argument("--turns-per-user", type=int, default=100)
    ap.add_argument("--budget-mib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=None, help="--many-users: store to use (kept; an earlier run's is reused)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="qrmem-index-"))
    if args.many_users:
        print(many_users(args.db or str(root / "many.db"), args.many_users, args.turns_per_user, args.budget_mib,
                         2000, rng))
        return
    backends = [("SQLite", lambda size: (str(root / f"u{size}.db"), None))]
    if args.postgres:
        def pg(size: int) -> tuple[str, str]:
            import sqlalchemy as sa

            name = f"qrmem_bench_{uuid.uuid4().hex[:8]}"
            _admin(args.postgres, CreateDatabase(name))
            return sa.engine.make_url(args.postgres).set(database=name).render_as_string(hide_password=False), name
        backends.append(("PostgreSQL", pg))
    print("| backend | turns | warm search | first search after a write | same, full rebuild (before) | "
          "one write | index in memory |")
    print("|---|---|---|---|---|---|---|")
    for label, make in backends:
        for size in [int(s) for s in args.sizes.split(",")]:
            db, name = make(size)
            try:
                r = one_user(db, size, args.searches, args.writes, rng)
            finally:
                if name is not None:
                    _admin(args.postgres, DropDatabase(name))
            print(f"| {label} | {r['turns']:,} | {r['warm_ms']} ms | {r['after_write_ms']} ms "
                  f"({r['after_write_ms'] / r['warm_ms']:.2f}x warm) | {r['after_write_rebuild_ms']} ms | "
                  f"{r['write_ms']} ms | {r['index_mib']} MiB |", flush=True)


if __name__ == "__main__":
    main()

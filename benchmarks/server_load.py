"""Load on `qrmem serve` over loopback: C concurrent clients x N requests each, a mix of session
writes and searches (a share of them reranked), on SQLite and on PostgreSQL side by side in one run.

    . .ci/postgres   # a throwaway local server; exports QRMEM_TEST_POSTGRES_URL
    python benchmarks/server_load.py --clients 16 --requests 20 --reranker qr --rerank-share 0.05

For each backend: a fresh store (SQLite file / PostgreSQL database) is filled with U users' sessions
through the library, a key is made, a real `qrmem serve` process starts on a free loopback port, and
C client threads (httpx, keep-alive) send N requests each as fast as they are answered. Prints
requests/s, p50/p95/p99 latency per kind of request, errors (any answer other than 2xx or 429, and
broken connections) and 429s (the bounded queues saying "busy"), then checks the store.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["kite", "marathon", "kitten", "painting", "Lisbon", "pottery", "sunrise", "support", "group",
         "camping", "adoption", "violin", "museum", "recipe", "garden", "festival", "beach", "novel",
         "puppy", "bakery", "mountain"]


def turns(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"speaker": "A" if j % 2 == 0 else "B",
             "text": f"we talked about the {rng.choice(WORDS)} and the {rng.choice(WORDS)} again"}
            for j in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(db: str, users: int, sessions: int, embedder: str) -> str:
    """Fill the store through the library (not measured) and return an API key for every user."""
    from memory import Memory
    from store import ApiKeys

    mem = Memory(db, embedder=embedder)
    rng = random.Random(0)
    for u in range(users):
        for s in range(sessions):
            mem.add_session(f"user{u}", turns(rng, 10), session_id=f"seed{s}", date=f"{1 + s % 28} May 2024")
    key = ApiKeys(mem.store).create("load").secret
    mem.store.close()
    return key


def run_backend(db: str, args: argparse.Namespace) -> dict[str, object]:
    import httpx

    key = prepare(db, args.users, args.sessions, args.embedder)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(tempfile.gettempdir()) / f"server_load_{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "qrmem", "serve", "--db", db, "--port", str(port),
                             "--embedder", args.embedder, "--reranker", args.reranker,
                             "--workers", str(args.workers), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 600
        while True:
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"server did not start; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        lat: dict[str, list[float]] = {"add": [], "search": [], "rerank": []}
        counts = {"ok": 0, "429": 0, "errors": 0}
        busy: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        lock = threading.Lock()
        headers = {"Authorization": f"Bearer {key}"}

        def client(c: int) -> None:
            rng = random.Random(1000 + c)
            with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
                for i in range(args.requests):
                    user = f"user{rng.randrange(args.users)}"
                    r = rng.random()
                    if r < args.rerank_share:
                        kind, path = "rerank", f"/v1/users/{user}/search"
                        body: dict[str, object] = {"query": f"when did we talk about the {rng.choice(WORDS)}",
                                                   "k": 5, "rerank": True}
                    elif r < args.rerank_share + args.search_share:
                        kind, path = "search", f"/v1/users/{user}/search"
                        body = {"query": f"the {rng.choice(WORDS)} and the {rng.choice(WORDS)}", "k": 10}
                    else:
                        kind, path = "add", f"/v1/users/{user}/sessions"
                        body = {"session_id": f"c{c}-{i}", "date": "2024-06-01", "turns": turns(rng, 10)}
                    t0 = time.perf_counter()
                    try:
                        resp = http.post(path, json=body)
                        status = resp.status_code
                    except httpx.TransportError as exc:
                        status, resp = -1, exc
                    dt = time.perf_counter() - t0
                    with lock:
                        if 200 <= status < 300:
                            counts["ok"] += 1
                            lat[kind].append(dt)
                        elif status == 429:
                            counts["429"] += 1
                            busy[kind] += 1
                        else:
                            counts["errors"] += 1
                            what = type(resp).__name__ if status == -1 else resp.json()["error"]["type"]
                            failed[f"{kind} {status} {what}"] += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        log.close()
    from store import Store

    report = Store(db).check()
    every = [x for xs in lat.values() for x in xs]
    out: dict[str, object] = {"requests/s (answered 2xx)": counts["ok"] / wall, "wall s": wall,
                              "requests": args.clients * args.requests, "2xx": counts["ok"],
                              "429 (busy)": f"{counts['429']} ({_kinds(busy)})",
                              "errors": f"{counts['errors']} ({_kinds(failed)})",
                              "store check": "ok" if report.ok else "DAMAGED", "exit": proc.returncode}
    for kind, xs in [("all", every), *lat.items()]:
        if xs:
            p50, p95, p99 = np.percentile(np.array(xs) * 1000, [50, 95, 99])
            out[f"{kind}: n / p50 / p95 / p99 ms"] = f"{len(xs)} / {p50:.1f} / {p95:.1f} / {p99:.1f}"
    return out


def _kinds(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items())) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default=os.environ.get("QRMEM_TEST_POSTGRES_URL"),
                    help="server URL [default: $QRMEM_TEST_POSTGRES_URL]; without one, SQLite only")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20, help="per client")
    ap.add_argument("--search-share", type=float, default=0.5)
    ap.add_argument("--rerank-share", type=float, default=0.0, help="share of reranked searches (needs --reranker qr)")
    ap.add_argument("--reranker", default="none")
    ap.add_argument("--embedder", default="hashing:384")
    ap.add_argument("--workers", type=int, default=4, help="the server's --workers")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=20, help="seed sessions per user (10 turns each)")
    args = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = run_backend(str(Path(tmp) / "load.db"), args)
    if args.postgres:
        import sqlalchemy as sa

        from store.admin import CreateDatabase, DropDatabase

        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"qrmem_load_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(CreateDatabase(name))  # the name is quoted by the dialect
        try:
            results["PostgreSQL"] = run_backend(admin.url.set(database=name).render_as_string(hide_password=False), args)
        finally:
            with admin.connect() as conn:
                conn.execute(DropDatabase(name))
    print(f"{args.clients} clients x {args.requests} requests; {args.search_share:.0%} searches, "
          f"{args.rerank_share:.0%} reranked searches, the rest session writes (10 turns); embedder "
          f"{args.embedder}, reranker {args.reranker}, --workers {args.workers}; {args.users} users x "
          f"{args.sessions} seed sessions")
    names = list(results)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = list(dict.fromkeys(row for n in names for row in results[n]))
    for row in rows:
        cells = [results[n].get(row, "") for n in names]
        print(f"| {row} | " + " | ".join(f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()

"""Dense search latency as one user's memory grows: 1k, 10k and 100k chunks (synthetic vectors).

    python benchmarks/dense_scale.py [--sizes 1000,10000,100000] [--repeats 50]

Builds one store per size through the public API with a random 384-d embedder (the vectors, not the
model, are what this measures), then times `Memory.search(mode="dense")`: the first (cold) query,
which loads the user's vectors from the database, and the median of warm queries.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from memory import Embedder, Memory
from store import SessionIn

DIM = 384
TURNS_PER_SESSION = 500


class RandomEmbedder(Embedder):
    name = "random-384"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def embed_batch(self, texts):
        return self.rng.standard_normal((len(texts), DIM)).astype(np.float32)


def build(size: int, root: Path) -> tuple[Memory, float]:
    mem = Memory(str(root / f"scale-{size}.db"), embedder=RandomEmbedder(), first_stage="dense")
    sessions = [SessionIn(user_id="u", session_id=f"s{i}", turns=[
        {"speaker": "u", "text": f"synthetic turn {i}-{j}"} for j in range(min(TURNS_PER_SESSION, size - i * TURNS_PER_SESSION))])
        for i in range((size + TURNS_PER_SESSION - 1) // TURNS_PER_SESSION)]
    t0 = time.perf_counter()
    mem.add_sessions(sessions)
    return mem, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp())
    rows = []
    for size in sizes:
        mem, build_s = build(size, root)
        t0 = time.perf_counter()
        mem.search("u", "cold query", k=10)
        cold = time.perf_counter() - t0
        warm = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            mem.search("u", f"query {i}", k=10)
            warm.append(time.perf_counter() - t0)
        rows.append((size, build_s, cold, statistics.median(warm)))
    print(f"{'chunks':>8s} {'ingest s':>9s} {'cold ms':>9s} {'warm ms':>9s} {'warm x prev':>11s}")
    prev = None
    for size, build_s, cold, warm in rows:
        ratio = f"{warm / prev:.1f}x" if prev else "-"
        print(f"{size:8d} {build_s:9.1f} {cold * 1000:9.1f} {warm * 1000:9.2f} {ratio:>11s}")
        prev = warm


if __name__ == "__main__":
    main()

"""Recall@k / nDCG@10 of LoCoMo evidence for the first stages (dense, BM25, hybrid), chunk = turn.

    python benchmarks/first_stage.py [--data ../shared/data/locomo/locomo_dev.json] [--db /tmp/fs.db]

Ingests the file into a fresh store (or reuses --db), then scores every non-adversarial question.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.locomo import locomo_questions
from memory import Memory
from memory.metrics import ndcg_at_k, recall_at_k

KS = (5, 10, 20, 50)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--db", default=None, help="store to (re)use; default: a temporary file")
    ap.add_argument("--embedder", default=None)
    ap.add_argument("--rrf-k", type=lambda s: [int(x) for x in s.split(",")], default=[10, 60],
                    help="RRF constants to compare for the hybrid (comma-separated)")
    args = ap.parse_args()
    db = args.db or str(Path(tempfile.mkdtemp()) / "first_stage.db")
    mem = Memory(db, embedder=args.embedder)
    t0 = time.perf_counter()
    report = mem.ingest_file(args.data, progress=True)
    print(f"ingest: {report.turns} turns in {time.perf_counter() - t0:.1f}s "
          f"(embedding {report.embed_seconds:.1f}s, database {report.write_seconds:.1f}s)")
    questions = locomo_questions(json.loads(Path(args.data).read_text()))
    print(f"{len(questions)} questions (category 5 excluded)")
    print(f"{'first stage':13s} " + " ".join(f"R@{k:<4d}" for k in KS) + " nDCG@10  ms/query")
    default_k = mem.rrf_k
    runs = [("dense", None), ("bm25", None)] + [("hybrid", k) for k in args.rrf_k]
    for mode, rrf_k in runs:
        mem.rrf_k = rrf_k or default_k
        label = mode if rrf_k is None else f"hybrid k={rrf_k}"
        rec = {k: [] for k in KS}
        nd = []
        t0 = time.perf_counter()
        for q in questions:
            hits = mem.search(q.user_id, q.question, k=max(KS), mode=mode)
            ids = [h.turn_ids for h in hits]
            for k in KS:
                rec[k].append(recall_at_k(ids, q.evidence, k))
            nd.append(ndcg_at_k(ids, q.evidence, 10))
        ms = (time.perf_counter() - t0) * 1000 / len(questions)
        print(f"{label:13s} " + " ".join(f"{np.mean(rec[k]):.3f} " for k in KS)
              + f" {np.mean(nd):.3f}   {ms:.1f}")


if __name__ == "__main__":
    main()

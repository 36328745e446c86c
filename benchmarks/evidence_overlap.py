"""How often QRRanker's top evidence span overlaps the answer, on LoCoMo (issue 16).

    python benchmarks/first_stage.py --db /tmp/ev.db          # build the store once (~1 min)
    python benchmarks/evidence_overlap.py --db /tmp/ev.db [--sample N] [--evidence-tokens 8] [--out FILE.json]

Questions (categories 1-4) whose answer string appears, normalised and case-insensitively, as whole
words in one of their gold evidence turns. Each is reranked as `qrmem search --rerank` does (hybrid
top 20, session dates as context, the shipped reranker); it counts when a gold turn holding the
answer is among the reranked candidates (the best-ranked such turn is used). The figure: the share
of those where the top evidence span of that turn overlaps an occurrence of the answer. Baselines on
the same turns: a span of the same length placed uniformly at random (exact expectation), and a span
of the same length at the start of the turn (the speaker's name and first words). Conversations the
shipped heads were detected and trained on (conv-26, conv-30) are reported apart from the others.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from agent.locomo import locomo_questions
from memory import Memory, load_reranker
from store.files import write_private

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"
SEEN = ("conv-26", "conv-30")  # the shipped reranker's detection and training conversations


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", str(text).lower()).strip().strip(".,!?;:'\"").strip()


def answer_ranges(answer: str, text: str) -> list[tuple[int, int]]:
    """Character ranges of `answer` (normalised) as whole words in `text` (case-insensitive)."""
    ans, low = normalise(answer), text.lower()
    if not ans or len(low) != len(text):  # lower() changed the length: offsets would not map
        return []
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(ans)}(?!\w)", low)]


def overlaps(s: int, e: int, ranges: list[tuple[int, int]]) -> bool:
    return any(s < b and a < e for a, b in ranges)


def random_span_overlap(length: int, n: int, ranges: list[tuple[int, int]]) -> float:
    """Chance that a span of `length` characters placed uniformly in a text of `n` overlaps a range."""
    starts = range(max(1, n - length + 1))
    return float(np.mean([overlaps(s, s + length, ranges) for s in starts]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--db", required=True, help="a store with the data ingested (benchmarks/first_stage.py --db)")
    ap.add_argument("--reranker", default="qr")
    ap.add_argument("--rerank-k", type=int, default=20)
    ap.add_argument("--sample", type=int, default=None, help="a seeded random sample of N eligible questions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evidence-tokens", type=int, default=None, help="evidence window in tokens [default: 8]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    ap.add_argument("--rows", action="store_true", help="with --out: also each counted question, with its "
                    "LoCoMo text (CC BY-NC: keep such a file out of the repository)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.data).read_text())
    turns = {}  # (conversation, dia_id) -> turn text
    for sample in data:
        conv = sample["conversation"]
        for key, session in conv.items():
            if key.startswith("session_") and isinstance(session, list):
                for t in session:
                    turns[(sample["sample_id"], t["dia_id"])] = t.get("text", "")
    eligible = [q for q in locomo_questions(data) if q.answer is not None
                and any(answer_ranges(q.answer, turns.get((q.user_id, ev), "")) for ev in q.evidence)]
    if args.sample is not None and args.sample < len(eligible):
        keep = set(random.Random(args.seed).sample(range(len(eligible)), args.sample))
        eligible = [q for i, q in enumerate(eligible) if i in keep]
    print(f"{len(eligible)} questions whose answer appears in a gold turn")
    options = {} if args.evidence_tokens is None else {"evidence_tokens": args.evidence_tokens}
    mem = Memory(args.db, reranker=load_reranker(args.reranker, **options), create=False)
    rows = []
    t0 = time.perf_counter()
    for i, q in enumerate(eligible, start=1):
        hits = mem.search(q.user_id, q.question, k=args.rerank_k, rerank=True, rerank_k=args.rerank_k)
        for h in hits:  # best first: the best-ranked gold turn that holds the answer
            ranges = answer_ranges(q.answer, h.text)
            if set(h.turn_ids) & set(q.evidence) and ranges and h.evidence:
                top = h.evidence[0]
                length = top.end - top.start
                rows.append({"conversation": q.user_id, "question": q.question, "answer": q.answer,
                             "rank": h.rank, "text": h.text, "span": [top.start, top.end],
                             "hit": overlaps(top.start, top.end, ranges),
                             "any_hit": any(overlaps(e.start, e.end, ranges) for e in h.evidence),
                             "random": random_span_overlap(length, len(h.text), ranges),
                             "start": overlaps(0, length, ranges), "share": length / len(h.text)})
                break
        if i % 25 == 0:
            print(f"  {i}/{len(eligible)} questions, {len(rows)} counted, "
                  f"{(time.perf_counter() - t0) / i:.1f} s/question", flush=True)

    def figures(part: list[dict]) -> dict:
        def mean(key: str) -> float | None:
            return round(float(np.mean([r[key] for r in part])), 3) if part else None

        return {"counted": len(part), "top_span_overlaps": mean("hit"), "any_span_overlaps": mean("any_hit"),
                "random_span_same_length": mean("random"), "span_at_start": mean("start"),
                "span_share_of_text": mean("share")}

    out = {"questions": len(eligible), "rerank_k": args.rerank_k, "reranker": args.reranker,
           "evidence_tokens": getattr(getattr(mem.reranker, "config", None), "evidence_tokens", None), "sample": args.sample, "seed": args.seed,
           "all": figures(rows), "unseen": figures([r for r in rows if r["conversation"] not in SEEN]),
           "seen": figures([r for r in rows if r["conversation"] in SEEN]),
           "seconds_per_question": round((time.perf_counter() - t0) / max(1, len(eligible)), 2)}
    print(f"{'conversations':14s} {'counted':>7s} {'top span':>9s} {'any span':>9s} {'random':>7s} "
          f"{'at start':>8s} {'len/text':>8s}")
    for name in ("all", "unseen", "seen"):
        f = out[name]
        print(f"{name:14s} {f['counted']:7d} {f['top_span_overlaps']!s:>9s} {f['any_span_overlaps']!s:>9s} "
              f"{f['random_span_same_length']!s:>7s} {f['span_at_start']!s:>8s} {f['span_share_of_text']!s:>8s}")
    if args.out:
        if args.rows:
            out["rows"] = rows
        write_private(args.out, json.dumps(out, indent=1, ensure_ascii=False), force=True, mode=0o644,
                      what="results")


if __name__ == "__main__":
    main()

"""Detect SmolLM2 QR heads on seed questions and measure QRRanker on held-out conversations.

    python benchmarks/qr_sweep.py --db /tmp/fs.db --cache /tmp/qr_sweep.npz

Step 1 (slow, resumable through --cache): for seed questions (conversations --seed-convs) and a
sample of evaluation questions (the other conversations), score the hybrid top-K candidates with
*every* head of the model (one all-layer pass each, raw and calibrated) for each setting:
K=20 with date context, K=20 without, K=50 with date context.
Step 2 (fast): pick heads on the seed questions (`qr`: per-head nDCG@10; `core`: contrastive), then
report Recall@5 / nDCG@10 of evidence on the evaluation questions for the first stages and for
QRRanker with 1..16 heads, calibrated or raw, with and without dates, at K=20 and K=50.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path

import numpy as np

from agent.locomo import first_stage_candidates, locomo_questions
from memory import Memory
from memory.metrics import ndcg_at_k, recall_at_k
from memory.qr import QRRanker
from memory.qr.detect import head_quality, top_heads
from store.files import write_private

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"
SETTINGS = {"k20_date": (20, True), "k20_nodate": (20, False), "k50_date": (50, True)}


def collect(ranker, cands, use_dates, store, prefix, save):
    t0 = time.perf_counter()
    done = 0
    for i, c in enumerate(cands):
        key = f"{prefix}/{i}"
        if f"{key}/cal" in store:
            continue
        hs = ranker.head_scores(c.question.question, list(c.texts),
                                contexts=list(c.dates) if use_dates else None)
        store[f"{key}/raw"], store[f"{key}/cal"] = hs.raw.astype(np.float32), hs.calibrated.astype(np.float32)
        done += 1
        if done % 10 == 0:
            save()
            print(f"  {prefix}: {i + 1}/{len(cands)}  {(time.perf_counter() - t0) / done:.1f}s/query", flush=True)
    save()


def evaluate(scores_list, cands, k_recall=5):
    rec, nd = [], []
    for s, c in zip(scores_list, cands, strict=True):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        ids = [c.turn_ids[i] for i in order]
        rec.append(recall_at_k(ids, c.question.evidence, k_recall))
        nd.append(ndcg_at_k(ids, c.question.evidence, 10))
    return float(np.mean(rec)), float(np.mean(nd))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--db", required=True, help="a store with the data ingested (benchmarks/first_stage.py --db)")
    ap.add_argument("--cache", default="qr_sweep.npz")
    ap.add_argument("--seed-convs", default="conv-26,conv-30")
    ap.add_argument("--seed-questions", type=int, default=64)
    ap.add_argument("--eval-questions", type=int, default=160)
    ap.add_argument("--eval50-questions", type=int, default=80)
    ap.add_argument("--out-heads", default=None, help="write the chosen head list here")
    ap.add_argument("--extra-model", default=None,
                    help="also evaluate this QRRanker (e.g. a `qrmem train` directory) on the same questions")
    ap.add_argument("--extra-settings", default="k20_date", help="settings for --extra-model")
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=False,
                    help="scoring recorded in the head file (raw scored best for SmolLM2's top heads)")
    args = ap.parse_args()

    mem = Memory(args.db)
    questions = locomo_questions(json.loads(Path(args.data).read_text()))
    seed_convs = set(args.seed_convs.split(","))
    rng = random.Random(0)
    seed_q = rng.sample([q for q in questions if q.user_id in seed_convs], args.seed_questions)
    eval_pool = [q for q in questions if q.user_id not in seed_convs]
    eval_q = rng.sample(eval_pool, args.eval_questions)
    eval50_q = eval_q[: args.eval50_questions]
    cache = Path(args.cache)
    store = dict(np.load(cache)) if cache.exists() else {}

    def save() -> None:  # the sweep's own cache, replaced as it grows (never through a symlink)
        buf = io.BytesIO()
        np.savez(buf, **store)
        write_private(cache, buf.getvalue(), force=True, mode=0o644)

    ranker = QRRanker.load(all_layers=True)
    sets = {"seed": (first_stage_candidates(mem, seed_q, 20), True),
            "k20_date": (first_stage_candidates(mem, eval_q, 20), True),
            "k20_nodate": (None, False),
            "k50_date": (first_stage_candidates(mem, eval50_q, 50), True)}
    sets["k20_nodate"] = (sets["k20_date"][0], False)
    for name, (cands, dates) in sets.items():
        print(f"collecting {name}: {len(cands)} questions", flush=True)
        collect(ranker, cands, dates, store, name, save)

    def arr(prefix, i, kind):
        return store[f"{prefix}/{i}/{kind}"]

    seed_cands = sets["seed"][0]
    seed_cal = [arr("seed", i, "cal") for i in range(len(seed_cands))]
    gold = [c.gold_mask() for c in seed_cands]
    q_qr = head_quality(seed_cal, gold, "qr")
    q_core = head_quality(seed_cal, gold, "core")
    n_heads_total = q_qr.size
    head_sets = {f"qr top-{n}": top_heads(q_qr, n) for n in (1, 2, 4, 8, 16)}
    head_sets["core top-16"] = top_heads(q_core, 16)
    head_sets["core top-8"] = top_heads(q_core, 8)
    print("\nqr top-16 heads (seed nDCG@10):",
          ", ".join(f"{h}={q_qr[h.layer, h.head]:.3f}" for h in head_sets["qr top-16"]))
    print("core top-16 heads:", ", ".join(str(h) for h in head_sets["core top-16"]))
    print(f"seed questions with a gold candidate in the top-20: {sum(any(g) for g in gold)}/{len(gold)}")

    print(f"\n{'setting':11s} {'ranker':24s} {'R@5':>6s} {'nDCG@10':>8s}")
    for name in ("k20_date", "k20_nodate", "k50_date"):
        cands = sets[name][0]
        first = [[-i for i in range(len(c.texts))] for c in cands]  # first-stage order
        r, n = evaluate(first, cands)
        print(f"{name:11s} {'hybrid (first stage)':24s} {r:6.3f} {n:8.3f}")
        for mode in ("dense", "bm25"):
            alt = first_stage_candidates(mem, [c.question for c in cands], 50, mode=mode)
            r, n = evaluate([[-i for i in range(len(c.texts))] for c in alt], alt)
            print(f"{name:11s} {mode + ' (top-50 order)':24s} {r:6.3f} {n:8.3f}")
        for calibrated in (True, False):
            kind = "cal" if calibrated else "raw"
            per_q = [arr(name, i, kind) for i in range(len(cands))]
            label = "" if calibrated else " raw"
            r, n = evaluate([p.sum((0, 1)) for p in per_q], cands)
            print(f"{name:11s} {f'all {n_heads_total} heads{label}':24s} {r:6.3f} {n:8.3f}")
            for hname, heads in head_sets.items():
                scores = [sum(p[h.layer, h.head] for h in heads) for p in per_q]
                r, n = evaluate(scores, cands)
                print(f"{name:11s} {hname + label:24s} {r:6.3f} {n:8.3f}")
    if args.extra_model:
        extra = QRRanker.load(args.extra_model)
        for name in args.extra_settings.split(","):
            cands, dates = sets[name]
            t0 = time.perf_counter()
            scores = [extra.score(c.question.question, list(c.texts),
                                  contexts=list(c.dates) if dates else None) for c in cands]
            r, n = evaluate(scores, cands)
            per_q = (time.perf_counter() - t0) / len(cands)
            print(f"{name:11s} {Path(args.extra_model).name[:24]:24s} {r:6.3f} {n:8.3f}  ({per_q:.2f}s/query)")
    if args.out_heads:
        heads = top_heads(q_qr, args.n_heads)
        write_private(args.out_heads, json.dumps({
            "model": "SmolLM2-135M-Instruct", "method": "qr", "heads": [str(h) for h in heads],
            "scoring": {"calibrate": args.calibrate},
            "seed": {"data": Path(args.data).name, "conversations": sorted(seed_convs),
                     "questions": len(seed_q), "k": 20, "context": "session date"},
            "scores": {str(h): round(float(q_qr[h.layer, h.head]), 4) for h in top_heads(q_qr, 32)},
            "command": "python benchmarks/qr_sweep.py --db DB --out-heads FILE --n-heads "
                       f"{args.n_heads} --{'' if args.calibrate else 'no-'}calibrate",
        }, indent=1) + "\n", force=True, mode=0o644)  # it rewrites the shipped head file on purpose
        print(f"wrote {args.out_heads}")


if __name__ == "__main__":
    main()

"""Quality of each QRRanker latency lever on held-out LoCoMo conversations (run once, then cached).

    python benchmarks/qr_levers.py --db DB [--cache /tmp/qr_levers.npz] [--out benchmarks/results/qr_levers.json]

Same questions as benchmarks/qr_sweep.py (seed: 64 of conv-26/conv-30; held out: 160 random
questions of the other four conversations; hybrid top-20 with session dates). Reports Recall@5 and
nDCG@10 of the evidence for:
  - the shipped (trained) reranker in float32, and the same with int8 dynamic quantisation and in
    bfloat16, each with the per-query Kendall tau of its ranking against float32's;
  - layer budgets: the `qr` top-8 heads detected (untrained) on the seed questions among layers
    0..N, for each N. One all-layer pass per question serves every budget: in a causal model the
    lower layers never depend on the upper ones, so detecting with `--max-layer N` sees exactly
    these rows (tests/test_detect.py checks it).
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
BUDGETS = (5, 7, 9, 11, 13, 15, 17, 19, 21, 23)


def evaluate(scores_list, cands):
    rec, nd = [], []
    for s, c in zip(scores_list, cands, strict=True):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        ids = [c.turn_ids[i] for i in order]
        rec.append(recall_at_k(ids, c.question.evidence, 5))
        nd.append(ndcg_at_k(ids, c.question.evidence, 10))
    return round(float(np.mean(rec)), 4), round(float(np.mean(nd)), 4)


def kendall_tau(a, b) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--db", required=True)
    ap.add_argument("--cache", default="/tmp/qr_levers.npz")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--eval-questions", type=int, default=160, help="the first N of the 160 held-out questions")
    ap.add_argument("--top", type=int, default=8, help="heads per budget")
    ap.add_argument("--no-budgets", action="store_true", help="skip the layer budgets (two all-layer passes)")
    ap.add_argument("--heads", default=None,
                    help="also score these untrained heads (raw mass) in float32 and bf16, e.g. a budget's top-8")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    mem = Memory(args.db)
    questions = locomo_questions(json.loads(Path(args.data).read_text()))
    seed_convs = {"conv-26", "conv-30"}
    rng = random.Random(0)  # the sampling of benchmarks/qr_sweep.py
    seed_q = rng.sample([q for q in questions if q.user_id in seed_convs], 64)
    eval_q = rng.sample([q for q in questions if q.user_id not in seed_convs], 160)[: args.eval_questions]
    seed_c, eval_c = first_stage_candidates(mem, seed_q, 20), first_stage_candidates(mem, eval_q, 20)
    cache = Path(args.cache)
    store = dict(np.load(cache)) if cache.exists() else {}

    def save() -> None:
        buf = io.BytesIO()
        np.savez(buf, **store)
        write_private(cache, buf.getvalue(), force=True, mode=0o644)

    def collect(name, ranker, cands, fn):
        if f"{name}/done" in store:
            return
        t0 = time.perf_counter()
        for i, c in enumerate(cands):
            store[f"{name}/{i}"] = np.asarray(fn(ranker, c), dtype=np.float32)
            if (i + 1) % 20 == 0:
                print(f"  {name}: {i + 1}/{len(cands)}, {(time.perf_counter() - t0) / (i + 1):.2f} s/question",
                      flush=True)
        store[f"{name}/done"] = np.array([(time.perf_counter() - t0) / len(cands)])
        save()
        print(f"{name}: {len(cands)} questions, {store[f'{name}/done'][0]:.2f} s/question", flush=True)

    def score(r, c):
        return r.score(c.question.question, list(c.texts), contexts=list(c.dates))

    collect("shipped", QRRanker.load(dtype="float32"), eval_c, score)
    collect("int8", QRRanker.load(quantize="int8"), eval_c, score)
    collect("bf16", QRRanker.load(dtype="bfloat16"), eval_c, score)
    if args.heads:
        collect("heads fp32", QRRanker.load(heads=args.heads, calibrate=False, dtype="float32"), eval_c, score)
        collect("heads bf16", QRRanker.load(heads=args.heads, calibrate=False, dtype="bfloat16"), eval_c, score)
    if args.no_budgets:
        report(args, store, eval_c, None)
        return
    full = QRRanker.load(all_layers=True, max_layer=max(BUDGETS), dtype="float32")  # untrained: calibrated on the seed, raw held out
    collect("seed", full, seed_c, lambda r, c: r.head_scores(c.question.question, list(c.texts),
                                                             contexts=list(c.dates)).calibrated)
    full.config.calibrate = False
    collect("eval", full, eval_c, lambda r, c: r.head_scores(c.question.question, list(c.texts),
                                                             contexts=list(c.dates)).raw)

    report(args, store, eval_c, seed_c)


def report(args, store, eval_c, seed_c) -> None:
    """Print (and write) the figures; the layer budgets only when `seed_c` was scored."""
    def arr(name, n):
        return [store[f"{name}/{i}"] for i in range(n)]

    out: dict = {"questions": len(eval_c), "seed_questions": len(seed_c or ()), "threads": args.threads}
    first = evaluate([[-i for i in range(len(c.texts))] for c in eval_c], eval_c)
    shipped, int8 = arr("shipped", len(eval_c)), arr("int8", len(eval_c))
    out["hybrid"] = first
    out["shipped"] = evaluate(shipped, eval_c)
    out["int8"] = evaluate(int8, eval_c)
    taus = [kendall_tau(a, b) for a, b in zip(shipped, int8, strict=True)]
    out["int8_kendall_tau"] = {"median": round(float(np.median(taus)), 4), "mean": round(float(np.mean(taus)), 4),
                               "top1_agree": round(float(np.mean([np.argmax(a) == np.argmax(b)
                                                                  for a, b in zip(shipped, int8)])), 4)}
    bf16 = arr("bf16", len(eval_c))
    out["bf16"] = evaluate(bf16, eval_c)
    taus = [kendall_tau(a, b) for a, b in zip(shipped, bf16, strict=True)]
    out["bf16_kendall_tau"] = {"median": round(float(np.median(taus)), 4), "mean": round(float(np.mean(taus)), 4),
                               "top1_agree": round(float(np.mean([np.argmax(a) == np.argmax(b)
                                                                  for a, b in zip(shipped, bf16)])), 4)}
    if args.heads:
        a, b = arr("heads fp32", len(eval_c)), arr("heads bf16", len(eval_c))
        out["heads"] = {"heads": args.heads, "float32": evaluate(a, eval_c), "bf16": evaluate(b, eval_c),
                        "bf16_kendall_tau_median": round(float(np.median([kendall_tau(x, y) for x, y in zip(a, b)])), 4)}
    if seed_c is not None:
        seed, held = arr("seed", len(seed_c)), arr("eval", len(eval_c))
        gold = [c.gold_mask() for c in seed_c]
        quality = head_quality(seed, gold, "qr")  # (max(BUDGETS) + 1, H)
        budgets = {}
        for n in BUDGETS:
            heads = top_heads(quality[: n + 1], args.top)
            scores = [sum(p[h.layer, h.head] for h in heads) for p in held]
            r5, nd = evaluate(scores, eval_c)
            budgets[n] = {"layers_run": max(h.layer for h in heads) + 1, "recall@5": r5, "ndcg@10": nd,
                          "heads": [str(h) for h in heads]}
        out["budgets_untrained_top8"] = budgets
    print(json.dumps(out, indent=1))
    if args.out:
        write_private(Path(args.out), json.dumps(out, indent=1) + "\n", force=True, mode=0o644)


if __name__ == "__main__":
    main()

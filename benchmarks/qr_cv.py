"""Conversation-level cross-validation of QRRanker quality levers on LoCoMo (issue 16).

    python benchmarks/qr_cv.py capture --db DB [--cache DIR]     # slow, resumable per conversation
    python benchmarks/qr_cv.py analyze [--cache DIR] [--out benchmarks/results/qr_cv.json]

`capture` runs each model once per question over the hybrid first stage's top-20 (session dates as
context, as shipped) and keeps every head's score of every candidate, so every lever that only
re-reads those scores (head choice, fusion with the first stage, abstention signals) is measured
offline, fold by fold:
  - `base`: the untrained embedded SmolLM2 (layers 0-23, raw and calibrated), on a seeded sample of
    each of the six conversations: head detection happens per fold, on the training conversations.
  - `shipped`: the shipped trained reranker, on every question of the four conversations it never
    saw (conv-41/42/43/49), with each query token's attention of its eight heads kept apart (for
    the abstention signals that split the question into subject and predicate tokens).
The cache holds one JSON (questions, candidates) and one .npz (scores) per model and conversation; a
finished conversation is never recomputed. No pickle: object data is JSON.
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
from store.files import write_private

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"
ALL = ("conv-26", "conv-30", "conv-41", "conv-42", "conv-43", "conv-49")
UNSEEN = ("conv-41", "conv-42", "conv-43", "conv-49")  # never seen by the shipped heads' detection or training
BASE_SAMPLE = (60, 25)  # per conversation: questions of categories 1-4, of category 5


def questions_of(data, conv: str, sample: tuple[int, int] | None):
    answerable = [q for q in locomo_questions(data) if q.user_id == conv]
    adversarial = [q for q in locomo_questions(data, exclude_categories=(), require_evidence=False)
                   if q.user_id == conv and q.category == 5]
    if sample is not None:
        rng = random.Random(f"qr_cv/{conv}")
        answerable = rng.sample(answerable, min(sample[0], len(answerable)))
        adversarial = rng.sample(adversarial, min(sample[1], len(adversarial)))
    return answerable + adversarial


def save_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_private(path, buf.getvalue(), force=True, mode=0o644)


def capture(args) -> None:
    import torch

    from memory.qr import QRRanker
    from memory.qr.capture import capturing
    from memory.qr.scoring import chunk_mass, span_index

    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.data).read_text())
    mem = Memory(args.db)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    plan = [("shipped", c, None) for c in UNSEEN] + [("base", c, BASE_SAMPLE) for c in ALL]
    rankers: dict = {}
    for model, conv, sample in plan:
        if (cache / f"{model}.{conv}.npz").exists():
            continue
        if model not in rankers:
            rankers.clear()
            # base: the shipped head list on the untrained model, calibrated (as detection scores heads)
            rankers[model] = QRRanker.load() if model == "shipped" else QRRanker.load(heads=_shipped_heads())
        ranker = rankers[model]
        qs = questions_of(data, conv, sample)
        cands = first_stage_candidates(mem, qs, args.k)
        meta, arrays = [], {}
        t0 = time.perf_counter()
        layers = tuple(range(ranker.n_layers))
        for i, c in enumerate(cands):
            docs, dates = list(c.texts), list(c.dates)
            q = c.question.question
            if model == "base":
                hs = ranker.head_scores(q, docs, contexts=dates, layers=layers)
                arrays[f"raw/{i}"], arrays[f"cal/{i}"] = hs.raw, hs.calibrated
                tokens = None
            else:
                layout = ranker.layout(q, docs, dates)
                prefix = layout.prefix_len
                ids = torch.tensor([layout.input_ids])
                with torch.inference_mode(), capturing(frozenset(layers), slice(*layout.query_span),
                                                       keep_rows=True) as cap:
                    ranker.model(input_ids=ids, use_cache=False)
                index = span_index(layout.chunk_spans, prefix)
                tok = torch.stack([cap.out[layer][:, :prefix] for layer in layers])  # (L, H, P)
                arrays[f"raw/{i}"] = chunk_mass(tok, index, len(docs)).numpy()  # (L, H, N)
                rows = torch.stack([cap.rows_out[h.layer][h.head, :, :prefix] for h in ranker.heads])  # (8, Q, P)
                arrays[f"rows/{i}"] = chunk_mass(rows, index, len(docs)).numpy().astype(np.float16)  # (8, Q, N)
                tokens = ranker.tokenizer.convert_ids_to_tokens(list(layout.input_ids[slice(*layout.query_span)]))
            meta.append({"question": q, "answer": c.question.answer, "category": c.question.category,
                         "evidence": list(c.question.evidence), "texts": docs, "dates": dates,
                         "turn_ids": [list(t) for t in c.turn_ids], "gold": c.gold_mask(),
                         "query_tokens": tokens})
            if (i + 1) % 25 == 0:
                print(f"  {model} {conv}: {i + 1}/{len(cands)}, {(time.perf_counter() - t0) / (i + 1):.2f} s/q",
                      flush=True)
        info = {"model": model, "conversation": conv, "k": args.k, "layers": list(layers),
                "heads": [str(h) for h in ranker.heads], "seconds_per_question": (time.perf_counter() - t0) / len(cands),
                "questions": meta}
        write_private(cache / f"{model}.{conv}.json", json.dumps(info) + "\n", force=True, mode=0o644)
        save_npz(cache / f"{model}.{conv}.npz", arrays)  # written last: its presence marks the conversation done
        print(f"{model} {conv}: {len(cands)} questions, {info['seconds_per_question']:.2f} s/q", flush=True)


def _shipped_heads() -> list[str]:
    from memory.qr.heads import default_head_file, read_head_file

    return list(read_head_file(default_head_file())["heads"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("--data", default=str(DEFAULT_DATA))
    cap.add_argument("--db", required=True, help="a store with locomo_dev ingested (benchmarks/first_stage.py --db)")
    cap.add_argument("--cache", default="/tmp/qr_cv")
    cap.add_argument("--k", type=int, default=20)
    cap.add_argument("--threads", type=int, default=2)
    an = sub.add_parser("analyze")
    an.add_argument("--cache", default="/tmp/qr_cv")
    an.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cmd == "capture":
        capture(args)
    else:
        from qr_cv_analysis import analyze

        analyze(args)


if __name__ == "__main__":
    main()

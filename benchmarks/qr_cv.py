"""Conversation-level cross-validation of QRRanker quality levers on LoCoMo (issue 16).

    python benchmarks/qr_cv.py capture --db DB [--cache DIR]     # slow, resumable per conversation
    python benchmarks/qr_cv.py analyze [--cache DIR] [--out benchmarks/results/qr_cv.json]

`capture` runs each model once per question over the hybrid first stage's top-20 (session dates as
context, as shipped) and keeps every head's score of every candidate, so every lever that only
re-reads those scores (head choice, fusion with the first stage, abstention signals) is measured
offline, fold by fold:
  - `base`: the untrained embedded SmolLM2 (layers 0-23, raw and calibrated), on a seeded sample of
    each of the six conversations: head detection happens per fold, on the training conversations.
  - `shipped`: the shipped trained reranker (float32), on a seeded sample of the four conversations
    it never saw (conv-41/42/43/49; conv-41 whole), with each query token's attention of its eight heads kept apart (for
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
from memory import DEFAULT_FUSION_WEIGHT, Memory
from memory.attribution import asked_speaker, attribution, speaker_of
from memory.fusion import fuse_with_first_stage
from memory.metrics import ndcg_at_k, recall_at_k
from store.files import write_private

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"
ALL = ("conv-26", "conv-30", "conv-41", "conv-42", "conv-43", "conv-49")
UNSEEN = ("conv-41", "conv-42", "conv-43", "conv-49")  # never seen by the shipped heads' detection or training
BASE_SAMPLE = (45, 15)  # per conversation: questions of categories 1-4, of category 5 (seeded)
VARIANTS = {"shipped-k30": {"k": 30}, "shipped-nodate": {"dates": False}}
VARIANT_SAMPLE = (40, 0)  # a subset of the shipped sample (same seed, so the same first questions)
SHIPPED_SAMPLE = (100, 40)  # the same for the shipped reranker (conv-41 was captured whole: 152 + 41)


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
    plan = [("shipped", c, SHIPPED_SAMPLE) for c in UNSEEN] + [("base", c, BASE_SAMPLE) for c in ALL]
    # candidate formatting, on the first questions of each shipped sample: K=30, and no dates as context
    plan += [(variant, c, VARIANT_SAMPLE) for variant in VARIANTS for c in UNSEEN]
    rankers: dict = {}
    for model, conv, sample in plan:
        if (cache / f"{model}.{conv}.npz").exists():
            continue
        if model not in rankers:
            rankers.clear()
            # base: the shipped head list on the untrained model, calibrated (as detection scores heads)
            rankers[model] = (QRRanker.load(dtype="float32") if model.startswith("shipped")
                              else QRRanker.load(heads=_shipped_heads(), dtype="float32"))
        ranker = rankers[model]
        variant = VARIANTS.get(model, {})
        qs = questions_of(data, conv, sample)
        if variant:  # the first questions of the shipped sample, so both are measured on the same ones
            qs = questions_of(data, conv, SHIPPED_SAMPLE)[: sample[0]]
        cands = first_stage_candidates(mem, qs, variant.get("k", args.k))
        meta, arrays = [], {}
        t0 = time.perf_counter()
        layers = tuple(range(ranker.n_layers))
        for i, c in enumerate(cands):
            docs, dates = list(c.texts), (list(c.dates) if variant.get("dates", True) else None)
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


# -- analysis ---------------------------------------------------------------------------------------


def load(cache: Path, model: str) -> dict[str, list[dict]]:
    """conversation -> questions, each with its arrays ("raw", "cal", "rows") attached."""
    out = {}
    for conv in ALL:
        meta_path, npz_path = cache / f"{model}.{conv}.json", cache / f"{model}.{conv}.npz"
        if not npz_path.exists():
            continue
        info = json.loads(meta_path.read_text())
        arrays = np.load(npz_path)
        qs = info["questions"]
        for i, q in enumerate(qs):
            for key in ("raw", "cal", "rows"):
                if f"{key}/{i}" in arrays:
                    q[key] = arrays[f"{key}/{i}"].astype(np.float32)
            q["gold"] = np.asarray(q["gold"], dtype=bool)
        out[conv] = qs
    return out


def answerable(qs):
    return [q for q in qs if q["category"] != 5]


def quality(scores_list, qs) -> tuple[float, float]:
    """Mean Recall@5 and nDCG@10 of the evidence turns for rankings by `scores_list`."""
    rec, nd = [], []
    for s, q in zip(scores_list, qs, strict=True):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        ids = [q["turn_ids"][i] for i in order]
        rec.append(recall_at_k(ids, q["evidence"], 5))
        nd.append(ndcg_at_k(ids, q["evidence"], 10))
    return float(np.mean(rec)), float(np.mean(nd))


def first_stage(q) -> np.ndarray:
    return -np.arange(len(q["texts"]), dtype=np.float64)  # candidates arrive in first-stage order


def head_sum(q, heads, key="raw") -> np.ndarray:
    a = q[key]
    return np.asarray(sum(a[h.layer, h.head] for h in heads), dtype=np.float64)


def rank_positions(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each item under `scores` (ties by position)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    pos = np.empty(len(scores))
    pos[order] = np.arange(1, len(scores) + 1)
    return pos


def fuse(qr: np.ndarray, method: str, w: float, c: float) -> np.ndarray:
    """QR scores fused with the first-stage order. `rrf`: weighted reciprocal ranks with constant c;
    `z`: z-scored QR plus w times z-scored -log(first-stage rank)."""
    fs_rank = np.arange(1, len(qr) + 1, dtype=np.float64)
    if method == "rrf":
        return w / (c + rank_positions(qr)) + (1 - w) / (c + fs_rank)
    return fuse_with_first_stage(qr, w)  # what Memory.search ships


FUSION_GRID = [("rrf", w, c) for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8) for c in (1, 3, 10, 30, 60)] + \
              [("z", w, 0) for w in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)]


def choose_fusion(train_qs, score_fn):
    best = None
    for method, w, c in FUSION_GRID:
        r5, nd = quality([fuse(score_fn(q), method, w, c) for q in train_qs], train_qs)
        if best is None or r5 + nd > best[0]:
            best = (r5 + nd, (method, w, c))
    return best[1]


def per_category(scores_list, qs) -> dict[int, float]:
    out = {}
    for cat in (1, 2, 3, 4):
        sel = [i for i, q in enumerate(qs) if q["category"] == cat]
        if sel:
            out[cat] = quality([scores_list[i] for i in sel], [qs[i] for i in sel])[0]
    return out


def loco(convs: dict, evaluate_fold) -> dict:
    """Leave one conversation out: evaluate_fold(train questions, test questions) -> {name: scores_list};
    returns per-lever fold means (R@5, nDCG@10), per-fold values and per-category fold means."""
    table: dict[str, dict] = {}
    for held, held_qs in convs.items():
        train = [q for c, qs in convs.items() if c != held for q in answerable(qs)]
        test = answerable(held_qs)
        for name, (scores, chosen) in evaluate_fold(train, test).items():
            r5, nd = quality(scores, test)
            row = table.setdefault(name, {"folds": {}, "chosen": {}, "categories": []})
            row["folds"][held] = (round(r5, 4), round(nd, 4))
            row["chosen"][held] = chosen
            row["categories"].append(per_category(scores, test))
    for row in table.values():
        vals = np.array(list(row["folds"].values()))
        row["recall@5"], row["ndcg@10"] = round(float(vals[:, 0].mean()), 4), round(float(vals[:, 1].mean()), 4)
        cats = row.pop("categories")
        row["recall@5_by_category"] = {c: round(float(np.mean([x[c] for x in cats if c in x])), 4) for c in (1, 2, 3, 4)}
    return table


_STOP_WORDS = """a an the of to in on at for with from by about as and or but is are was were be been being do does did
has have had what which who whom whose when where why how that this these those it its his her their he she they
him them i you we my your our me us not no yes any some ever after before during into than then so if would could
should will can may might must just also"""
STOP = frozenset(_STOP_WORDS.split())


def abstention_features(q, heads) -> dict[str, float]:
    """Signals of one question that may separate "never said" (category 5) from answerable ones."""
    s = head_sum(q, heads)
    srt = np.sort(s)[::-1]
    p = s / max(s.sum(), 1e-9)
    per_head = np.stack([q["raw"][h.layer, h.head] for h in heads])  # (8, N)
    winners = per_head.argmax(1)
    feats = {"max QR score": float(s.max()), "top1-top2 margin": float(srt[0] - srt[1]),
             "QR entropy": float(-(p * np.log(p + 1e-12)).sum()),
             "head disagreement (share of heads whose top differs)": float((winners != s.argmax()).mean())}
    speakers = [speaker_of(t) for t in q["texts"]]
    person = asked_speaker(q["question"], sorted({x for x in speakers if x}))
    tokens = [t.replace("\u0120", " ").strip().lower() for t in q["query_tokens"]]
    shipped_signal = attribution(q["question"], q["texts"], s)
    if shipped_signal is not None:  # exactly what SearchResults.relevance reports (low = abstain)
        feats["relevance (memory.attribution), negated"] = -shipped_signal
    if person is None:
        return feats  # the speaker signals need exactly one person asked about
    other = np.array([sp is not None and sp != person for sp in speakers])
    first = person.split()[0].lower()
    subj = [i for i, t in enumerate(tokens) if t and (first.startswith(t) and len(t) >= 2)]
    pred = [i for i, t in enumerate(tokens) if t and t.isalpha() and t not in STOP and i not in subj]
    rows = q["rows"]  # (8, Q, N): per head, per query token, mass on each candidate
    feats["top-1 spoken by the other person"] = float(other[int(s.argmax())])
    feats["top-3 share spoken by the other person"] = float(other[np.argsort(-s)[:3]].mean())
    feats["QR mass share on the other person's turns"] = float(s[other].sum() / max(s.sum(), 1e-9))
    if pred:
        pm = rows[:, pred].sum((0, 1))  # (N,)
        feats["predicate mass share on the other person's turns"] = float(pm[other].sum() / max(pm.sum(), 1e-9))
        feats["top predicate chunk spoken by the other person"] = float(other[int(pm.argmax())])
        top = np.argsort(-pm)[:3]
        feats["top-3 predicate chunks: share by the other person"] = float(other[top].mean())
        if subj:
            sm = rows[:, subj].sum((0, 1))
            feats["subject/predicate mass correlation (negated)"] = float(-np.corrcoef(sm, pm)[0, 1])
    return feats


def auc(labels, values) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, values))


def abstention(convs: dict, heads) -> dict:
    """AUC of each signal per held-out conversation (no fitted parameters), and a logistic combination
    fitted on the other conversations; the trade-off of the combination's threshold."""
    from sklearn.linear_model import LogisticRegression

    feats = {c: [abstention_features(q, heads) for q in qs] for c, qs in convs.items()}
    labels = {c: np.array([q["category"] == 5 for q in qs]) for c, qs in convs.items()}
    names = sorted({k for fs in feats.values() for f in fs for k in f})
    out: dict = {"questions": {c: {"adversarial": int(labels[c].sum()), "answerable": int((~labels[c]).sum())}
                               for c in convs}, "signals": {}}
    for name in names:
        per = {}
        for c in convs:
            has = [i for i, f in enumerate(feats[c]) if name in f]
            y = labels[c][has]
            if 0 < y.sum() < len(y):
                per[c] = round(auc(y, [feats[c][i][name] for i in has]), 3)
        out["signals"][name] = {"auc_by_conversation": per, "auc_mean": round(float(np.mean(list(per.values()))), 3),
                                "coverage": round(float(np.mean([name in f for fs in feats.values() for f in fs])), 3)}

    def matrix(c):
        return np.array([[f.get(n, np.nan) for n in names] for f in feats[c]], dtype=np.float64)

    combo, curve = {}, []
    for held in convs:
        xtr = np.vstack([matrix(c) for c in convs if c != held])
        ytr = np.concatenate([labels[c] for c in convs if c != held])
        mu, sd = np.nanmean(xtr, 0), np.nanstd(xtr, 0) + 1e-9

        def prep(x, mu=mu, sd=sd):  # missing signals take the training mean, then standardise
            return (np.where(np.isnan(x), mu, x) - mu) / sd

        model = LogisticRegression(C=0.5, max_iter=2000).fit(prep(xtr), ytr)
        ptr = model.predict_proba(prep(xtr))[:, 1]
        pte = model.predict_proba(prep(matrix(held)))[:, 1]
        combo[held] = round(auc(labels[held], pte), 3)
        for target in (0.05, 0.10, 0.20):  # threshold: that share of the training folds' answerable abstains
            thr = float(np.quantile(ptr[~ytr], 1 - target))
            curve.append({"held_out": held, "false_abstention_target": target,
                          "abstain_adversarial": round(float((pte[labels[held]] > thr).mean()), 3),
                          "abstain_answerable": round(float((pte[~labels[held]] > thr).mean()), 3)})
    # The shipped signal alone: threshold from the training folds' answerable questions (a target
    # share of them abstaining), applied to the held-out conversation.
    key = "relevance (memory.attribution), negated"
    rel = {c: np.array([-f[key] if key in f else np.nan for f in feats[c]]) for c in convs}
    shipped_curve = []
    for held in convs:
        tr_rel = np.concatenate([rel[c][~labels[c]] for c in convs if c != held])
        for target in (0.02, 0.05, 0.10, 0.15, 0.20):
            thr = float(np.nanquantile(tr_rel, target))
            te, y = rel[held], labels[held]
            shipped_curve.append({"held_out": held, "target": target, "threshold": round(thr, 4),
                                  "abstain_adversarial": float(np.mean(te[y] < thr)),
                                  "abstain_answerable": float(np.mean(te[~y] < thr))})
    out["relevance_threshold"] = {t: {k: round(float(np.mean([r[k] for r in shipped_curve if r["target"] == t])), 3)
                                      for k in ("threshold", "abstain_adversarial", "abstain_answerable")}
                                  for t in (0.02, 0.05, 0.10, 0.15, 0.20)}
    all_answerable = np.concatenate([rel[c][~labels[c]] for c in convs])
    out["relevance_threshold_all_folds"] = {t: round(float(np.nanquantile(all_answerable, t)), 4)
                                            for t in (0.02, 0.05, 0.10, 0.15, 0.20)}
    out["logistic_combination"] = {"auc_by_conversation": combo, "auc_mean": round(float(np.mean(list(combo.values()))), 3)}
    out["tradeoff"] = {t: {k: round(float(np.mean([r[k] for r in curve if r["false_abstention_target"] == t])), 3)
                           for k in ("abstain_adversarial", "abstain_answerable")} for t in (0.05, 0.10, 0.20)}
    return out


def analyze(args) -> None:
    from memory.qr.detect import head_quality, top_heads
    from memory.qr.heads import parse_heads

    cache = Path(args.cache)
    out: dict = {}
    shipped = load(cache, "shipped")
    heads8 = parse_heads(_shipped_heads())

    def shipped_fold(train, test):
        res = {"hybrid first stage": ([first_stage(q) for q in test], None),
               "shipped (trained, 8 heads)": ([head_sum(q, heads8) for q in test], None)}
        choice = choose_fusion(train, lambda q: head_sum(q, heads8))
        res["shipped + fusion"] = ([fuse(head_sum(q, heads8), *choice) for q in test], choice)
        for n in (4, 8, 16, 24):  # heads re-detected on the trained model, training folds only
            heads = top_heads(head_quality([q["raw"] for q in train], [q["gold"] for q in train], "qr"), n)
            res[f"trained model, top-{n} re-detected"] = ([head_sum(q, heads) for q in test], [str(h) for h in heads])
            ch = choose_fusion(train, lambda q, h=heads: head_sum(q, h))
            res[f"trained model, top-{n} re-detected + fusion"] = (
                [fuse(head_sum(q, heads), *ch) for q in test], ch)
        return res

    if len(shipped) >= 2:  # folds need a conversation to train on beside the held-out one
        out["shipped_loco_unseen"] = loco(shipped, shipped_fold)
        out["abstention"] = abstention(shipped, heads8)
    variants = {}
    for variant in VARIANTS:
        got = load(cache, variant)
        if not got:
            continue
        rows = {}
        for conv, qs in got.items():
            by_text = {q["question"]: q for q in answerable(shipped.get(conv, []))}
            pairs = [(by_text[q["question"]], q) for q in answerable(qs) if q["question"] in by_text]
            ref, var = [p[0] for p in pairs], [p[1] for p in pairs]
            rows[conv] = {"questions": len(pairs),
                          "hybrid": quality([first_stage(q) for q in var], var),
                          "shipped (K=20, dates)": quality([head_sum(q, heads8) for q in ref], ref),
                          variant: quality([head_sum(q, heads8) for q in var], var),
                          f"{variant} + fusion {DEFAULT_FUSION_WEIGHT}": quality(
                              [fuse(head_sum(q, heads8), "z", DEFAULT_FUSION_WEIGHT, 0) for q in var], var)}
        names = [n for n in next(iter(rows.values())) if n != "questions"]
        variants[variant] = {"by_conversation": rows, "means": {
            n: [round(float(np.mean([r[n][i] for r in rows.values()])), 4) for i in (0, 1)] for n in names}}
    if variants:
        out["formatting"] = variants
    base = load(cache, "base")
    if len(base) == len(ALL):
        def base_fold(train, test):
            res = {"hybrid first stage": ([first_stage(q) for q in test], None)}
            for key in ("cal", "raw"):  # heads detected on calibrated scores (as `qrmem heads detect`), scored either way
                qual = head_quality([q["cal"] for q in train], [q["gold"] for q in train], "qr")
                for n in (8, 16):
                    heads = top_heads(qual, n)
                    res[f"untrained top-{n} ({key})"] = ([head_sum(q, heads, key) for q in test], [str(h) for h in heads])
                    ch = choose_fusion(train, lambda q, h=heads, k=key: head_sum(q, h, k))
                    res[f"untrained top-{n} ({key}) + fusion"] = (
                        [fuse(head_sum(q, heads, key), *ch) for q in test], ch)
            return res

        out["base_loco_all6"] = loco(base, base_fold)
    for section, table in out.items():
        print(f"\n{section}")
        if section == "formatting":
            for variant, v in table.items():
                print(f"  {variant}: {v['means']}")
            continue
        if section == "abstention":
            for name, row in table["signals"].items():
                print(f"  {name:60s} AUC {row['auc_mean']:.3f} {row['auc_by_conversation']} cover {row['coverage']}")
            print("  logistic combination", table["logistic_combination"], "\n  trade-off", table["tradeoff"])
            print("  relevance threshold by training folds", table["relevance_threshold"])
            print("  threshold on all four conversations", table["relevance_threshold_all_folds"])
            continue
        for name, row in table.items():
            print(f"  {name:50s} R@5 {row['recall@5']:.3f}  nDCG@10 {row['ndcg@10']:.3f}  "
                  f"folds {row['folds']}")
    if args.out:
        write_private(Path(args.out), json.dumps(out, indent=1, default=str) + "\n", force=True, mode=0o644)


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
        analyze(args)


if __name__ == "__main__":
    main()

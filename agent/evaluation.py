"""The LoCoMo evaluation harness: ingest each conversation session by session (summaries rolling),
then answer every question from memory only, and score retrieval and answers.

Writes `OUT/results.json` (per-question rows + summary; resumable: answered questions are skipped
on a re-run), `OUT/report.md` and `OUT/chart.png`. Each row keeps the reranked hits' evidence spans
(character offsets into each hit's text) and the memories given to the generator; the report shows a
few example questions with those memories, their evidence in bold, the gold answer and the prediction. Metrics come from `memory.metrics`; the LoCoMo
data (questions, evidence) from `agent.locomo`. The library takes a data path; only the demo script
chooses a default one.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memory import (
    DEFAULT_RERANK_K,
    Generator,
    Memory,
    Reranker,
    SearchHit,
    Summarizer,
    highlight,
)
from memory.metrics import locomo_f1, ndcg_at_k, recall_at_k
from store import load_file
from store.errors import InputError
from store.files import check_target, write_private
from store.jsonio import read_json_file

from .agent import DEFAULT_ABSTAIN_BELOW, NO_MEMORY, memory_block, should_abstain
from .locomo import CATEGORIES, TINY, check_conversations, download, parse_evidence

_TOKEN = re.compile(r"\w+|[^\w\s]")
EXAMPLES = 3  # example questions in the report
QA_PROMPT = ("Use the memories to answer the question in a short phrase (a name, date or a few "
             "words). If the memories do not say, answer 'not mentioned'.\n\nMemories:\n{memories}"
             "\n\nQuestion: {question}\nShort answer:")


@dataclass
class EvalConfig:
    out: Path
    data: Path | None = None
    conversations: list[str] | None = None
    limit: int | None = None  # questions in all
    rerank_k: int = DEFAULT_RERANK_K  # first-stage candidates (reranked)
    top_n: int = 3  # chunks given to the generator
    rerank: bool = True
    summaries: bool = False  # roll summaries during ingest and give them to the reranker
    categories: list[int] | None = None  # only these question categories (None: all)
    answer: bool = True  # False: retrieval only (no generator call, F1 not measured)
    max_new_tokens: int = 32
    abstain_below: float | None = DEFAULT_ABSTAIN_BELOW  # answer NO_MEMORY below this relevance (None: never)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_categories(text: str | None) -> list[int] | None:
    """'1,2,3,4' -> [1, 2, 3, 4]; None -> None (all categories); '' is an error, not "all"."""
    if text is None:
        return None
    cats: list[int] = []
    if isinstance(text, str):
        try:
            cats = sorted({int(c) for c in text.split(",") if c.strip()})
        except ValueError:
            cats = []
    if not cats or any(c not in CATEGORIES for c in cats):
        raise InputError(f"--categories takes numbers 1-5 separated by commas, got {text!r}")
    return cats


def _atomic_write(path: Path, text: str | bytes) -> None:
    """The run's own output files are replaced on every run (results.json on resume) through a new
    file renamed into place; never through a symlink, never onto a directory or device."""
    write_private(path, text, force=True, mode=0o644, what="results")


def run(cfg: EvalConfig, memory: Memory, generator: Generator, *, progress: bool = False) -> dict[str, Any]:
    data_path = cfg.data
    raw = read_json_file(data_path)
    samples = raw if isinstance(raw, list) else [raw]
    check_conversations(cfg.conversations)
    if cfg.conversations is not None:
        missing = set(cfg.conversations) - {str(s.get("sample_id")) for s in samples}
        if missing:
            raise InputError(f"{data_path}: no conversations {sorted(missing)}")
        samples = [s for s in samples if str(s.get("sample_id")) in set(cfg.conversations)]
    cfg.out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "report.md", "chart.png"):  # refused now, not after the run
        check_target(cfg.out / name, force=True, what="results")
    t_start = time.perf_counter()
    # Ingest session by session in time order; summaries roll as each session arrives.
    sessions = sorted(load_file(data_path), key=lambda s: (s.user_id, s.position or 0))
    wanted = {str(s["sample_id"]) for s in samples}
    ingest = memory.add_sessions([s for s in sessions if s.user_id in wanted], progress=progress)
    if cfg.summaries and memory.summarizer is not None:  # a resumed run finishes pending summaries
        t0 = time.perf_counter()
        for user in sorted(wanted):
            memory.summarize(user)
        ingest.summary_seconds += time.perf_counter() - t0
    questions = [(str(s["sample_id"]), i, qa) for s in samples for i, qa in enumerate(s.get("qa", []))
                 if cfg.categories is None or int(qa.get("category", 0)) in cfg.categories]
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    results_path = cfg.out / "results.json"
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        done = {r["id"]: r for r in json.loads(results_path.read_text()).get("questions", [])}
    from tqdm.auto import tqdm

    rows = []
    for user, i, qa in tqdm(questions, desc="questions", unit="q", disable=not progress):
        qid = f"{user}#{i}"
        if qid in done:
            rows.append(done[qid])
            continue
        rows.append(answer_one(cfg, memory, generator, user, qid, qa))
        _atomic_write(results_path, json.dumps({"questions": rows, "summary": None}, indent=1))
    summary = summarize(rows, cfg, ingest_seconds=ingest.embed_seconds + ingest.write_seconds
                        + ingest.summary_seconds, wall=time.perf_counter() - t_start)
    _atomic_write(results_path, json.dumps({"questions": rows, "summary": summary}, indent=1))
    _atomic_write(cfg.out / "report.md", report(summary))
    chart(summary, cfg.out / "chart.png")
    return summary


def answer_one(cfg: EvalConfig, memory: Memory, generator: Generator, user: str, qid: str,
               qa: dict[str, Any]) -> dict[str, Any]:
    question, category = str(qa["question"]), int(qa.get("category", 0))
    gold = qa.get("answer", qa.get("adversarial_answer"))
    t0 = time.perf_counter()
    first = memory.search(user, question, k=cfg.rerank_k)
    t1 = time.perf_counter()
    ranked = (memory.search(user, question, k=cfg.rerank_k, rerank=True, rerank_k=cfg.rerank_k)
              if cfg.rerank else first)
    t2 = time.perf_counter()
    top = ranked[: cfg.top_n]
    memories = memory_block(top)
    relevance = ranked.relevance
    abstained = should_abstain(relevance, cfg.abstain_below)
    prediction = (None if not cfg.answer else NO_MEMORY if abstained else generator.complete(
        [{"role": "user", "content": QA_PROMPT.format(memories=memories, question=question)}],
        max_new_tokens=cfg.max_new_tokens))
    t3 = time.perf_counter()
    evidence = parse_evidence(qa.get("evidence", []))
    return {
        "id": qid, "conversation": user, "question": question, "answer": gold, "category": category,
        "evidence": evidence, "prediction": prediction,
        "f1": locomo_f1(prediction, gold, category) if prediction is not None else None,
        "retrieved": [t for h in ranked for t in h.turn_ids],
        "retrieved_scores": [round(h.score, 5) for h in ranked],
        # per reranked hit: the spans of its text the reranker attended to most (empty without QR)
        "retrieved_evidence": [[_offsets(ev) for ev in h.evidence] for h in ranked],
        "memories": [_memory(h) for h in top],  # what the generator was given
        "first_stage": [t for h in first for t in h.turn_ids],
        "relevance": None if relevance is None else round(relevance, 4), "abstained": abstained,
        "context_tokens": len(_TOKEN.findall(memories)),
        "seconds": {"first_stage": t1 - t0, "rerank": t2 - t1 if cfg.rerank else 0.0, "generate": t3 - t2},
    }


def _offsets(ev: Any) -> dict[str, Any]:
    return {"start": ev.start, "end": ev.end, "weight": round(ev.weight, 4)}


def _memory(hit: SearchHit) -> dict[str, Any]:
    return {"turn_ids": list(hit.turn_ids), "date": hit.session_date, "text": hit.text, "score": round(hit.score, 5),
            "evidence": [_offsets(ev) for ev in hit.evidence]}


def pick_examples(rows: list[dict[str, Any]], n: int = EXAMPLES) -> list[dict[str, Any]]:
    """A few questions to show what memory did: scored ones whose given memories hold a gold
    turn first (of different categories where possible), in run order; each with its memories,
    marked `gold` where they hold an evidence turn."""
    shown = [r for r in rows if r["category"] != 5 and r.get("memories")]

    def recalled(r: dict[str, Any]) -> bool:
        return any(set(m["turn_ids"]) & set(r["evidence"]) for m in r["memories"])

    picked: list[dict[str, Any]] = []
    for pass_ in range(3):  # recalled, new category; recalled; any
        for r in shown:
            if len(picked) == n:
                break
            if r in picked or (pass_ < 2 and not recalled(r)):
                continue
            if pass_ == 0 and r["category"] in {p["category"] for p in picked}:
                continue
            picked.append(r)
    return [{"id": r["id"], "question": r["question"], "answer": r["answer"], "category": r["category"],
             "prediction": r["prediction"], "f1": r["f1"],
             "memories": [{**m, "gold": bool(set(m["turn_ids"]) & set(r["evidence"]))} for m in r["memories"]]}
            for r in sorted(picked, key=rows.index)]


def summarize(rows: list[dict[str, Any]], cfg: EvalConfig, *, ingest_seconds: float, wall: float) -> dict[str, Any]:
    by_cat: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["f1"] is not None:
            by_cat[r["category"]].append(r["f1"])
    main = [r for r in rows if r["category"] != 5]
    with_ev = [r for r in main if r["evidence"]]

    def recall(key: str, k: int) -> float | None:
        vals = [recall_at_k([[t] for t in r[key]], r["evidence"], k) for r in with_ev]
        return round(float(np.mean(vals)), 4) if vals else None

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    return {
        "questions": len(rows), "scored_questions": len(main),
        "f1": {"overall": mean([r["f1"] for r in main if r["f1"] is not None]),
               **{CATEGORIES.get(c, str(c)): mean(v) for c, v in sorted(by_cat.items())}},
        "recall@5": {"first_stage": recall("first_stage", 5), "reranked": recall("retrieved", 5)},
        "ndcg@10": {"first_stage": mean([ndcg_at_k([[t] for t in r["first_stage"]], r["evidence"]) for r in with_ev]),
                    "reranked": mean([ndcg_at_k([[t] for t in r["retrieved"]], r["evidence"]) for r in with_ev])},
        "context_tokens": mean([r["context_tokens"] for r in rows]),
        "abstention": {"adversarial": mean([float(r.get("abstained", False)) for r in rows if r["category"] == 5]),
                       "answerable": mean([float(r.get("abstained", False)) for r in main]),
                       "abstain_below": cfg.abstain_below},
        "seconds_per_question": {s: mean([r["seconds"][s] for r in rows]) for s in ("first_stage", "rerank", "generate")},
        "ingest_seconds": round(ingest_seconds, 2), "wall_seconds": round(wall, 2),
        "config": {"rerank_k": cfg.rerank_k, "top_n": cfg.top_n, "rerank": cfg.rerank, "summaries": cfg.summaries,
                   "abstain_below": cfg.abstain_below,
                   "categories": cfg.categories, "answer": cfg.answer,
                   "data": str(cfg.data), "conversations": cfg.conversations, "limit": cfg.limit, **cfg.extra},
        "examples": pick_examples(rows),
        "f1_definition": "LoCoMo token F1: normalised, articles/punctuation dropped, Porter-stemmed; "
                         "multi-hop averaged over comma-separated gold parts; open-domain gold before ';'; "
                         "adversarial = 1 for an abstention. Overall excludes category 5.",
    }


def report(summary: dict[str, Any]) -> str:
    f1, rec, nd = summary["f1"], summary["recall@5"], summary["ndcg@10"]
    lines = ["# qrmem LoCoMo evaluation", "",
             f"{summary['questions']} questions ({summary['scored_questions']} scored, category 5 separate); "
             f"config: `{json.dumps(summary['config'])}`", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| F1 {name} | {value if value is not None else '-'} |" for name, value in f1.items()]
    lines += [f"| Recall@5 first stage | {rec['first_stage']} |", f"| Recall@5 reranked | {rec['reranked']} |",
              f"| nDCG@10 first stage | {nd['first_stage']} |", f"| nDCG@10 reranked | {nd['reranked']} |",
              f"| context tokens / question | {summary['context_tokens']} |"]
    ab = summary.get("abstention") or {}
    lines += [f"| abstained, adversarial (5) / answerable (1-4) | {ab.get('adversarial', '-')} / "
              f"{ab.get('answerable', '-')} (relevance below {ab.get('abstain_below')}) |"]
    lines += [f"| seconds / question, {k} | {v} |" for k, v in summary["seconds_per_question"].items()]
    lines += [f"| ingest seconds | {summary['ingest_seconds']} |", f"| wall seconds | {summary['wall_seconds']} |",
              "", summary["f1_definition"], ""]
    lines += examples_md(summary.get("examples") or [])
    return "\n".join(lines)


def examples_md(examples: list[dict[str, Any]]) -> list[str]:
    """Report lines: each example question, the memories given to the generator (the reranker's
    evidence in **bold**, gold turns marked), the gold answer and the prediction."""
    if not examples:
        return []
    intro = ("What memory recalled for a few questions: the memories given to the generator, best first, "
             "with the reranker's evidence (the words its QR heads attended to most) in **bold**; "
             "(gold) marks a turn the question's answer comes from.")
    lines = ["## Examples", "", intro, ""]
    for ex in examples:
        lines += [f"**{ex['question']}** ({ex['id']}, {CATEGORIES.get(ex['category'], ex['category'])})", ""]
        for i, m in enumerate(ex["memories"], start=1):
            text = highlight(m["text"], [(e["start"], e["end"]) for e in m["evidence"]], "**", "**")
            mark = " (gold)" if m["gold"] else ""
            lines.append(f"{i}. [{m['date'] or 'undated'}] {','.join(m['turn_ids'])}{mark}: {text}")
        pred = ex["prediction"] if ex["prediction"] is not None else "(not asked: retrieval only)"
        f1 = f" (F1 {ex['f1']:.2f})" if ex["f1"] is not None else ""
        lines += ["", f"gold answer: {ex['answer']}  ", f"prediction: {pred}{f1}", ""]
    return lines


def chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    rec = summary["recall@5"]
    a.bar(["first stage", "reranked"], [rec["first_stage"] or 0, rec["reranked"] or 0], color=["#999", "#2a7"])
    a.set_title("Recall@5 of evidence")
    a.set_ylim(0, 1)
    cats = [c for c in ("multi-hop", "temporal", "open-domain", "single-hop", "adversarial") if c in summary["f1"]]
    b.bar(cats, [summary["f1"][c] or 0 for c in cats], color="#37b")
    b.set_title(f"F1 by category (overall {summary['f1']['overall']})")
    b.set_ylim(0, 1)
    b.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def build_and_run(*, out: str | Path, data: str | Path | None = None, conversations: list[str] | None = None,
                  limit: int | None = None, rerank_k: int = DEFAULT_RERANK_K, top_n: int = 3,
                  reranker: str = "qr",
                  generator: str = "transformers", base_url: str | None = None,
                  api_key_env: str = "OPENAI_API_KEY", summaries: bool = False, download_public: bool = False,
                  categories: list[int] | None = None, answer: bool = True,
                  db: str | None = None, embedder: str | None = None, progress: bool = True,
                  abstain_below: float | None = DEFAULT_ABSTAIN_BELOW,
                  fusion_weight: float | None = None,
                  temporal: bool = True) -> dict[str, Any]:
    """Everything `qrmem eval locomo` and `demos/locomo_demo.py` do, from plain options. Without
    `data`: the public file with `download_public`, else the tiny conversation shipped with qrmem.
    `temporal=False` ingests without grounding relative time expressions (`Memory(temporal=False)`)."""
    from memory import load_generator, load_reranker

    out = Path(out)
    if data is None and download_public:
        data = download(out / "locomo10.json")
    if data is None:
        data = TINY  # the tiny conversation shipped with qrmem; pass a path for real data
    if not Path(data).is_file():
        raise InputError(f"{data}: file not found (pass --data PATH to a locomo10.json-style file)")
    gen = load_generator(generator, base_url=base_url, api_key_env=api_key_env)
    rerank = reranker != "none"
    ranker: Reranker | None = load_reranker(reranker) if rerank else None
    out.mkdir(parents=True, exist_ok=True)
    memory = Memory(str(out / "memory.db") if db is None else db, embedder=embedder, reranker=ranker,
                    summarizer=Summarizer(gen) if summaries else None,
                    rerank_context="summary" if summaries else "date", fusion_weight=fusion_weight,
                    temporal=temporal)
    cfg = EvalConfig(out=out, data=Path(data), conversations=conversations, limit=limit, rerank_k=rerank_k,
                     top_n=top_n,
                     rerank=rerank, summaries=summaries, categories=categories, answer=answer,
                     abstain_below=abstain_below,
                     extra={"generator": gen.name, "reranker": reranker, "fusion_weight": fusion_weight,
                            "temporal": temporal})
    return run(cfg, memory, gen, progress=progress)

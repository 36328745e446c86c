"""The LoCoMo demo: qrmem's memory-aware loop on LoCoMo conversations, offline by default.

    python demos/locomo_demo.py [--data locomo10.json] [--conversations conv-26] [--limit 20] [--out runs/locomo]

Without --data it uses a small slice of ../shared/data/locomo/locomo_dev.json when present (conv-41,
a conversation the shipped reranker never saw, 20 questions), else the tiny conversation shipped with
qrmem. Writes OUT/results.json, OUT/report.md and OUT/chart.png and prints the report. Same as
`qrmem eval locomo --data FILE`.
"""

import argparse
from pathlib import Path

from agent import DEFAULT_ABSTAIN_BELOW
from agent.evaluation import build_and_run, parse_categories, report
from agent.locomo import parse_conversations
from memory import DEFAULT_RERANK_K

# The demo (not the library) knows where the repository's neighbours keep the LoCoMo dev file.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", default=None, help="a locomo10.json-style file (list of samples or one sample)")
ap.add_argument("--conversations", default=None, help="sample ids, comma-separated")
ap.add_argument("--limit", type=int, default=None, help="questions in all")
ap.add_argument("--out", default="runs/locomo")
ap.add_argument("--rerank-k", "--k", type=int, default=DEFAULT_RERANK_K, help="first-stage candidates to rerank")
ap.add_argument("--top-n", type=int, default=3, help="chunks given to the generator")
ap.add_argument("--reranker", default="qr", help="qr (embedded QRRanker), qr:PATH, a plug-in's NAME[:ARG] or none")
ap.add_argument("--generator", default="transformers", help="transformers[:MODEL] or openai:MODEL")
ap.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
ap.add_argument("--summaries", action="store_true", help="roll summaries and give them to the reranker")
ap.add_argument("--categories", default=None, help="question categories, e.g. 1,2,3,4 (default: all)")
ap.add_argument("--no-answer", action="store_true", help="retrieval only: skip the generator, no F1")
ap.add_argument("--fusion-weight", type=float, default=None,
                help="first-stage order fused with the reranker's scores (0: reranker alone) [default: the reranker's own]")
ap.add_argument("--abstain-below", default=str(DEFAULT_ABSTAIN_BELOW),
                help="answer 'no memory' below this search relevance, or none (never)")
ap.add_argument("--no-temporal", action="store_true",
                help="ingest without grounding 'yesterday', 'last week'... against the session date")
ap.add_argument("--download", action="store_true", help="fetch the public locomo10.json (needs network)")
args = ap.parse_args()
conversations = parse_conversations(args.conversations)
data, limit = args.data, args.limit
if data is None and not args.download and SHARED.is_file():
    data = SHARED
    conversations = ["conv-41"] if conversations is None else conversations
    limit = 20 if limit is None else limit
summary = build_and_run(out=args.out, data=data, limit=limit, rerank_k=args.rerank_k, top_n=args.top_n,
                        conversations=conversations, reranker=args.reranker, generator=args.generator,
                        base_url=args.base_url, summaries=args.summaries, download_public=args.download,
                        categories=parse_categories(args.categories), answer=not args.no_answer,
                        fusion_weight=args.fusion_weight,
                        abstain_below=None if args.abstain_below.lower() == "none" else float(args.abstain_below),
                        temporal=not args.no_temporal)
print(report(summary))

"""Compare LoCoMo evaluation runs on the questions they share: Recall@5 / nDCG@10 of the first stage
and of each run's reranked list, and F1 where a run answered.

    python benchmarks/locomo_compare.py runs/locomo-all runs/locomo-all-summaries

Each argument is an `--out` folder of `demos/locomo_demo.py` (its `results.json`). Rows are matched
by question id, so a run on a subset (e.g. `--conversations conv-41 --summaries --no-answer`) is
compared with the same questions of a full run. Category 5 and questions without evidence are left
out of the recall figures, as in the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.metrics import ndcg_at_k, recall_at_k  # noqa: E402


def load(folder: str) -> tuple[str, dict[str, dict]]:
    data = json.loads((Path(folder) / "results.json").read_text())
    config = (data.get("summary") or {}).get("config", {})
    label = f"{folder} ({'summaries' if config.get('summaries') else 'dates'})"
    return label, {r["id"]: r for r in data["questions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="--out folders of the LoCoMo evaluation")
    args = ap.parse_args()
    runs = [load(f) for f in args.runs]
    shared = sorted(set.intersection(*(set(rows) for _, rows in runs)))
    scored = [q for q in shared if runs[0][1][q]["category"] != 5 and runs[0][1][q]["evidence"]]
    print(f"{len(shared)} questions in common, {len(scored)} with evidence (category 5 left out); "
          f"conversations: {sorted({runs[0][1][q]['conversation'] for q in shared})}")

    def stats(rows: dict[str, dict], key: str) -> tuple[float, float]:
        r5 = [recall_at_k([[t] for t in rows[q][key]], rows[q]["evidence"], 5) for q in scored]
        nd = [ndcg_at_k([[t] for t in rows[q][key]], rows[q]["evidence"]) for q in scored]
        return float(np.mean(r5)), float(np.mean(nd))

    print("| list | Recall@5 | nDCG@10 | F1 |\n|---|---|---|---|")
    r5, nd = stats(runs[0][1], "first_stage")
    print(f"| first stage (hybrid) | {r5:.3f} | {nd:.3f} | |")
    for label, rows in runs:
        r5, nd = stats(rows, "retrieved")
        f1 = [rows[q]["f1"] for q in shared if rows[q]["category"] != 5 and rows[q]["f1"] is not None]
        print(f"| QRRanker, {label} | {r5:.3f} | {nd:.3f} | {np.mean(f1):.3f} |" if f1 else
              f"| QRRanker, {label} | {r5:.3f} | {nd:.3f} | - |")


if __name__ == "__main__":
    main()

"""Head detection: rank every (layer, head) of a model by how well it alone ranks gold candidates.

Reuses `QRRanker.head_scores` (the same code path as ranking). Methods:
- `qr` (QRHead): mean per-head nDCG@10 of the calibrated scores over seed queries;
- `core` (contrastive): mean calibrated mass on gold candidates minus mean mass on the others.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from store.errors import InputError
from store.files import check_target, write_private

from ..metrics import ndcg_from_scores
from .heads import Head

METHODS = ("qr", "core")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {list(METHODS)}")


def head_quality(per_query: Sequence[np.ndarray], gold: Sequence[Sequence[bool]], method: str = "qr",
                 k: int = 10) -> np.ndarray:
    """(L, H) quality of each head from per-query (L, H, N) calibrated scores and gold flags.

    Queries without a gold candidate are skipped.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    total, n = None, 0
    for scores, g in zip(per_query, gold, strict=True):
        g = np.asarray(g, dtype=bool)
        if not g.any():
            continue
        q = ndcg_from_scores(scores, g, k) if method == "qr" else contrast_per_head(scores, g)
        total = q if total is None else total + q
        n += 1
    if total is None:
        raise ValueError("no query has a gold candidate among its candidates")
    return total / n


def contrast_per_head(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """(L, H, N) -> (L, H): mean score on gold candidates minus mean score on the others (CoRe)."""
    pos = scores[..., gold].mean(-1)
    neg = scores[..., ~gold].mean(-1) if (~gold).any() else 0.0
    return pos - neg


def top_heads(quality: np.ndarray, n: int, layers: Sequence[int] | None = None) -> list[Head]:
    """The n best heads, best first; `layers` maps rows of `quality` to layer numbers."""
    layers = list(layers) if layers is not None else list(range(quality.shape[0]))
    flat = np.argsort(-quality, axis=None, kind="stable")[:n]
    return [Head(layers[i // quality.shape[1]], int(i % quality.shape[1])) for i in flat]


# -- running detection on a model -------------------------------------------------------------------

def collect(ranker: Any, records: Sequence[Any], progress: bool = False) -> tuple[list[np.ndarray], list[list[bool]]]:
    """Calibrated per-head scores (L, H, N) of every record, with every layer of the ranker."""
    from tqdm.auto import tqdm

    scores, gold = [], []
    for rec in tqdm(records, desc="heads", unit="query", disable=not progress):
        hs = ranker.head_scores(rec.question, rec.texts, contexts=rec.titles, summary=rec.summary)
        scores.append(hs.calibrated)
        gold.append(rec.gold)
    return scores, gold


def stability(per_query: Sequence[np.ndarray], gold: Sequence[Sequence[bool]], method: str, top: int,
              subsets: int = 5, seed: int = 0) -> float:
    """Mean pairwise overlap (fraction) of the top-`top` sets picked on random halves of the queries."""
    rng = np.random.default_rng(seed)
    n = len(per_query)
    if n < 4 or subsets < 2:
        return float("nan")
    picks = []
    for _ in range(subsets):
        idx = rng.choice(n, size=n // 2, replace=False)
        q = head_quality([per_query[i] for i in idx], [gold[i] for i in idx], method)
        picks.append(set(top_heads(q, top)))
    pairs = [len(a & b) / top for i, a in enumerate(picks) for b in picks[i + 1:]]
    return float(np.mean(pairs))


@dataclass
class Detection:
    model: str
    method: str
    quality: dict[str, np.ndarray]  # method -> (L, H)
    heads: list[Head]  # best first, by `method`
    queries: int
    stability: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        q = self.quality[self.method]
        return {
            "model": self.model, "method": self.method, "heads": [str(h) for h in self.heads],
            "head_scores": {str(h): round(float(q[h.layer, h.head]), 5) for h in self.heads},
            "queries": self.queries, "stability_top_overlap": round(self.stability, 4),
            **self.meta,
            "table": {m: np.round(v, 5).tolist() for m, v in self.quality.items()},
        }


def detect(ranker: Any, records: Sequence[Any], *, method: str = "qr", top: int = 16, subsets: int = 5,
           seed: int = 0, progress: bool = False, meta: dict[str, Any] | None = None) -> Detection:
    """Score every head of `ranker` (load it with `all_layers=True`) on `records`; keep the best `top`."""
    check_method(method)
    per_query, gold = collect(ranker, records, progress)
    usable = sum(any(g) for g in gold)
    if usable == 0:
        raise InputError("no seed query has a gold candidate; check the data's supporting flags")
    quality = {m: head_quality(per_query, gold, m) for m in METHODS}
    return Detection(model=ranker.name, method=method, quality=quality,
                     heads=top_heads(quality[method], top), queries=usable,
                     stability=stability(per_query, gold, method, top, subsets, seed), meta=meta or {})


def detect_heads(records: Sequence[Any], *, model: str | None = None, method: str = "qr", top: int = 16,
                 limit: int | None = 64, seed: int = 0, device: str | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, progress: bool = False,
                 meta: dict[str, Any] | None = None, max_layer: int | None = None,
                 quantize: str | None = None) -> Detection:
    """`qrmem heads detect`: load `model` with every layer (up to `max_layer`, a layer budget, when
    given), score every head on up to `limit` seed records that have a gold candidate (seeded
    sample), keep the best `top` by `method`."""
    from .data import sample
    from .ranker import QRRanker

    check_method(method)  # before the model loads
    records = sample(records, limit, seed)
    ranker = QRRanker.load(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           all_layers=True, max_layer=max_layer, quantize=quantize)
    meta = {**(meta or {}), "limit": limit, "sampling_seed": seed,
            "groups": sorted({r.split_key for r in records})}
    if max_layer is not None:
        meta["max_layer"] = max_layer
    if quantize is not None:
        meta["quantize"] = quantize
    return detect(ranker, records, method=method, top=top, seed=seed, progress=progress, meta=meta)


def check_outputs(out: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """The head file and its heatmap's paths, refused now (before any work) if `write` would refuse
    them: an existing file without `force`, a symlink, a directory (see `store.files`)."""
    out = Path(out)
    png = out.with_suffix(".png")
    if png == out:
        raise InputError(f"{out}: --out names the head file (.json); its .png heatmap is written beside it")
    if out.parent.is_dir():  # a missing directory is created by `write`
        for path in (out, png):
            check_target(path, force=force, what="head file")
    return out, png


def write(det: Detection, out: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """The head file (JSON) and a layer x head heatmap PNG beside it, each written to a new file
    renamed into place (an existing one is replaced only with `force`; never through a symlink)."""
    out, png = check_outputs(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_private(out, json.dumps(det.to_json(), indent=1) + "\n", force=force, mode=0o644, what="head file")
    heatmap(det.quality[det.method], det.heads, png,
            f"{det.model}: {det.method} head scores ({det.queries} queries)", force=force)
    return out, png


def heatmap(quality: np.ndarray, heads: Sequence[Head], path: Path, title: str, *,
            force: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_heads = quality.shape
    fig, ax = plt.subplots(figsize=(max(4, n_heads * 0.35 + 2), max(4, n_layers * 0.22 + 1.5)))
    im = ax.imshow(quality, aspect="auto", cmap="viridis", origin="lower")
    ax.scatter([h.head for h in heads], [h.layer for h in heads], marker="s", s=40,
               facecolors="none", edgecolors="red", linewidths=1.2, label=f"top {len(heads)}")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), fontsize=7, frameon=False)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_private(path, buf.getvalue(), force=force, mode=0o644, what="heatmap")

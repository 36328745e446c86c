"""Evidence spans: where in each candidate's text the QR heads looked.

From the per-token attention already captured for scoring (no extra pass): the selected heads'
token mass (calibrated when the ranker calibrates; negative values count as 0), the heaviest window
of `width` tokens inside each chunk and a second disjoint one when it carries at least half as much
(`scoring.best_windows`), mapped to characters of the candidate's own text with the tokenizer's
offset mapping, then widened to whole words (a token may start mid-word or on the space before one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..ranking import Evidence
from .prompt import PromptLayout
from .scoring import best_windows

SECOND_SPAN = 0.5  # a second span is kept when its window holds at least this share of the first's mass


def word_span(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without surrounding whitespace, widened to whole words at both ends."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return start, start
    while start > 0 and _in_word(text[start - 1]) and _in_word(text[start]):
        start -= 1
    while end < len(text) and _in_word(text[end - 1]) and _in_word(text[end]):
        end += 1
    return start, end


def _in_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def chunk_evidence(layout: PromptLayout, docs: Sequence[str], mass: torch.Tensor,
                   width: int) -> list[tuple[Evidence, ...]]:
    """Each doc's evidence spans (heaviest first) from `mass`, the (P,) per-token mass of the
    selected heads over the prompt prefix of `layout` (whose chunks are `docs`, in order)."""
    assert len(layout.chunk_spans) == len(docs) and len(layout.chunk_chars) == len(docs), "layout without offsets"
    mass = mass.float().clamp_min(0)  # (P,)
    spans = torch.tensor(layout.chunk_spans, dtype=torch.long, device=mass.device)  # (N, 2)
    starts, widths, sums = (x.cpu().numpy() for x in best_windows(mass, spans, width))  # (N, K), (N,), (N, K)
    tok = mass.cpu().numpy()  # (P,)
    out = []
    for i, doc in enumerate(docs):
        a, b = layout.chunk_spans[i]
        m, off = tok[a:b], layout.chunk_offsets(i, len(doc))  # (n,), (n, 2)
        total = float(m.sum())
        found: list[tuple[int, int]] = []
        for k in range(starts.shape[1]):
            if total <= 0 or not np.isfinite(sums[i, k]) or (k and sums[i, k] < SECOND_SPAN * sums[i, 0]):
                continue
            seg = off[starts[i, k] - a: starts[i, k] - a + widths[i]]
            seg = seg[seg[:, 1] > seg[:, 0]]  # tokens with characters in the doc
            if not len(seg):
                continue
            s, e = word_span(doc, int(seg[:, 0].min()), int(seg[:, 1].max()))
            if s >= e:
                continue
            clash = next((j for j, (fs, fe) in enumerate(found) if s <= fe and fs <= e), None)
            if clash is None:
                found.append((s, e))
            else:  # widened to words, the windows touch: one span
                found[clash] = (min(s, found[clash][0]), max(e, found[clash][1]))
        ev = []
        for s, e in found:
            inside = (off[:, 1] > s) & (off[:, 0] < e) & (off[:, 1] > off[:, 0])  # tokens in the span
            ev.append(Evidence(s, e, doc[s:e], min(1.0, float(m[inside].sum()) / total)))
        out.append(tuple(sorted(ev, key=lambda x: -x.weight)))
    return out

"""Who said it: the share of a reranker's mass that lands on turns of the person a query asks about.

A memory that holds an event told by Bob answers "what did Alice realise after her race?" only in
appearance: the words match, the speaker does not (LoCoMo's category 5 is built exactly so). When a
query names one of the speakers of its candidates (chunks are `Speaker: text`), `attribution` is the
share of the (non-negative) reranker scores on that speaker's own turns; a low value says the
matching memories were said by someone else. None when the query names no speaker or several.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_SPEAKER = re.compile(r"^([^:\n]{1,40}):\s")
_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", re.UNICODE)


def speaker_of(text: str) -> str | None:
    """The speaker of a `Speaker: text` chunk (its first line), else None."""
    m = _SPEAKER.match(text)
    return m.group(1).strip() if m else None


def asked_speaker(query: str, speakers: Sequence[str]) -> str | None:
    """The one speaker whose first name appears as a word of `query` (case-insensitive, possessive
    allowed), else None (none or several named)."""
    words = {w.lower().removesuffix("'s") for w in _WORD.findall(query)}
    named = {s for s in speakers if s.split() and s.split()[0].lower() in words}
    return named.pop() if len(named) == 1 else None


def attribution(query: str, texts: Sequence[str], scores: Sequence[float]) -> float | None:
    """Share of the reranker's mass on turns spoken by the person `query` asks about, in [0, 1];
    None when the query names no single speaker of the candidates, or there is no mass."""
    speakers = [speaker_of(t) for t in texts]
    person = asked_speaker(query, sorted({s for s in speakers if s}))
    if person is None:
        return None
    mass = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = mass.sum()
    if not total > 0:
        return None
    own = mass[[s == person for s in speakers]].sum()
    return float(own / total)

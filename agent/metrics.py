"""LoCoMo QA scoring: the token F1 of the LoCoMo paper (Maharana et al., 2024, `task_eval/evaluation.py`).

- normalise: lower-case, drop punctuation, drop the articles a/an/the (and "and"), squeeze spaces;
- tokens are Porter-stemmed; F1 = harmonic mean of token precision and recall (bag of tokens);
- category 1 (multi-hop): the gold answer is a comma-separated list; each gold part is matched to its
  best comma-separated prediction part and the F1s are averaged;
- category 3 (open-domain): only the part of the gold answer before the first ';' counts;
- categories 2 (temporal) and 4 (single-hop): plain F1;
- category 5 (adversarial): 1 if the prediction says the information is not available, else 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
ABSTAIN = ("no information available", "not mentioned")


@lru_cache(maxsize=1)
def _porter():
    import Stemmer

    return Stemmer.Stemmer("porter")


def normalize(text: str) -> str:
    text = str(text).lower().replace(",", " ").translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    return _porter().stemWords(normalize(text).split())


def f1(prediction: str, gold: str) -> float:
    p, g = tokens(prediction), tokens(gold)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    preds = [p.strip() for p in str(prediction).split(",") if p.strip()] or [""]
    golds = [g.strip() for g in str(gold).split(",") if g.strip()]
    if not golds:
        return 0.0
    return sum(max(f1(p, g) for p in preds) for g in golds) / len(golds)


def locomo_f1(prediction: str, gold: str | None, category: int) -> float:
    """The LoCoMo score of one answer by question category."""
    if category == 5:
        return float(any(phrase in str(prediction).lower() for phrase in ABSTAIN))
    gold = "" if gold is None else str(gold)
    if category == 1:
        return multi_answer_f1(prediction, gold)
    if category == 3:
        gold = gold.split(";")[0]
    return f1(prediction, gold)

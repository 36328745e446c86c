"""Search filters: keep only some sessions, or sessions dated within a range.

Session dates are free text as they were ingested ("1:56 pm on 8 May, 2023" in LoCoMo, ISO
elsewhere). `parse_session_date` reads the day out of the common forms: ISO dates and date-times
(`2023-05-08`, `2023-05-08T13:56:00Z`), `8 May 2023`, `8 May, 2023`, `May 8, 2023` (full or
three-letter English month names), each optionally after a time such as `1:56 pm on`. Anything
else, numeric day/month orders such as `05/08/2023` included (ambiguous), is unparseable: when a
date bound is given, sessions whose date is missing or unparseable are left out, since nobody can
say they are in the range.

Bounds are whole days and inclusive: `after=2023-05-08` keeps sessions dated on 8 May 2023 or later,
`before=2023-05-31` those dated on 31 May 2023 or earlier. The filter is a mask over a user's chunks
applied before top-k, so a search still returns k hits when k chunks match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from store import ChunkRecord, InputError

from .fusion import top_k

MONTHS = {name: i for i, names in enumerate(
    [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
     ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"),
     ("october", "oct"), ("november", "nov"), ("december", "dec")], start=1) for name in names}
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[t ][\d:.]+(?:z|[+-]\d{2}:?\d{2})?)?")  # lower-cased
_DAY_MONTH_YEAR = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]+)\.?,?\s+(\d{4})")
_MONTH_DAY_YEAR = re.compile(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")
_LEADING_TIME = re.compile(r"\d{1,2}(?::\d{2}){0,2}\s*(?:[ap]\.?m\.?)?\s+on\s+")


def parse_session_date(text: str | None) -> date | None:
    """The day a session date text names, or None when it names none this parser can read."""
    if not isinstance(text, str):
        return None
    s = " ".join(text.strip().lower().split())
    if (m := _ISO.fullmatch(s)) is not None:
        return _day(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    s = _LEADING_TIME.sub("", s, count=1)
    if (m := _DAY_MONTH_YEAR.fullmatch(s)) is not None and m.group(2) in MONTHS:
        return _day(int(m.group(3)), MONTHS[m.group(2)], int(m.group(1)))
    if (m := _MONTH_DAY_YEAR.fullmatch(s)) is not None and m.group(1) in MONTHS:
        return _day(int(m.group(3)), MONTHS[m.group(1)], int(m.group(2)))
    return None


def _day(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:  # 31 February and the like
        return None


def _bound(value: object, name: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InputError(f"{name} must be a date (YYYY-MM-DD), got {value!r}")


@dataclass(frozen=True)
class SearchFilter:
    """Which of a user's chunks a search may return: those of `session_ids` (None: any session)
    whose session date is on or after `after` and on or before `before` (None: unbounded)."""

    session_ids: frozenset[str] | None = None
    after: date | None = None
    before: date | None = None

    @classmethod
    def build(cls, session_ids: Iterable[str] | None = None, after: date | str | None = None,
              before: date | str | None = None) -> SearchFilter | None:
        """A validated filter, or None when nothing is filtered."""
        if session_ids is not None:
            if isinstance(session_ids, str | bytes) or not isinstance(session_ids, Iterable):
                raise InputError("session_ids must be a list of session ids")
            session_ids = frozenset(session_ids)
            if not all(isinstance(s, str) for s in session_ids):
                raise InputError("session_ids must be a list of strings")
        lo, hi = _bound(after, "after"), _bound(before, "before")
        if lo is not None and hi is not None and lo > hi:
            raise InputError(f"after ({lo}) is later than before ({hi}): no session can match")
        if session_ids is None and lo is None and hi is None:
            return None
        return cls(session_ids, lo, hi)

    def allows(self, session_id: str, session_date: str | None) -> bool:
        if self.session_ids is not None and session_id not in self.session_ids:
            return False
        if self.after is None and self.before is None:
            return True
        day = parse_session_date(session_date)
        return day is not None and (self.after is None or day >= self.after) and (
            self.before is None or day <= self.before)

    def mask(self, chunks: Sequence[ChunkRecord]) -> np.ndarray:
        """(N,) bool: which chunks pass (each distinct session judged once)."""
        seen: dict[tuple[str, str | None], bool] = {}
        out = np.zeros(len(chunks), dtype=bool)
        for i, c in enumerate(chunks):
            key = (c.session_id, c.session_date)
            if key not in seen:
                seen[key] = self.allows(*key)
            out[i] = seen[key]
        return out

    def top_k(self, scores: np.ndarray, k: int, chunks: Sequence[ChunkRecord]) -> np.ndarray:
        """Indices of the k best chunks that pass, best first (fewer when fewer pass)."""
        keep = self.mask(chunks)
        return top_k(np.where(keep, scores, -np.inf), min(k, int(keep.sum())))

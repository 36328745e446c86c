"""Temporal grounding: relative time expressions in a turn, resolved against its session's date.

`ground(text, session_date)` finds the phrases of a small, deliberately conservative set and
resolves each with `dateparser` (`RELATIVE_BASE` = the session's day), so that "I went there
yesterday" said on 8 May 2023 carries the note `yesterday = 7 May 2023`. The notes are computed at
ingest, stored beside the chunk (`chunks.time_notes`) and shown to the reranker and the generator.

The set (case-insensitive, whole words):

- days: `yesterday`, `the day before yesterday`, `last night`, `today`, `tonight`, `tomorrow`,
  `this morning` / `afternoon` / `evening`;
- `last` / `next` / `this` (also `this past`, `this coming`) + `week`, `month`, `year`, `weekend` or
  a weekday (`last Friday`);
- `N days|weeks|months|years ago`, N a numeral, `a`/`an` or a number word up to twelve.

Each resolves to a day (`7 May 2023`), a week (`week of 1 May 2023`, its Monday), a weekend
(`weekend of 6 May 2023`, its Saturday; dateparser knows no weekends, so these are computed here:
`this weekend` is the one under way or coming, `last`/`next` the one before/after it), a month (`April 2023`) or a year (`2022`).

Left out on purpose, because they are vague or often not relative at all: a bare weekday
("Friday": past or future?), `the other day`, `a few days ago`, `years ago`, seasons, `in N days`
(a duration as often as a date: "I ran 5k in two weeks"), a phrase after `the`/`every`/`each`/`a`
and other determiners ("the last week of June", "every next month"), and one followed by `of`
("last week of school"). `next time`, `last time` and the like never match. A missing or
unreadable session date (see `memory.filters.parse_session_date`) grounds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from .errors import MissingDependencyError
from .filters import parse_session_date

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve")
_UNITS = ("day", "week", "month", "year")

# Granularity of a phrase, by its last word (what the resolved date is rounded to).
_DAY, _WEEK, _WEEKEND, _MONTH, _YEAR = "day", "week", "weekend", "month", "year"

_PHRASE = re.compile(
    r"(?<![\w'-])(?:"
    r"(?P<day>(?:the\s+day\s+before\s+)?yesterday|last\s+night|today|tonight|tomorrow"
    r"|this\s+(?:morning|afternoon|evening))"
    r"|(?P<rel>(?:last|next|this\s+past|this\s+coming|this)\s+"
    r"(?P<what>week|month|year|weekend|" + "|".join(_WEEKDAYS) + r"))"
    r"|(?P<ago>(?P<n>\d{1,3}|" + "|".join(_NUMBERS) + r")\s+(?P<unit>" + "|".join(_UNITS) + r")s?\s+ago)"
    r")(?![\w-])",
    re.IGNORECASE,
)
# A determiner just before the phrase makes it non-relative ("the last week of June", "every next month").
_BEFORE = re.compile(r"(?:\b(?:the|every|each|a|an|per|that|which|my|your|his|her|our|their))\s+$", re.IGNORECASE)
_AFTER_OF = re.compile(r"\s+of\b", re.IGNORECASE)


@dataclass(frozen=True)
class TimeNote:
    """One grounded expression: the phrase as written, its span in the text, and what it resolves
    to in a compact human form (`7 May 2023`, `week of 1 May 2023`, `April 2023`, `2022`)."""

    phrase: str
    start: int
    end: int
    resolved: str

    def __str__(self) -> str:
        return f"{' '.join(self.phrase.lower().split())} = {self.resolved}"


def ground(text: str, session_date: str | None) -> list[TimeNote]:
    """The relative time expressions of `text` resolved against `session_date` (free text, read by
    `parse_session_date`), in text order. [] when the date is missing or unreadable, or nothing of
    the set (see the module's docstring) occurs."""
    if not isinstance(text, str) or not text:
        return []
    base = parse_session_date(session_date)
    if base is None:
        return []
    notes = []
    for m in _PHRASE.finditer(text):
        if _BEFORE.search(text, max(0, m.start() - 16), m.start()) or _AFTER_OF.match(text, m.end()):
            continue
        resolved = _resolve(m, base)
        if resolved is not None:
            notes.append(TimeNote(m.group(0), m.start(), m.end(), resolved))
    return notes


def notes_text(notes: Iterable[TimeNote]) -> str | None:
    """The notes as stored and shown: `yesterday = 7 May 2023; last week = week of 1 May 2023`
    (each distinct note once, in text order); None when there are none."""
    seen: dict[str, None] = {}
    for n in notes:
        seen.setdefault(str(n))
    return "; ".join(seen) or None


def _resolve(m: re.Match[str], base: date) -> str | None:
    """The phrase's day rounded to its granularity, or None when dateparser cannot read it."""
    phrase = " ".join(m.group(0).lower().split())
    if m.group("day") is not None:
        if phrase.startswith("this "):
            phrase = "today"
        kind = _DAY
    elif m.group("rel") is not None:
        what = m.group("what").lower()
        if what == "weekend":  # dateparser knows no weekends
            which = "this" if phrase.startswith("this coming") else phrase.replace("this past", "last").split()[0]
            return _format(_weekend(which, base), _WEEKEND)
        phrase = phrase.replace("this past", "last").replace("this coming", "next")
        kind = {"week": _WEEK, "month": _MONTH, "year": _YEAR}.get(what, _DAY)
    else:
        n = m.group("n").lower()
        if n in ("a", "an"):
            phrase = phrase.replace(n, "1", 1)
        kind = {"day": _DAY, "week": _WEEK, "month": _MONTH, "year": _YEAR}[m.group("unit").lower()]
    day = _parse(phrase, base)
    return None if day is None else _format(day, kind)


@lru_cache(maxsize=4096)
def _parse(phrase: str, base: date) -> date | None:
    parser = _dateparser()
    found = parser.parse(phrase, languages=["en"], settings={
        "RELATIVE_BASE": datetime(base.year, base.month, base.day, 12),
        "PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": False})
    return None if found is None else found.date()


def _weekend(which: str, base: date) -> date:
    """The Saturday of `this` weekend (the one under way on a Saturday or Sunday, else the coming
    one), of the `last` one before it, or of the `next` one after it (as `next week` is the week
    after this one)."""
    this = base - timedelta(days=base.weekday() - 5) if base.weekday() >= 5 else base + timedelta(days=5 - base.weekday())
    return this + timedelta(days={"last": -7, "this": 0, "next": 7}[which])


def _format(day: date, kind: str) -> str:
    if kind == _WEEK:
        monday = day - timedelta(days=day.weekday())
        return f"week of {_day_text(monday)}"
    if kind == _WEEKEND:
        return f"weekend of {_day_text(day)}"
    if kind == _MONTH:
        return f"{day:%B} {day.year}"
    if kind == _YEAR:
        return str(day.year)
    return _day_text(day)


def _day_text(day: date) -> str:
    return f"{day.day} {day:%B} {day.year}"


def _dateparser():  # the module, imported on first use
    try:
        import dateparser
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "temporal grounding needs dateparser: pip install 'dateparser>=1.2,<2' (or turn it off: "
            "Memory(temporal=False), qrmem ingest --no-temporal)") from None
    return dateparser


"""Temporal grounding: relative time expressions resolved against the session date at ingest
(`memory.temporal`), stored beside each chunk (`chunks.time_notes`, migration m005), shown to the
reranker and the generator; on real SQLite files (and PostgreSQL with $QRMEM_TEST_POSTGRES_URL)."""

from __future__ import annotations

import pytest

from memory.temporal import TimeNote, ground, notes_text

LOCOMO_DATE = "1:56 pm on 8 May, 2023"  # a Monday


# -- the pure function ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "notes"), [
    ("I went to a support group yesterday.", "yesterday = 7 May 2023"),
    ("Yesterday was great", "yesterday = 7 May 2023"),
    ("the day before yesterday we met", "the day before yesterday = 6 May 2023"),
    ("Last night I read.", "last night = 7 May 2023"),
    ("I'm painting today", "today = 8 May 2023"),
    ("Come over tonight!", "tonight = 8 May 2023"),
    ("See you tomorrow.", "tomorrow = 9 May 2023"),
    ("Last week I ran a charity race.", "last week = week of 1 May 2023"),
    ("next week is busy", "next week = week of 15 May 2023"),
    ("this week", "this week = week of 8 May 2023"),
    ("I got it last month", "last month = April 2023"),
    ("We're moving next month.", "next month = June 2023"),
    ("last year's festival", "last year = 2022"),
    ("Next year I'll try again", "next year = 2024"),
    ("We went camping last weekend", "last weekend = weekend of 6 May 2023"),
    ("this weekend", "this weekend = weekend of 13 May 2023"),
    ("this coming weekend", "this coming weekend = weekend of 13 May 2023"),
    ("this past weekend", "this past weekend = weekend of 6 May 2023"),
    ("next weekend", "next weekend = weekend of 20 May 2023"),
    ("last Friday I went to a concert", "last friday = 5 May 2023"),
    ("this past Saturday", "this past saturday = 6 May 2023"),
    ("I adopted him 3 days ago", "3 days ago = 5 May 2023"),
    ("two weeks ago", "two weeks ago = week of 24 April 2023"),
    ("a month ago", "a month ago = April 2023"),
    ("I started about five years ago", "five years ago = 2018"),
    ("a year ago", "a year ago = 2022"),
    ("Yesterday, and yesterday again, then last week",
     "yesterday = 7 May 2023; last week = week of 1 May 2023"),
])
def test_phrases_ground_against_the_session_date(text: str, notes: str) -> None:
    assert notes_text(ground(text, LOCOMO_DATE)) == notes


@pytest.mark.parametrize("text", [
    "I'll see you next time!", "Last time we spoke about dogs.", "That was the last one.",
    "The last week of June was hot.", "Every next month we meet.", "Last week of school was fun.",
    "I met her the other day.", "A few days ago I baked.", "Years ago I lived there.",
    "On Friday I swim.", "I ran 5k in two weeks.", "See you in a few days.", "last summer was fun",
    "next-week plans", "yesterdays", "weekday schedules", "my last week's pay", "",
])
def test_vague_or_non_relative_phrases_ground_nothing(text: str) -> None:
    assert ground(text, LOCOMO_DATE) == []


@pytest.mark.parametrize("date", [None, "", "last Tuesday", "05/08/2023", "31 February 2023", "soon", 42])
def test_a_missing_or_unreadable_session_date_grounds_nothing(date) -> None:
    assert ground("I went there yesterday and last week.", date) == []


def test_notes_carry_the_phrase_and_its_span() -> None:
    text = "Hi! Yesterday I saw Ana; last Friday too."
    notes = ground(text, "2023-05-08")
    assert notes == [TimeNote("Yesterday", 4, 13, "7 May 2023"), TimeNote("last Friday", 25, 36, "5 May 2023")]
    assert [text[n.start:n.end] for n in notes] == ["Yesterday", "last Friday"]
    assert str(notes[1]) == "last friday = 5 May 2023" and notes_text([]) is None


def test_weekends_and_weeks_turn_over_at_the_right_days() -> None:
    sunday = "3 March 2024"
    assert notes_text(ground("last weekend, this weekend", sunday)) == (
        "last weekend = weekend of 24 February 2024; this weekend = weekend of 2 March 2024")
    assert notes_text(ground("last week", "January 2, 2023")) == "last week = week of 26 December 2022"
    assert notes_text(ground("last month", "15 January 2024")) == "last month = December 2023"

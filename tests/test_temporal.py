"""Temporal grounding: relative time expressions resolved against the session date at ingest
(`memory.temporal`), stored beside each chunk (`chunks.time_notes`, migration m005), shown to the
reranker and the generator; on real SQLite files (and PostgreSQL with $QRMEM_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from agent.agent import memory_block
from memory import HashingEmbedder, Memory, Reranker
from memory.retrieval import index_text
from memory.temporal import TimeNote, ground, notes_text
from qrmem.cli import app
from store import ChunkIn, InputError, SessionIn, Store, TurnChunker, resolve_url
from store import schema as current
from store.migrations import INITIAL_TABLES, MIGRATIONS, initial_metadata

LOCOMO_DATE = "1:56 pm on 8 May, 2023"  # a Monday
runner = CliRunner()


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


# -- stored at ingest, shown to the reranker and the generator ---------------------------------------

TURNS = [{"speaker": "caroline", "text": "I went to a LGBTQ support group yesterday."},
         {"speaker": "melanie", "text": "Great! See you next time."},
         {"speaker": "caroline", "text": "Last week I painted a lake sunrise."}]


class Recording(Reranker):
    """A real reranker that keeps the contexts it was shown and keeps the first-stage order."""

    def __init__(self) -> None:
        self.contexts: list[list[str | None] | None] = []

    def score(self, query, docs, *, contexts=None, summary=None):
        self.contexts.append(None if contexts is None else list(contexts))
        return [float(-i) for i in range(len(docs))]


def test_notes_are_stored_at_ingest_and_shown_to_the_reranker_and_generator(db: str) -> None:
    rec = Recording()
    mem = Memory(db, embedder=HashingEmbedder(64), reranker=rec)
    mem.add_session("caro", TURNS, session_id="s1", date=LOCOMO_DATE)
    chunks = {c.text: c.time_notes for c in Store(db).chunks("caro")}
    assert chunks == {"caroline: I went to a LGBTQ support group yesterday.": "yesterday = 7 May 2023",
                      "melanie: Great! See you next time.": None,
                      "caroline: Last week I painted a lake sunrise.": "last week = week of 1 May 2023"}
    first = mem.search("caro", "support group", k=3)
    assert {h.text: h.time_notes for h in first} == chunks
    reranked = mem.search("caro", "support group", k=3, rerank=True, rerank_k=3)
    assert rec.contexts[-1] == [LOCOMO_DATE + (f" ({h.time_notes})" if h.time_notes else "") for h in first]
    assert [h.time_notes for h in reranked] == [h.time_notes for h in first]
    block = memory_block(reranked).splitlines()
    top = next(i for i, h in enumerate(reranked) if "support group" in h.text)
    assert block[top] == (f"[{LOCOMO_DATE}] caroline: I went to a LGBTQ support group yesterday. "
                          "(yesterday = 7 May 2023)")
    assert all("(" not in line for line, h in zip(block, reranked, strict=True) if h.time_notes is None)
    assert mem.store.check().ok


def test_grounding_can_be_turned_off_and_undated_sessions_get_none(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64), temporal=False)
    mem.add_session("off", TURNS, session_id="s1", date=LOCOMO_DATE)
    assert [c.time_notes for c in mem.store.chunks("off")] == [None, None, None]
    on = Memory(db, embedder=HashingEmbedder(64))
    on.add_session("undated", TURNS, session_id="s1")
    on.add_session("undated", TURNS, session_id="s2", date="last Tuesday")
    assert {c.time_notes for c in on.store.chunks("undated")} == {None}
    with pytest.raises(InputError, match="temporal must be True or False"):
        Memory(db, temporal="yes")  # type: ignore[arg-type]


def test_window_chunks_ground_every_turn_they_cover(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64), chunker="window:3:0")
    mem.add_session("w", TURNS, session_id="s1", date=LOCOMO_DATE)
    [chunk] = mem.store.chunks("w")
    assert chunk.time_notes == "yesterday = 7 May 2023; last week = week of 1 May 2023"


def test_bad_notes_are_refused_with_nothing_written(db: str) -> None:
    store = Store(db)
    s = SessionIn(user_id="u", session_id="s", date=LOCOMO_DATE, turns=TURNS[:1])
    [chunk] = TurnChunker().chunk(s.turns)
    for bad in ("", "  ", 5):
        with pytest.raises(InputError, match="time notes must be text"):
            store.add_session(s, [ChunkIn(chunk.text, chunk.turn_positions, bad)], chunker="turn")
    assert store.counts().sessions == 0


def test_export_then_import_recomputes_the_same_notes(db: str, tmp_path: Path) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64))
    mem.add_session("caro", TURNS, session_id="s1", date=LOCOMO_DATE)
    exported = mem.export_user("caro")
    assert "time_notes" not in json.dumps(exported)  # derived data: recomputed on import
    again = Memory(str(tmp_path / "other.db"), embedder=HashingEmbedder(64))
    again.import_user(exported)
    assert [c.time_notes for c in again.store.chunks("caro")] == [c.time_notes for c in mem.store.chunks("caro")]
    assert mem.import_user(exported).count("unchanged") == 1  # own export: nothing written


def test_cli_ingest_no_temporal_and_search_json(tmp_path: Path) -> None:
    data = tmp_path / "chat.json"
    data.write_text(json.dumps({"user_id": "caro", "sessions": [
        {"session_id": "s1", "date": LOCOMO_DATE, "turns": TURNS}]}))
    on, off = str(tmp_path / "on.db"), str(tmp_path / "off.db")
    assert runner.invoke(app, ["ingest", "--db", on, str(data), "--embedder", "hashing:64"]).exit_code == 0
    res = runner.invoke(app, ["ingest", "--db", off, str(data), "--embedder", "hashing:64", "--no-temporal"])
    assert res.exit_code == 0, res.output
    found = {}
    for db in (on, off):
        res = runner.invoke(app, ["search", "--db", db, "--user", "caro", "--json", "--k", "1", "support group"])
        assert res.exit_code == 0, res.output
        found[db] = json.loads(res.stdout)[0]
    assert found[on]["time_notes"] == "yesterday = 7 May 2023" and found[off]["time_notes"] is None
    assert runner.invoke(app, ["check", "--db", on]).exit_code == 0


# -- the migration -----------------------------------------------------------------------------------

def test_m001_is_frozen_as_it_was() -> None:
    """m001 creates the initial tables as they were: the latest schema minus what later migrations
    added (m005: chunks.time_notes), column for column."""
    frozen = initial_metadata()
    assert tuple(frozen.tables) == INITIAL_TABLES
    added_later = {("chunks", "time_notes")}
    for name in INITIAL_TABLES:
        now = [(c.name, type(c.type).__name__, c.nullable, c.primary_key) for c in current.metadata.tables[name].c
               if (name, c.name) not in added_later]
        then = [(c.name, type(c.type).__name__, c.nullable, c.primary_key) for c in frozen.tables[name].c]
        assert then == now, name


def test_an_m004_store_migrates_and_keeps_its_data(db: str) -> None:
    """A store written by qrmem before m005 (its tables, migration records and rows as they were
    then) opens, gains the column with NULL for its old chunks, passes `check`, is searched as
    before, and grounds what is ingested after."""
    old_text = "caroline: I went to a LGBTQ support group yesterday."
    frozen = initial_metadata().tables
    now = datetime.now(UTC)
    engine = sa.create_engine(resolve_url(db))
    with engine.begin() as conn:  # what m001..m004 created, and one session written by that qrmem
        initial_metadata().create_all(conn)
        for table in (current.schema_migrations, current.settings, current.chunk_changes, current.api_keys):
            table.create(conn)
        conn.execute(current.schema_migrations.insert(), [
            {"name": name, "applied_at": now} for name, _ in MIGRATIONS[:4]])
        conn.execute(frozen["users"].insert().values(id=1, external_id="caro", revision=1, created_at=now))
        conn.execute(frozen["sessions"].insert().values(
            id=1, user_id=1, external_id="before", date_text=LOCOMO_DATE, position=0, content_hash="0" * 64,
            chunker="turn", created_at=now))
        conn.execute(frozen["turns"].insert().values(id=1, session_id=1, position=0, speaker="caroline",
                                                     text=TURNS[0]["text"], external_id="before:1"))
        conn.execute(frozen["chunks"].insert().values(id=1, session_id=1, user_id=1, position=0, text=old_text))
        conn.execute(frozen["chunk_turns"].insert().values(chunk_id=1, turn_id=1))
        vector = HashingEmbedder(64).embed([index_text(text=old_text, date=LOCOMO_DATE)])[0]
        conn.execute(frozen["embeddings"].insert().values(chunk_id=1, model="hashing:64", dim=64,
                                                          vector=vector.astype("<f4").tobytes()))
    engine.dispose()
    mem = Memory(db, embedder=HashingEmbedder(64))
    assert mem.store.chunks("caro")[0].time_notes is None  # opening migrated; old chunks have no notes
    with mem.store.engine.connect() as conn:
        assert list(conn.scalars(sa.text("SELECT name FROM schema_migrations ORDER BY name"))) == [
            name for name, _ in MIGRATIONS]
        assert "time_notes" in {c["name"] for c in sa.inspect(conn).get_columns("chunks")}
    report = mem.store.check()
    assert report.ok and report.problems == [] and report.warnings == [], report
    mem.add_session("caro", TURNS[:1], session_id="after", date="2 June 2023")
    hits = mem.search("caro", "support group yesterday", k=2)
    assert {h.session_id: (h.text, h.time_notes) for h in hits} == {
        "before": (old_text, None), "after": (old_text, "yesterday = 1 June 2023")}
    assert mem.store.check().ok

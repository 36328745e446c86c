"""The store on real SQLite files: round trips, atomicity, idempotence, cascades, migrations."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import text

from store import (
    InputError,
    NotFoundError,
    SessionConflictError,
    SessionIn,
    Store,
    StoreError,
    TurnChunker,
    WindowChunker,
    make_chunker,
)
from store.migrations import MIGRATIONS


def session(user: str = "u1", sid: str = "s1", n: int = 3, date: str | None = "1 May 2024",
            word: str = "hello") -> SessionIn:
    turns = [{"speaker": "A" if i % 2 == 0 else "B", "text": f"{word} {i}", "id": f"{sid}-t{i}"}
             for i in range(n)]
    return SessionIn(user_id=user, session_id=sid, date=date, turns=turns)


def add(store: Store, s: SessionIn, vectors: np.ndarray | None = None, **kw):
    chunks = TurnChunker().chunk(s.turns)
    if vectors is None:
        vectors = np.ones((len(chunks), 4), dtype=np.float32)
    return store.add_session(s, chunks, chunker="turn", embedding_model="m", vectors=vectors, **kw)


def test_round_trip_through_a_real_file(db: str) -> None:
    store = Store(db)
    res = add(store, session(n=3))
    assert (res.status, res.turns, res.chunks) == ("added", 3, 3)
    store.close()

    again = Store(db)  # a new engine on the same file
    assert again.counts().as_dict() == {"users": 1, "sessions": 1, "turns": 3, "chunks": 3,
                                        "embeddings": 3, "summaries": 0}
    turns = again.turns("u1", "s1")
    assert [(t.speaker, t.text, t.id) for t in turns] == [
        ("A", "hello 0", "s1-t0"), ("B", "hello 1", "s1-t1"), ("A", "hello 2", "s1-t2")]
    chunks = again.chunks("u1")
    assert [c.text for c in chunks] == ["A: hello 0", "B: hello 1", "A: hello 2"]
    assert [c.turn_ids for c in chunks] == [("s1-t0",), ("s1-t1",), ("s1-t2",)]
    assert chunks[0].session_date == "1 May 2024"
    vecs = again.embeddings("u1", "m")
    assert sorted(vecs) == [c.chunk_id for c in chunks]
    np.testing.assert_array_equal(vecs[chunks[0].chunk_id], np.ones(4, dtype=np.float32))


def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_db: str) -> None:
    store = Store(sqlite_db)
    add(store, session())
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_missing_turn_ids_get_session_scoped_defaults(db: str) -> None:
    store = Store(db)
    s = SessionIn(user_id="u", session_id="chat-1",
                  turns=[{"speaker": "A", "text": "x"}, {"speaker": "B", "text": "y"}])
    add(store, s)
    assert [c.turn_ids for c in store.chunks("u")] == [("chat-1:1",), ("chat-1:2",)]


def test_reingest_identical_is_a_noop_and_different_is_a_conflict(db: str) -> None:
    store = Store(db)
    add(store, session())
    before = store.counts()
    assert add(store, session()).status == "unchanged"
    assert store.counts() == before
    with pytest.raises(SessionConflictError, match="'s1' of user 'u1'.*--replace"):
        add(store, session(word="changed"))
    assert store.turns("u1", "s1")[0].text == "hello 0"
    res = add(store, session(word="changed", n=2), replace=True)
    assert res.status == "replaced"
    assert [t.text for t in store.turns("u1", "s1")] == ["changed 0", "changed 1"]
    assert store.counts().turns == 2 and store.counts().embeddings == 2


def test_failure_inside_the_transaction_rolls_back_everything(db: str) -> None:
    store = Store(db)
    add(store, session(sid="s0"))
    before = store.counts()
    bad = np.ones((3, 4), dtype=np.float32)
    bad[2, 1] = np.nan  # detected while embeddings are inserted, after turns and chunks were written
    with pytest.raises(InputError, match="non-finite"):
        add(store, session(sid="s1"), vectors=bad)
    assert store.counts() == before
    assert [s.session_id for s in store.sessions("u1")] == ["s0"]


def test_bad_chunk_and_vector_shapes_are_rejected_before_writing(db: str) -> None:
    store = Store(db)
    s = session()
    with pytest.raises(InputError, match="one vector per chunk"):
        add(store, s, vectors=np.ones((2, 4), dtype=np.float32))
    from store import ChunkIn
    with pytest.raises(InputError, match="outside"):
        store.add_session(s, [ChunkIn("x", (5,))], chunker="turn")
    assert store.counts().sessions == 0


def test_delete_session_and_user_cascade(db: str) -> None:
    store = Store(db)
    add(store, session(sid="s1"))
    add(store, session(sid="s2"))
    add(store, session(user="u2", sid="s1"))
    store.add_summary("u1", "session", "about hellos", session_id="s1")
    store.add_summary("u1", "conversation", "hellos all along")
    store.delete_session("u1", "s1")
    c = store.counts()
    assert (c.sessions, c.turns, c.chunks, c.embeddings, c.summaries) == (2, 6, 6, 6, 1)
    store.delete_user("u1")
    c = store.counts()
    assert (c.users, c.sessions, c.turns, c.chunks, c.embeddings, c.summaries) == (1, 1, 3, 3, 3, 0)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM chunk_turns")).scalar() == 3
    with pytest.raises(NotFoundError, match="no user 'u1'"):
        store.delete_user("u1")
    with pytest.raises(NotFoundError, match="no session 'nope'"):
        store.delete_session("u2", "nope")


def test_summaries_are_versioned(db: str) -> None:
    store = Store(db)
    add(store, session())
    store.add_summary("u1", "conversation", "v1")
    second = store.add_summary("u1", "conversation", "v2")
    assert second.version == 2
    assert [s.text for s in store.summaries("u1")] == ["v2"]
    assert [s.text for s in store.summaries("u1", latest=False)] == ["v1", "v2"]
    with pytest.raises(InputError):
        store.add_summary("u1", "session", "no session id")


def test_users_are_isolated_in_chunks_and_embeddings(db: str) -> None:
    store = Store(db)
    add(store, session(user="alice", word="secret"))
    add(store, session(user="bob", word="public"))
    assert all("public" in c.text for c in store.chunks("bob"))
    bob_ids = {c.chunk_id for c in store.chunks("bob")}
    assert set(store.embeddings("bob", "m")) == bob_ids
    assert store.chunks("nobody") == []


def test_session_positions_follow_arrival_unless_given(db: str) -> None:
    store = Store(db)
    add(store, SessionIn(user_id="u1", session_id="b", position=10, turns=[{"speaker": "A", "text": "x"}]))
    add(store, session(sid="a"))  # arrives next: after the last position
    s = SessionIn(user_id="u1", session_id="z", position=2, turns=[{"speaker": "A", "text": "x"}])
    add(store, s)
    assert [(s.session_id, s.position) for s in store.sessions("u1")] == [("z", 2), ("b", 10), ("a", 11)]
    with pytest.raises(ValueError, match="position must be >= 0"):  # positions are never negative
        SessionIn(user_id="u1", session_id="y", position=-1, turns=[{"speaker": "A", "text": "x"}])


def test_migrations_are_recorded_once(db: str) -> None:
    Store(db).counts()
    store = Store(db)
    store.counts()
    with store.engine.connect() as conn:
        names = list(conn.scalars(sa.text("SELECT name FROM schema_migrations")))
    assert names == [name for name, _ in MIGRATIONS]


def test_a_database_from_a_newer_qrmem_is_refused(db: str) -> None:
    store = Store(db)
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_migrations VALUES ('m999_future', '2030-01-01')"))
    store.close()
    with pytest.raises(StoreError, match="upgrade qrmem"):
        Store(db).counts()


def test_unopenable_paths_raise_store_errors(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store(not_a_db).counts()


def test_window_chunker_records_exact_turns() -> None:
    s = session(n=10)
    chunks = WindowChunker(size=4, overlap=1).chunk(s.turns)
    assert [c.turn_positions for c in chunks] == [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]
    assert chunks[1].text.splitlines() == ["B: hello 3", "A: hello 4", "B: hello 5", "A: hello 6"]
    assert [c.turn_positions for c in WindowChunker(3, 0).chunk(s.turns[:4])] == [(0, 1, 2), (3,)]
    assert make_chunker("window:2:1").spec == "window:2:1"
    with pytest.raises(InputError, match="overlap"):
        make_chunker("window:2:2")
    with pytest.raises(InputError, match="unknown chunker"):
        make_chunker("sentences")


def test_window_chunks_map_to_turn_ids_in_the_store(db: str) -> None:
    store = Store(db)
    s = session(n=5)
    chunks = WindowChunker(3, 1).chunk(s.turns)
    store.add_session(s, chunks, chunker="window:3:1")
    assert [c.turn_ids for c in store.chunks("u1")] == [
        ("s1-t0", "s1-t1", "s1-t2"), ("s1-t2", "s1-t3", "s1-t4")]

"""Incremental per-user indexes: after any sequence of writes (new sessions, replaced ones, deleted
ones, sessions placed earlier in the conversation, another process's writes) a long-lived Memory
answers exactly as a fresh one does, having applied only the changes; the cache keeps a byte budget."""

from __future__ import annotations

import random

import pytest

from memory import HashingEmbedder, Memory
from store import SessionIn, Store
from store.store import CHANGE_WINDOW

WORDS = ("cat kitten miso marathon lisbon october painting sunrise support group caroline melanie "
         "dog hiking tea pottery concert guitar beach camping").split()
QUERIES = ["kitten miso", "marathon in october", "pottery and tea", "camping beach guitar", "support group"]


def _turns(rng: random.Random, n: int) -> list[dict]:
    return [{"speaker": rng.choice(["ana", "ben"]), "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))}
            for _ in range(n)]


def _same_answers(live: Memory, db: str, user: str) -> None:
    fresh = Memory(db, embedder=HashingEmbedder(32))
    for q in QUERIES:
        for mode in ("hybrid", "dense", "bm25"):
            a = [(h.chunk_id, round(h.score, 5)) for h in live.search(user, q, k=7, mode=mode)]
            b = [(h.chunk_id, round(h.score, 5)) for h in fresh.search(user, q, k=7, mode=mode)]
            assert a == b, (q, mode)
        flt = {"session_ids": ["s1", "s3", "s4"]}
        assert [h.chunk_id for h in live.search(user, q, k=5, **flt)] == \
               [h.chunk_id for h in fresh.search(user, q, k=5, **flt)]


@pytest.mark.parametrize("seed", [0, 1])
def test_an_incremental_index_answers_as_a_fresh_one(db: str, seed: int) -> None:
    rng = random.Random(seed)
    live = Memory(db, embedder=HashingEmbedder(32))
    writer = Memory(db, embedder=HashingEmbedder(32))  # another process, in effect
    live.add_sessions([SessionIn(user_id="u", session_id="s1", position=100, date="1 May 2024",
                                 turns=_turns(rng, 6))])
    live.search("u", "cat", k=3)
    index = live.retriever.cache.get("u")
    stored = {"s1"}
    for step in range(14):
        op = rng.choice(["add", "add", "replace", "delete", "earlier", "other"])
        if op == "add" or not stored:
            sid = f"s{len(stored) + step + 2}"
            (writer if op == "other" else live).add_session("u", _turns(rng, rng.randint(1, 5)), session_id=sid)
            stored.add(sid)
        elif op == "replace":
            sid = rng.choice(sorted(stored))
            writer.add_session("u", _turns(rng, rng.randint(1, 4)), session_id=sid, replace=True)
        elif op == "delete" and len(stored) > 1:
            sid = rng.choice(sorted(stored))
            live.delete_session("u", sid)
            stored.discard(sid)
        else:  # a session placed before the others: its chunks belong earlier in the conversation
            sid = f"early{step}"
            writer.add_sessions([SessionIn(user_id="u", session_id=sid, position=50 - step, turns=_turns(rng, 2))])
            stored.add(sid)
        _same_answers(live, db, "u")
    assert live.retriever.cache.get("u") is index  # every change was applied, none reloaded the user


def test_another_process_writes_reach_the_index_incrementally(db: str) -> None:
    a = Memory(db, embedder=HashingEmbedder(32))
    a.add_session("u", [{"speaker": "ana", "text": "my kitten is called Miso"}], session_id="s1")
    assert a.search("u", "kitten")[0].session_id == "s1"
    index = a.retriever.cache.get("u")
    b = Memory(db, embedder=HashingEmbedder(32))
    b.add_session("u", [{"speaker": "ana", "text": "the marathon is in Lisbon"}], session_id="s2")
    assert a.search("u", "marathon lisbon")[0].session_id == "s2"
    b.delete_session("u", "s1")
    assert [h.session_id for h in a.search("u", "kitten miso", k=5)] == ["s2"]
    assert a.retriever.cache.get("u") is index and len(index.chunks) == 2 and index.n_alive == 1
    b.delete_user("u")
    assert a.search("u", "marathon") == [] and a.retriever.cache.get("u") is None


def test_the_change_log_is_bounded(sqlite_db: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    mem.add_session("u", [{"speaker": "a", "text": "one"}], session_id="s")
    for i in range(3):
        mem.add_session("u", [{"speaker": "a", "text": f"version {i}"}], session_id="s", replace=True)
    store = Store(sqlite_db)
    now = store.revision("u")
    changes = store.index_changes("u", now - 3, "hashing:16")
    assert len(changes.added) == 1 and changes.added[0].text == "a: version 2" and not changes.full
    # SQLite gave every new version the id of the one it replaced: the log still says what happened.
    assert changes.removed == [changes.added[0].chunk_id] and set(changes.vectors) == {changes.added[0].chunk_id}
    assert store.index_changes("u", now - CHANGE_WINDOW, "hashing:16").full  # too old: reload in full
    assert store.index_changes("nobody", 0).revision is None


def test_the_index_cache_keeps_its_byte_budget(sqlite_db: str) -> None:
    rng = random.Random(3)
    mem = Memory(sqlite_db, embedder=HashingEmbedder(64))
    for u in ("u1", "u2", "u3"):
        mem.add_session(u, _turns(rng, 40), session_id="s")
    one = Memory(sqlite_db)
    one.search("u1", "kitten", k=2)
    size = one.retriever.cache.nbytes
    small = Memory(sqlite_db, index_cache_bytes=int(size * 1.5))
    for u in ("u1", "u2", "u3", "u1"):
        assert small.search(u, "kitten miso", k=2)
    stats = small.info()["index_cache"]
    assert stats["bytes"] <= stats["budget_bytes"] and stats["users"] == 1 and stats["evictions"] == 3
    assert [h.chunk_id for h in small.search("u2", "tea", k=3)] == [h.chunk_id for h in one.search("u2", "tea", k=3)]


def test_threads_sharing_a_memory_see_every_write(sqlite_db: str) -> None:
    """`qrmem serve` searches from several threads while others write: every search sees a whole,
    current index and the result equals a fresh index's."""
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(5)
    mem = Memory(sqlite_db, embedder=HashingEmbedder(32))
    mem.add_session("u", _turns(rng, 10), session_id="s0")
    batches = [_turns(random.Random(i), 3) for i in range(12)]

    def write(i: int) -> None:
        mem.add_session("u", batches[i], session_id=f"w{i}")

    def search(i: int) -> int:
        return len(mem.search("u", QUERIES[i % len(QUERIES)], k=5))

    with ThreadPoolExecutor(4) as pool:
        writes = [pool.submit(write, i) for i in range(12)]
        searches = [pool.submit(search, i) for i in range(40)]
        assert [w.result() for w in writes] == [None] * 12  # no write raised
        assert all(1 <= s.result() <= 5 for s in searches)
    _same_answers(mem, sqlite_db, "u")
    index = mem.retriever.cache.get("u")
    assert index.n_alive == 10 + 12 * 3 == len(set(index.slot_of))

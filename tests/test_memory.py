"""The Memory facade: first-stage search, caching, isolation, export/import, real MiniLM."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from memory import HashingEmbedder, Memory, index_text, load_embedder, rrf, top_k
from memory.embedders import SentenceTransformerEmbedder
from store import ChunkIn, InputError, SessionConflictError, SessionIn, Store

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"

PETS = [
    {"speaker": "alice", "text": "I spent the weekend repainting the garden fence."},
    {"speaker": "bot", "text": "Sounds like a lot of work."},
    {"speaker": "alice", "text": "My new kitten is called Miso and she loves tuna."},
    {"speaker": "bot", "text": "Miso is a lovely name."},
    {"speaker": "alice", "text": "Next month I am flying to Oslo for a conference on databases."},
]


def test_top_k_and_rrf_are_exact() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, -1.0])
    assert top_k(scores, 3).tolist() == [1, 3, 2]  # ties broken by lower index
    assert top_k(scores, 10).tolist() == [1, 3, 2, 0, 4]
    fused = rrf([np.array([2, 0, 1]), np.array([0, 2])], n=4, k=60)
    assert fused[0] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1] == pytest.approx(1 / 63) and fused[3] == 0.0


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    a = HashingEmbedder(64).embed(["the cat sat", "the cat sat", "dogs bark"])
    np.testing.assert_allclose(a[0], a[1])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert load_embedder("hashing:64").name == "hashing:64"
    assert isinstance(load_embedder("some/model"), SentenceTransformerEmbedder)


def test_each_mode_finds_the_planted_fact(db: str, hashing) -> None:
    mem = Memory(db, embedder=hashing)
    mem.add_session("alice", PETS, session_id="s1", date="2 March 2024")
    for mode in ("bm25", "dense", "hybrid"):
        hits = mem.search("alice", "kitten Miso tuna", k=2, mode=mode)
        assert hits[0].text == "alice: My new kitten is called Miso and she loves tuna.", mode
        assert hits[0].turn_ids == ("s1:3",) and hits[0].session_date == "2 March 2024"
        assert [h.rank for h in hits] == [1, 2] and hits[0].score >= hits[1].score


def test_search_sees_new_writes_and_deletes(db: str, hashing) -> None:
    mem = Memory(db, embedder=hashing)
    mem.add_session("alice", PETS[:2], session_id="s1")
    assert "Oslo" not in mem.search("alice", "Oslo conference", k=1)[0].text
    mem.add_session("alice", PETS[4:], session_id="s2")
    assert "Oslo" in mem.search("alice", "Oslo conference", k=1)[0].text
    # A write through another Memory on the same file is seen too (revision check).
    other = Memory(db, embedder=hashing)
    other.delete_session("alice", "s2")
    assert all("Oslo" not in h.text for h in mem.search("alice", "Oslo conference", k=5))


def test_users_are_isolated(db: str, hashing) -> None:
    mem = Memory(db, embedder=hashing)
    mem.add_session("alice", PETS, session_id="s1")
    mem.add_session("bob", [{"speaker": "bob", "text": "I like trains."}], session_id="s1")
    for mode in ("bm25", "dense", "hybrid"):
        hits = mem.search("bob", "kitten Miso", k=10, mode=mode)
        assert [h.user_id for h in hits] == ["bob"]
    assert mem.search("carol", "anything") == []


def test_bad_search_arguments(db: str, hashing) -> None:
    mem = Memory(db, embedder=hashing)
    with pytest.raises(InputError, match="non-empty"):
        mem.search("alice", "  ")
    with pytest.raises(InputError, match="k must be"):
        mem.search("alice", "x", k=0)
    with pytest.raises(InputError, match="unknown search mode"):
        mem.search("alice", "x", mode="magic")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="text"):
        mem.add_session("alice", [{"speaker": "alice"}])


def test_ingest_is_idempotent_and_conflicts_write_nothing(db: str, hashing, tmp_path: Path) -> None:
    mem = Memory(db, embedder=hashing)
    report = mem.ingest_file(TINY_LOCOMO)
    assert report.count("added") == 5 and report.turns == 20
    again = mem.ingest_file(TINY_LOCOMO)
    assert again.count("unchanged") == 5 and again.turns == 0
    data = json.loads(TINY_LOCOMO.read_text())
    data[1]["conversation"]["session_2"][0]["text"] = "changed"
    data[0]["conversation"]["session_9"] = [{"speaker": "Ana", "text": "new session", "dia_id": "D9:1"}]
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    before = mem.store.counts()
    with pytest.raises(SessionConflictError, match=r"\(tiny-2/session_2\); nothing was written"):
        mem.ingest_file(changed)
    assert mem.store.counts() == before  # the new session_9 was not written either
    assert mem.ingest_file(changed, replace=True).count("replaced") == 1


def test_export_import_round_trip_with_private_file(db: str, hashing, tmp_path: Path) -> None:
    mem = Memory(db, embedder=hashing)
    mem.ingest_file(TINY_LOCOMO)
    mem.store.add_summary("tiny-1", "conversation", "Ana and Ben catch up.")
    out = mem.export_to("tiny-1", tmp_path / "tiny-1.json")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    exported = json.loads(out.read_text())
    assert exported["format"] == "qrmem.v1" and len(exported["sessions"]) == 3
    assert exported["summaries"][0]["text"] == "Ana and Ben catch up."

    fresh = Memory(str(tmp_path / "other.db"), embedder=hashing)
    assert fresh.ingest_file(out).count("added") == 3
    assert fresh.export_user("tiny-1")["sessions"] == exported["sessions"]
    a = [(h.text, h.turn_ids) for h in mem.search("tiny-1", "kitten name", k=3)]
    b = [(h.text, h.turn_ids) for h in fresh.search("tiny-1", "kitten name", k=3)]
    assert a == b


def test_search_never_reembeds_stored_chunks(db: str) -> None:
    class Counting(HashingEmbedder):
        calls: list[int] = []

        def embed_batch(self, texts):
            self.calls.append(len(texts))
            return super().embed_batch(texts)

    emb = Counting(64)
    mem = Memory(db, embedder=emb)
    mem.ingest_file(TINY_LOCOMO)
    emb.calls.clear()
    for _ in range(3):
        mem.search("tiny-1", "kitten", mode="dense")
    assert emb.calls == [1, 1, 1]  # only the query is embedded


def test_searching_with_another_embedder_writes_nothing_until_reindex(db: str) -> None:
    Memory(db, embedder=HashingEmbedder(32)).ingest_file(TINY_LOCOMO)
    before = Store(db).counts()
    other = Memory(db, embedder=HashingEmbedder(16))
    with pytest.raises(InputError, match=r"12 of the 12 chunks of user 'tiny-1' have no vector from the "
                                         r"embedder 'hashing:16' \(this store keeps 'hashing:32'\).*qrmem reindex"):
        other.search("tiny-1", "kitten", mode="dense")
    assert Store(db).counts() == before and Store(db).embedding_models() == {"hashing:32": 20}
    assert other.search("tiny-1", "kitten", mode="bm25")  # BM25 needs no vectors
    assert Memory(db).embedder.name == "hashing:32"  # the store's embedder did not change
    report = other.reindex("tiny-1")  # asked for: stores the vectors
    assert (report.embedded, report.users, report.default) == (12, 1, None)
    assert Store(db).embedding_models() == {"hashing:32": 20, "hashing:16": 12}
    assert other.search("tiny-1", "kitten", mode="dense")
    assert Memory(db).embedder.name == "hashing:32"
    with pytest.raises(InputError, match="8 chunks have no vector from 'hashing:16'"):
        other.reindex("tiny-1", set_default=True)  # tiny-2 has none yet
    assert other.reindex(set_default=True).default == "hashing:16"
    assert Memory(db).embedder.name == "hashing:16" and Store(db).default_embedder() == "hashing:16"


def test_the_stores_embedder_is_recorded_once_and_enforced(db: str) -> None:
    mem = Memory(db, embedder="hashing:48")
    mem.add_session("u", PETS[:1], session_id="s1")
    assert Memory(db).embedder.name == "hashing:48" and Store(db).setting("embedder") == "hashing:48"
    before = Store(db).counts()
    with pytest.raises(InputError, match=r"keeps vectors from the embedder 'hashing:48', not 'hashing:24'.*"
                                         r"nothing was written"):
        Memory(db, embedder="hashing:24").add_session("u", PETS[1:2], session_id="s2")
    store = Store(db)  # the store refuses too, inside its transaction (a racing writer gets no further)
    with pytest.raises(InputError, match="not 'hashing:24'"):
        store.add_session(SessionIn(user_id="u", session_id="s3", turns=PETS[1:2]),
                          [ChunkIn("u: x", (0,))], chunker="turn", embedding_model="hashing:24",
                          vectors=np.ones((1, 24), dtype=np.float32))
    assert Store(db).counts() == before


def test_a_model_name_stored_in_the_database_is_not_loaded_unasked(db: str, tmp_path) -> None:
    """The store's embedder name is data: a hub id or a path found there is not fetched or opened."""
    for name in ("someone/evil-model", str(tmp_path / "a-model-dir"), "sentence-transformers:x/y"):
        store = Store(str(tmp_path / f"{abs(hash(name))}.db"))
        store.add_session(SessionIn(user_id="u", session_id="s", turns=PETS[:1]), [ChunkIn("u: x", (0,))],
                          chunker="turn", embedding_model=name, vectors=np.ones((1, 4), dtype=np.float32))
        with pytest.raises(InputError, match=r"not an offline or registered model; to load it, name it "
                                             r"yourself: --embedder"):
            Memory(store).search("u", "cat")
    assert Memory(db, embedder="hashing:8").add_session("u", PETS[:1]).status == "added"
    assert Memory(db).embedder.name == "hashing:8"  # registered backends load from the store's record


def test_search_on_a_read_only_store_works_and_never_writes(sqlite_db: str) -> None:
    Memory(sqlite_db, embedder=HashingEmbedder(32)).ingest_file(TINY_LOCOMO)
    ro = Memory(f"sqlite:///file:{sqlite_db}?mode=ro&uri=true")
    assert ro.search("tiny-1", "kitten", k=2)[0].session_id == "session_1"
    with pytest.raises(InputError, match="qrmem reindex --embedder hashing:16"):
        Memory(f"sqlite:///file:{sqlite_db}?mode=ro&uri=true", embedder="hashing:16").search("tiny-1", "kitten")


def test_index_text_carries_the_session_date() -> None:
    assert index_text(text="A: hi", date="3 May 2024") == "[3 May 2024] A: hi"
    assert index_text(text="A: hi") == "A: hi"


def test_real_minilm_returns_the_planted_fact_first(db: str, minilm) -> None:
    mem = Memory(db, embedder=minilm)
    filler = [{"speaker": "alice" if i % 2 else "bot", "text": t} for i, t in enumerate([
        "The weather has been rainy all week.", "I watched a documentary about volcanoes.",
        "My brother is learning to play the violin.", "We had pasta with mushrooms for dinner.",
        "Traffic on the bridge was terrible this morning.", "I need to renew my passport soon."])]
    mem.add_session("alice", filler[:3], session_id="s1", date="1 May 2024")
    mem.add_session("alice", [*filler[3:], PETS[2]], session_id="s2", date="9 May 2024")
    hits = mem.search("alice", "What is the name of my cat?", k=3, mode="dense")
    assert hits[0].text == "alice: My new kitten is called Miso and she loves tuna."
    assert hits[0].session_id == "s2" and hits[0].turn_ids == ("s2:4",)
    assert mem.store.embedding_models() == {"all-MiniLM-L6-v2": 7}


def test_unknown_model_is_a_clear_error(db: str) -> None:
    from memory import ModelLoadError

    mem = Memory(db, embedder="/no/such/model-dir")
    with pytest.raises(ModelLoadError, match="cannot load sentence-transformers model '/no/such/model-dir'"):
        mem.add_session("alice", PETS[:1])
    assert Store(db).counts().sessions == 0

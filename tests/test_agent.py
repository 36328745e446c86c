"""MemoryAgent: retrieve -> rerank -> answer from the top-n -> write back -> summaries at session end."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import MemoryAgent
from memory import HashingEmbedder, Memory, Reranker, Summarizer
from memory.generators import Generator
from store import InputError

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"


class Echo(Generator):
    """A fake LM that answers with the first memory line it was given (or a fixed summary)."""

    name = "echo"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, messages, options) -> str:
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        if prompt.startswith(("Summarize", "Update")):
            return "summary"
        return "I recall: " + prompt.split("\n")[1]


class ReverseRanker(Reranker):
    """Reverses the first-stage order, so the test can tell reranked results apart."""

    def score(self, query, docs, *, contexts=None, summary=None):
        return [float(i) for i in range(len(docs))]


def test_chat_answers_from_reranked_memory_and_writes_back(db: str) -> None:
    gen = Echo()
    mem = Memory(db, embedder=HashingEmbedder(64), reranker=ReverseRanker(), summarizer=Summarizer(gen))
    mem.ingest_file(TINY_LOCOMO)
    agent = MemoryAgent(mem, gen, rerank_k=4, top_n=2)
    first = mem.search("tiny-1", "kitten Miso name", k=4)
    answer = agent.chat("tiny-1", "kitten Miso name")
    assert [c.text for c in answer.chunks] == [first[3].text, first[2].text]  # reranked, top-2
    assert answer.text == f"I recall: [{first[3].session_date}] {first[3].text}"
    assert set(answer.seconds) == {"retrieve", "generate", "write"}
    # The exchange is memory at once: the next search finds it.
    hits = mem.search("tiny-1", "I recall", k=1, mode="bm25")
    assert hits[0].session_id == answer.session_id and hits[0].turn_ids == (f"{answer.session_id}:2",)
    second = agent.chat("tiny-1", "anything else?")
    assert second.session_id == answer.session_id
    assert [t.speaker for t in mem.store.turns("tiny-1", answer.session_id)] == [
        "tiny-1", "assistant", "tiny-1", "assistant"]
    before = len(mem.summaries("tiny-1"))
    assert agent.end_session("tiny-1") == answer.session_id
    kinds = [(s.kind, s.session_id) for s in mem.summaries("tiny-1")]
    assert ("session", answer.session_id) in kinds and len(kinds) == before + 1


def test_memory_persists_across_agents(db: str) -> None:
    gen = Echo()
    agent = MemoryAgent(Memory(db, embedder=HashingEmbedder(64)), gen, rerank=False)
    first = agent.chat("zoe", "My favourite colour is teal.")
    assert agent.end_session("zoe") == first.session_id
    later = MemoryAgent(Memory(db, embedder=HashingEmbedder(64)), gen, rerank=False, top_n=1)
    answer = later.chat("zoe", "favourite colour teal")
    assert answer.chunks[0].text == "zoe: My favourite colour is teal."
    assert answer.chunks[0].session_id == first.session_id != answer.session_id
    with pytest.raises(InputError, match="non-empty"):
        later.chat("zoe", " ")
    with pytest.raises(InputError, match="top_n"):
        MemoryAgent(Memory(db, embedder=HashingEmbedder(64)), gen, rerank_k=2, top_n=3)


def test_qrmem_chat_repl_keeps_memory_between_runs(db: str, chat_server) -> None:
    from typer.testing import CliRunner

    from qrmem.cli import app

    runner = CliRunner()
    args = ["chat", "--db", db, "--user", "ann", "--generator", "openai:m", "--base-url", chat_server["url"],
            "--no-rerank", "--no-summarize"]
    res = runner.invoke(app, args, input="My cat is called Miso.\n/end\n")
    assert res.exit_code == 0, res.output
    assert "bot> Hello!" in res.stdout and "saved session chat-" in res.stdout
    res = runner.invoke(app, args, input="What is my cat called?\n")  # EOF ends the session too
    assert res.exit_code == 0, res.output
    assert "(memories: chat-" in res.stdout  # the first run's turns were retrieved
    sent = chat_server["requests"][-1]["body"]["messages"][1]["content"]
    assert "ann: My cat is called Miso." in sent

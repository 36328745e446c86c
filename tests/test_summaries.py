"""Rolling summaries: written per session as sessions arrive, rolled forward without re-reading
history, never losing a session when the generator fails, recomputable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memory import HashingEmbedder, Memory, Summarizer
from memory.generators import GenerationError, Generator
from qrmem.cli import app
from store import InputError

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"


class Scripted(Generator):
    """A deterministic fake LM: a session summary is its first turn; a roll appends."""

    name = "scripted"

    def __init__(self, fail: bool = False) -> None:
        self.prompts: list[str] = []
        self.fail = fail

    def generate(self, messages, options) -> str:
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        if self.fail:
            raise GenerationError("server down")
        if prompt.startswith("Summarize"):
            first = prompt.split("\n\n")[2].splitlines()[0]
            return f"<{first}>"
        previous = re.search(r"so far:\n(.*)\n\nNewest", prompt, re.DOTALL).group(1)
        newest = prompt.rsplit("\n", 1)[1]
        return f"{previous} + {newest}"


def test_summaries_roll_forward_as_sessions_arrive(db: str) -> None:
    gen = Scripted()
    mem = Memory(db, embedder=HashingEmbedder(32), summarizer=Summarizer(gen))
    report = mem.ingest_file(TINY_LOCOMO)
    assert report.summary_seconds > 0
    latest = {(s.kind, s.session_id): s for s in mem.summaries("tiny-1")}
    assert latest[("session", "session_2")].text == "<Ben: I ran 30 kilometres on Sunday, my longest run so far.>"
    conv = latest[("conversation", None)]
    assert conv.version == 3
    assert conv.text == ("<Ana: Hi Ben! I finally adopted a kitten last weekend.> + "
                         "<Ben: I ran 30 kilometres on Sunday, my longest run so far.> + "
                         "<Ana: Miso knocked my pottery bowl off the shelf, it broke.>")
    rolls = [p for p in gen.prompts if p.startswith("Update")]
    assert len(rolls) == 3  # 2 for tiny-1's later sessions, 1 for tiny-2's second session
    assert "adopted a kitten last weekend.>" in rolls[1] and "Her name is Miso" not in rolls[1]
    assert mem.store.counts().summaries == 5 + 5  # a session summary and a conversation version each


def test_a_failing_generator_never_loses_a_session(db: str, caplog: pytest.LogCaptureFixture) -> None:
    mem = Memory(db, embedder=HashingEmbedder(32), summarizer=Summarizer(Scripted(fail=True)))
    report = mem.ingest_file(TINY_LOCOMO)
    assert report.count("added") == 5 and mem.store.counts().summaries == 0
    assert "run `qrmem summarize --user tiny-1`" in caplog.text
    mem.summarizer = Summarizer(Scripted())
    assert mem.summarize("tiny-1") == 3
    assert mem.summarize("tiny-1") == 0  # nothing pending
    conv = next(s for s in mem.summaries("tiny-1") if s.kind == "conversation")
    assert conv.text.count(" + ") == 2 and conv.version == 3
    assert mem.summarize("tiny-1", redo=True) == 3
    conv = next(s for s in mem.summaries("tiny-1") if s.kind == "conversation")
    assert conv.version == 6 and conv.text.count(" + ") == 2  # restarted, not appended to the old one


def test_cli_summarize_with_an_openai_compatible_server(db: str, chat_server) -> None:
    chat_server["script"] = [(200, {"choices": [{"message": {"content": "They talked."}}]})] * 4
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "--db", db, str(TINY_LOCOMO), "--embedder", "hashing:32"]).exit_code == 0
    res = runner.invoke(app, ["summarize", "--db", db, "--user", "tiny-2", "--generator", "openai:m",
                              "--base-url", chat_server["url"]])
    assert res.exit_code == 0, res.output
    assert "summarised 2 sessions of 'tiny-2'" in res.stdout and "(v2): They talked." in res.stdout
    assert len(chat_server["requests"]) == 3  # two session summaries and one roll
    res = runner.invoke(app, ["summarize", "--db", db, "--user", "tiny-1", "--generator", "openai:m",
                              "--base-url", "http://127.0.0.1:9/v1"])
    assert res.exit_code == 1 and "failed after" in res.stderr


def test_rerank_context_uses_summaries_when_asked(db: str) -> None:
    from memory import Reranker

    class Recording(Reranker):
        """Scores by position; records what Memory hands a reranker."""

        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def score(self, query, docs, *, contexts=None, summary=None):
            self.calls.append((list(contexts) if contexts else None, summary))
            return [float(-i) for i in range(len(docs))]

    rec = Recording()
    mem = Memory(db, embedder=HashingEmbedder(32), summarizer=Summarizer(Scripted()), reranker=rec,
                 rerank_context="summary")
    mem.ingest_file(TINY_LOCOMO)
    hits = mem.search("tiny-2", "dog Pixel", k=2, rerank=True, rerank_k=3)
    contexts, summary = rec.calls[-1]
    session_summaries = {s.session_id: s.text for s in mem.summaries("tiny-2") if s.kind == "session"}
    assert contexts[:2] == [session_summaries[h.session_id] for h in hits]
    assert summary == next(s.text for s in mem.summaries("tiny-2") if s.kind == "conversation")
    first = mem.search("tiny-2", "dog Pixel", k=3)
    mem.rerank_context = "date"
    mem.search("tiny-2", "dog Pixel", k=2, rerank=True, rerank_k=3)
    assert rec.calls[-1] == ([h.session_date for h in first], None)
    mem.rerank_context = "none"
    mem.search("tiny-2", "dog Pixel", k=2, rerank=True, rerank_k=3)
    assert rec.calls[-1] == (None, None)
    with pytest.raises(InputError, match="rerank_context"):
        Memory(db, rerank_context="everything")  # type: ignore[arg-type]

"""Reranked search fused with the first stage, the search's relevance (who said it), and the agent
answering that it has no memory when the relevance says so."""

from __future__ import annotations

import numpy as np
import pytest

from agent import NO_MEMORY, MemoryAgent, should_abstain
from memory import (
    HashingEmbedder,
    Memory,
    Reranker,
    SearchResults,
    attribution,
    fuse_with_first_stage,
)
from memory.attribution import asked_speaker, speaker_of
from memory.generators import Generator
from store import InputError

SESSION = [
    {"speaker": "Caroline", "text": "I went to a pottery class and made a blue bowl."},
    {"speaker": "Melanie", "text": "I ran a charity race for mental health last Saturday."},
    {"speaker": "Caroline", "text": "That sounds wonderful, how did it go?"},
    {"speaker": "Melanie", "text": "The charity race taught me that self-care is important."},
]


class WordMass(Reranker):
    """Attention-like mass: the share of the query's words found in each candidate (non-negative)."""

    score_is_mass = True

    def score(self, query, docs, *, contexts=None, summary=None):
        words = {w.strip("?.,'").lower() for w in query.split()}
        return [float(len(words & {w.strip("?.,'").lower() for w in d.split()})) for d in docs]


class Counting(Generator):
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, messages, options) -> str:
        self.calls += 1
        return "from memory"


def test_fusion_weight_moves_between_the_reranker_and_the_first_stage_order() -> None:
    scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3])  # candidates in first-stage order
    assert list(np.argsort(-fuse_with_first_stage(scores, 0.0))) == [3, 1, 4, 2, 0]
    assert list(np.argsort(-fuse_with_first_stage(scores, 100.0))) == [0, 1, 2, 3, 4]
    mid = fuse_with_first_stage(scores, 0.5)
    assert np.argmax(mid) == 3 and list(np.argsort(-mid)) != [3, 1, 4, 2, 0]  # the prior lifts rank 1
    # Standardised: the weight means the same for any scale or offset of the reranker's scores.
    np.testing.assert_allclose(fuse_with_first_stage(scores * 40 - 7, 0.5), mid)
    assert fuse_with_first_stage([2.0], 0.5).tolist() == [2.0]
    with pytest.raises(ValueError, match="non-empty"):
        fuse_with_first_stage([], 0.5)


def test_attribution_is_the_share_of_mass_on_the_asked_persons_turns() -> None:
    texts = [f"{t['speaker']}: {t['text']}" for t in SESSION]
    assert speaker_of(texts[1]) == "Melanie" and speaker_of("no speaker here") is None
    assert asked_speaker("What did Caroline's race teach her?", ["Caroline", "Melanie"]) == "Caroline"
    assert asked_speaker("What did they do?", ["Caroline", "Melanie"]) is None
    assert asked_speaker("Did Caroline meet Melanie?", ["Caroline", "Melanie"]) is None  # two named
    assert attribution("What did Caroline learn?", texts, [1.0, 3.0, 0.0, 4.0]) == pytest.approx(1 / 8)
    assert attribution("What did Melanie learn?", texts, [1.0, 3.0, 0.0, 4.0]) == pytest.approx(7 / 8)
    assert attribution("What did Melanie learn?", texts, [-1.0, 3.0, 0.0, 1.0]) == pytest.approx(1.0)  # clipped
    assert attribution("What did they learn?", texts, [1.0, 3.0, 0.0, 4.0]) is None
    assert attribution("What did Melanie learn?", texts, [0.0, 0.0, 0.0, 0.0]) is None


def test_reranked_search_carries_relevance_and_fuses_with_the_first_stage(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64), reranker=WordMass(), fusion_weight=0.0)
    mem.add_session("u", SESSION, session_id="s1", date="20 May 2023")
    plain = mem.search("u", "charity race Caroline", k=4)
    assert isinstance(plain, SearchResults) and plain.relevance is None  # no reranker, no relevance
    hits = mem.search("u", "What did Caroline realize after her charity race?", k=4, rerank=True, rerank_k=4)
    texts = [h.text for h in hits]
    # The words match Melanie's turns: little of the mass lies on Caroline's own.
    assert hits.relevance is not None and hits.relevance < 0.5
    assert texts[0].startswith("Melanie:")
    own = mem.search("u", "What did Melanie realize after her charity race?", k=4, rerank=True, rerank_k=4)
    assert own.relevance is not None and own.relevance > 0.5
    # Without speaker names in the query there is nothing to attribute.
    assert mem.search("u", "charity race", k=4, rerank=True, rerank_k=4).relevance is None
    # A reranker whose scores are not mass gives no relevance.
    mem_plain = Memory(db, embedder=HashingEmbedder(64), reranker=type("Plain", (WordMass,), {"score_is_mass": False})())
    assert mem_plain.search("u", "What did Caroline realize?", k=2, rerank=True, rerank_k=4).relevance is None
    # fusion_weight: 0 is the reranker's order, a large weight the first stage's.
    first = mem.search("u", "What did Caroline realize after her charity race?", k=4)
    mem.fusion_weight = 1000.0
    fused = mem.search("u", "What did Caroline realize after her charity race?", k=4, rerank=True, rerank_k=4)
    assert [h.chunk_id for h in fused] == [h.chunk_id for h in first]
    with pytest.raises(InputError, match="fusion_weight"):
        Memory(db, fusion_weight=-1)
    # Without a weight, Memory takes the reranker's own: none for a plug-in, its choice otherwise.
    query = "What did Caroline realize after her charity race?"
    own = Memory(db, embedder=HashingEmbedder(64), reranker=WordMass())
    assert own.fusion_weight is None and WordMass.fusion_weight == 0.0
    alone = own.search("u", query, k=4, rerank=True, rerank_k=4)
    mem.fusion_weight = 0.0
    assert [h.chunk_id for h in alone] == [h.chunk_id for h in mem.search("u", query, k=4, rerank=True, rerank_k=4)]
    leaning = Memory(db, embedder=HashingEmbedder(64), reranker=type("Leaning", (WordMass,), {"fusion_weight": 1000.0})())
    assert [h.chunk_id for h in leaning.search("u", query, k=4, rerank=True, rerank_k=4)] == [h.chunk_id for h in first]


def test_agent_says_it_has_no_memory_when_the_memories_were_said_by_someone_else(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64), reranker=WordMass(), fusion_weight=0.0)
    mem.add_session("u", SESSION, session_id="s1", date="20 May 2023")
    gen = Counting()
    agent = MemoryAgent(mem, gen, rerank_k=4, top_n=2, abstain_below=0.5)
    answer = agent.chat("u", "What did Melanie realize after her charity race?")
    assert not answer.abstained and answer.text == "from memory" and gen.calls == 1
    answer = agent.chat("u", "What did Caroline realize after her charity race?")
    assert answer.abstained and answer.text == NO_MEMORY and gen.calls == 1  # the generator was not asked
    assert answer.relevance is not None and answer.relevance < 0.5
    assert mem.search("u", "not mentioned in our conversations", k=1, mode="bm25")[0].text == f"assistant: {NO_MEMORY}"  # stored
    never = MemoryAgent(mem, gen, rerank_k=4, top_n=2, abstain_below=None)
    assert not never.chat("u", "What did Caroline realize after her charity race?").abstained
    assert should_abstain(0.2, 0.3) and not should_abstain(None, 0.3) and not should_abstain(0.2, None)
    with pytest.raises(InputError, match="abstain_below"):
        MemoryAgent(mem, gen, abstain_below=1.5)


def test_cli_prints_relevance_and_takes_fusion_and_abstention_options(tmp_path, tiny_lm) -> None:
    import json as _json

    from typer.testing import CliRunner

    from qrmem.cli import app

    db = str(tmp_path / "cli.db")
    data = tmp_path / "s.jsonl"
    data.write_text(_json.dumps({"user_id": "u", "session_id": "s1", "date": "20 May 2023", "turns": SESSION}) + "\n")
    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", "--db", db, "--embedder", "hashing:64", str(data)])
    assert ingested.exit_code == 0, ingested.output
    model = ["--model", str(tiny_lm("llama")), "--heads", "2-1,3-0", "--dtype", "float32"]
    query = "What did Caroline realize after her charity race?"
    res = runner.invoke(app, ["search", "--db", db, "--user", "u", "--embedder", "hashing:64", "--k", "4",
                              "--rerank", "--rerank-k", "4", *model, query])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("relevance ")]
    assert len(line) == 1 and 0 <= float(line[0].split()[1].rstrip(":")) <= 1
    first = runner.invoke(app, ["search", "--db", db, "--user", "u", "--embedder", "hashing:64", "--k", "4",
                                "--json", query])
    fused = runner.invoke(app, ["search", "--db", db, "--user", "u", "--embedder", "hashing:64", "--k", "4",
                                "--json", "--rerank", "--rerank-k", "4", "--fusion-weight", "1000", *model, query])
    assert [h["chunk_id"] for h in _json.loads(fused.stdout)] == [h["chunk_id"] for h in _json.loads(first.stdout)]
    bad = runner.invoke(app, ["eval", "locomo", "--abstain-below", "2", "--out", str(tmp_path / "e")])
    assert bad.exit_code == 2 and "abstain-below" in bad.output


def test_the_servers_reranker_runs_concurrent_searches_in_one_pass(tiny_lm, tmp_path) -> None:
    """Concurrent `rank` calls share one `rank_many` pass in the model process, and each caller
    gets the ranking of its own query and candidates, as a direct `rank` gives it."""
    import json as _json
    import shutil
    import threading

    from memory import QRRanker
    from qrmem.server.model_process import ProcessReranker, ModelProcess

    model = tmp_path / "tiny"
    shutil.copytree(tiny_lm("llama"), model)
    (model / "qrmem_heads.json").write_text(_json.dumps({"heads": ["2-1", "3-0"], "scoring": {"calibrate": False}}))
    words = ["kitten", "marathon", "fence", "violin", "passport", "volcano", "river", "pasta"]
    jobs = [(f"about {w}?", [f"This is about {v}." for v in words[: i + 2]]) for i, w in enumerate(words[:6])]
    process = ModelProcess(f"qr:{model}", None)
    try:
        batcher = ProcessReranker(process, f"qr:{model}", max_batch=4, max_wait=0.3)
        got: dict[int, object] = {}
        threads = [threading.Thread(target=lambda i=i, q=q, d=d: got.__setitem__(i, batcher.rank(q, d, evidence=True)))
                   for i, (q, d) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        process.close()
    assert sum(batcher.batches) == len(jobs) and max(batcher.batches) > 1 and max(batcher.batches) <= 4
    direct = QRRanker.load(str(model))  # the same dtype choice as the model process
    for i, (q, d) in enumerate(jobs):
        ranked = got[i]
        assert sorted(r.text for r in ranked) == sorted(d)  # its own candidates, not another query's
        want = {r.index: r.score for r in direct.rank(q, d)}
        assert all(abs(r.score - want[r.index]) < 0.05 for r in ranked)
        assert all(e.text for r in ranked for e in r.evidence)


def test_locomo_harness_records_relevance_and_abstains_without_the_generator(tmp_path) -> None:
    import json as _json

    from agent.evaluation import EvalConfig, run
    from agent.locomo import TINY

    gen = Counting()
    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64), reranker=WordMass())
    cfg = EvalConfig(out=tmp_path / "out", data=TINY, rerank_k=5, top_n=2, abstain_below=0.7)
    summary = run(cfg, mem, gen)
    rows = _json.loads((tmp_path / "out" / "results.json").read_text())["questions"]
    assert all({"relevance", "abstained"} <= set(r) for r in rows)
    abstained = [r for r in rows if r["abstained"]]
    assert abstained and all(r["prediction"] == NO_MEMORY and r["relevance"] < 0.7 for r in abstained)
    assert all(not r["abstained"] for r in rows if r["relevance"] is None or r["relevance"] >= 0.7)
    assert gen.calls == len(rows) - len(abstained)  # no generator call for an abstention
    answerable = [r for r in rows if r["category"] != 5]
    assert summary["abstention"]["answerable"] == round(sum(r["abstained"] for r in answerable) / len(answerable), 4)
    assert summary["abstention"]["abstain_below"] == 0.7
    assert "abstained, adversarial (5) / answerable (1-4)" in (tmp_path / "out" / "report.md").read_text()

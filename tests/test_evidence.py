"""Evidence spans (issue 16): the characters of each reranked candidate its QR heads attended to most,
on tiny real models; a planted head that looks at one known token; Memory, CLI and LoCoMo output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from agent.evaluation import EvalConfig, run
from agent.locomo import TINY
from memory import Evidence, HashingEmbedder, Memory, QRRanker, highlight
from memory.generators import Generator
from memory.memory import with_time_notes
from memory.qr.evidence import word_span
from memory.qr.scoring import best_windows
from qrmem.cli import app

DOCS = ["Caroline went to a support group yesterday.", "Melanie painted a sunrise in 2022.",
        "The kitten is called Miso.", "Ben is training for the Lisbon marathon."]
UNICODE = ["Zoë's café in Zürich ☕ serves 東京 tea.", "Ben ran the Lisbon marathon — 42 km!",
           "Ана назвала котёнка Мисо.", "Melanie painted a sunrise in 2022."]


@pytest.fixture(scope="module")
def ranker(tiny_lm) -> QRRanker:
    return QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", dtype="float32")


def check_spans(docs: list[str], results, *, every: bool = True) -> None:
    """Every span lies in its text, is that text's characters, whole words, no edge whitespace;
    with `every`, every result has one (a calibrated candidate with no positive mass has none)."""
    for r in results:
        doc = docs[r.index]
        assert r.evidence or not every, f"no evidence for {doc!r}"
        assert [e.weight for e in r.evidence] == sorted((e.weight for e in r.evidence), reverse=True)
        for e in r.evidence:
            assert 0 <= e.start < e.end <= len(doc) and e.text == doc[e.start:e.end]
            assert e.text == e.text.strip() and 0 < e.weight <= 1 + 1e-6
            assert e.start == 0 or not (doc[e.start - 1].isalnum() and doc[e.start].isalnum())
            assert e.end == len(doc) or not (doc[e.end - 1].isalnum() and doc[e.end].isalnum())


# -- pure functions ----------------------------------------------------------------------------------

def test_best_windows_find_the_heaviest_disjoint_windows_inside_each_chunk() -> None:
    mass = torch.zeros(20)
    mass[5], mass[6], mass[15], mass[1] = 1.0, 0.5, 0.8, 9.0  # token 1 is outside every chunk
    spans = torch.tensor([[3, 10], [12, 18], [18, 19]])
    starts, widths, sums = best_windows(mass, spans, width=2)
    assert widths.tolist() == [2, 2, 1]  # a one-token chunk has a one-token window
    assert starts[0, 0].item() == 5 and sums[0, 0].item() == pytest.approx(1.5)
    assert starts[1, 0].item() in (14, 15) and sums[1, 0].item() == pytest.approx(0.8)
    assert abs(starts[0, 1].item() - 5) >= 2  # the second window does not overlap the first
    assert sums[2, 1].item() == float("-inf")  # no second window in a one-token chunk


def test_word_span_and_highlight() -> None:
    text = "Ana: support group, café Zürich"
    assert word_span(text, 7, 10) == (5, 12)  # mid-word at both ends: "support"
    assert word_span(text, 12, 14) == (13, 18)  # a leading space is dropped
    assert text[slice(*word_span(text, 27, 28))] == "Zürich"
    assert highlight(text, [(13, 18), (5, 12), (6, 9)]) == "Ana: [[support]] [[group]], café Zürich"
    assert highlight(text, [(5, 18)], "<b>", "</b>") == "Ana: <b>support group</b>, café Zürich"
    assert highlight(text, [(3, 99)]) == text  # outside the text: left out
    assert Evidence(5, 12, "support", 0.5).as_dict() == {"start": 5, "end": 12, "text": "support", "weight": 0.5}


# -- a planted head: layer 0, head 0 looks only at one token of one candidate -----------------------

def plant(ranker: QRRanker, target: set[int], query: set[int]) -> None:
    """Head 0 of layer 0 attends from the query tokens to the `target` token ids and nowhere else.

    Hidden dim 0 marks the target tokens, dim 1 the query tokens; the head's query and key read
    them into its lowest-frequency rotary dimension (RoPE barely turns it over a few hundred
    positions), so the logit is large only from a query token to a target token. The null query
    ("N/A") has no mark: its attention is near uniform, so calibration keeps the target too."""
    m = ranker.model
    hd = m.config.hidden_size // m.config.num_attention_heads
    with torch.no_grad():
        emb = m.embed_tokens.weight
        emb[:, :2] = 0
        emb[sorted(target), 0] = 5.0
        emb[sorted(query), 1] = 3.0
        m.layers[0].input_layernorm.weight.fill_(1.0)
        attn = m.layers[0].self_attn
        attn.q_proj.weight[:hd] = 0
        attn.k_proj.weight[:hd] = 0  # kv head 0 serves query head 0
        attn.q_proj.weight[hd // 2 - 1, 1] = 3.0
        attn.k_proj.weight[hd // 2 - 1, 0] = 3.0


@pytest.mark.parametrize(("docs", "target_doc", "word", "calibrate"), [
    (DOCS, 2, "Miso", False), (DOCS, 2, "Miso", True),
    (UNICODE, 0, "serves", True), (UNICODE, 1, "Lisbon", False)])
def test_planted_attention_is_inside_the_top_span(tiny_lm, docs, target_doc, word, calibrate) -> None:
    # one-token windows: the span is exactly the word holding the planted token
    ranker = QRRanker.load(str(tiny_lm("llama")), heads="0-0", dtype="float32", calibrate=calibrate,
                           evidence_tokens=1)
    query = "Who painted a sunrise?"
    lay = ranker.layout(query, docs)
    at = docs[target_doc].index(word)
    ids = lay.input_ids
    # the word's tokens (byte-level BPE splits words at spaces: the same ids as in the prompt)
    in_word = ranker.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    once = [t for t in in_word if ids.count(t) == 1]  # a token of the word found nowhere else in the prompt
    assert once, f"no token of {word!r} occurs only once in the prompt"
    plant(ranker, {once[0]}, set(ids[lay.query_span[0]:]))
    ranked = ranker.rank(query, docs, evidence=True)
    assert ranked[0].index == target_doc
    top = ranked[0].evidence[0]
    assert (top.start, top.end, top.text) == (at, at + len(word), word)
    assert top.weight > 0.9
    check_spans(docs, ranked, every=not calibrate)


# -- the real path on a random model ---------------------------------------------------------------

def test_rank_and_rank_many_give_the_same_evidence(ranker: QRRanker) -> None:
    queries = ["Who painted a sunrise?", "kitten name", "Who serves tea in Zürich?"]
    lists = [DOCS, DOCS[::-1], UNICODE]
    contexts = [None, ["8 May 2023"] * 4, ["1 Jan 2024", None, "2 Feb 2024", None]]
    many = ranker.rank_many(queries, lists, contexts=contexts, evidence=True)
    for q, docs, ctx, got in zip(queries, lists, contexts, many, strict=True):
        one = ranker.rank(q, docs, contexts=ctx, evidence=True)
        assert [r.index for r in one] == [r.index for r in got]
        for a, b in zip(one, got, strict=True):
            assert [e.span for e in a.evidence] == [e.span for e in b.evidence]
            assert [e.weight for e in a.evidence] == pytest.approx([e.weight for e in b.evidence], abs=1e-4)
        check_spans(docs, one)
    plain = ranker.rank(queries[0], DOCS)
    assert all(r.evidence == () for r in plain)  # only when asked
    assert [r.score for r in plain] == pytest.approx([r.score for r in ranker.rank(queries[0], DOCS, evidence=True)])


def test_evidence_across_windows(tiny_lm) -> None:
    small = QRRanker.load(str(tiny_lm("llama")), heads="3-0,3-1", dtype="float32", max_tokens=120,
                          calibrate=False)  # raw mass is positive: every candidate has evidence
    docs = DOCS * 3 + UNICODE
    hs = small.head_scores("marathon", docs, evidence=True)
    assert hs.windows > 1 and len(hs.evidence) == len(docs)
    ranked = small.rank("marathon", docs, evidence=True)
    check_spans(docs, ranked)
    many = small.rank_many(["marathon"], [docs], evidence=True)[0]
    assert [[e.span for e in r.evidence] for r in ranked] == [[e.span for e in r.evidence] for r in many]


# -- Memory, CLI, LoCoMo -------------------------------------------------------------------------------

def test_memory_search_hits_carry_evidence(ranker: QRRanker, tmp_path: Path) -> None:
    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64), reranker=ranker, fusion_weight=0)  # the reranker's own order
    mem.add_session("u", [{"speaker": "u", "text": d} for d in DOCS + UNICODE[:3]], session_id="s1",
                    date="1 May 2024")
    first = mem.search("u", "kitten Miso marathon", k=5)
    assert all(h.evidence == () for h in first)
    hits = mem.search("u", "kitten Miso marathon", k=3, rerank=True, rerank_k=5)
    expected = ranker.rank("kitten Miso marathon", [h.text for h in first],
                           contexts=[with_time_notes(h.session_date, h.time_notes) for h in first], evidence=True)
    assert [h.evidence for h in hits] == [r.evidence for r in expected.top_k(3)]
    for h in hits:
        assert h.evidence and all(h.text[e.start:e.end] == e.text for e in h.evidence)
    d = hits[0].as_dict()
    assert d["evidence"] == [e.as_dict() for e in hits[0].evidence]
    json.dumps(d)


def test_cli_search_highlights_evidence_and_json_gives_offsets(tiny_lm, tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    mem = Memory(db, embedder=HashingEmbedder(64))
    mem.add_session("u", [{"speaker": "u", "text": d} for d in DOCS], session_id="s1")
    runner = CliRunner()
    args = ["search", "kitten Miso", "--db", db, "--user", "u", "--embedder", "hashing:64", "--rerank",
            "--model", str(tiny_lm("llama")), "--heads", "2-1,3-0,1-2", "--k", "2"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    for h in hits:
        assert h["evidence"] and all(h["text"][e["start"]:e["end"]] == e["text"] for e in h["evidence"])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    for line, h in zip(lines, hits, strict=True):  # not a terminal: [[ ]] marks the spans
        assert line.endswith(highlight(h["text"], [(e["start"], e["end"]) for e in h["evidence"]]))
        assert "[[" in line and "\x1b" not in line
    plain = runner.invoke(app, ["search", "kitten Miso", "--db", db, "--user", "u", "--embedder", "hashing:64",
                                "--json"])
    assert all(h["evidence"] == [] for h in json.loads(plain.stdout))


class Answers(Generator):
    name = "answers"

    def generate(self, messages, options) -> str:
        return "Miso"


def test_locomo_results_and_report_show_evidence(ranker: QRRanker, tmp_path: Path) -> None:
    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64), reranker=ranker)
    cfg = EvalConfig(out=tmp_path / "out", data=TINY, conversations=["tiny-1"], rerank_k=5, top_n=2)
    summary = run(cfg, mem, Answers())
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["questions"]
    for r in rows:
        assert len(r["retrieved_evidence"]) == len(r["retrieved_scores"]) == 5
        assert len(r["memories"]) == 2
        for m in r["memories"]:
            assert m["evidence"] and all(0 <= e["start"] < e["end"] <= len(m["text"]) for e in m["evidence"])
        hits = mem.search(r["conversation"], r["question"], k=5, rerank=True, rerank_k=5)
        assert r["retrieved_evidence"] == [[{"start": e.start, "end": e.end, "weight": round(e.weight, 4)}
                                            for e in h.evidence] for h in hits]
    examples = summary["examples"]
    assert 1 <= len(examples) <= 3 and all(ex["category"] != 5 for ex in examples)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Examples" in report
    ex = examples[0]
    assert f"**{ex['question']}**" in report and f"gold answer: {ex['answer']}" in report
    m = ex["memories"][0]
    e = m["evidence"][0]
    assert f"**{m['text'][e['start']:e['end']]}**" in report

"""Head detection: exact metric functions, record validation, splits, and `qrmem heads detect`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.locomo import load_records
from memory.metrics import ndcg_from_scores
from memory.qr.data import Record, parse_records, split_by_group
from memory.qr.detect import contrast_per_head, head_quality, top_heads
from memory.qr.heads import Head
from qrmem.cli import app
from store import InputError


def test_ndcg_and_contrast_per_head_are_exact() -> None:
    # 1 layer, 3 heads, 4 candidates; gold = candidate 2
    scores = np.array([[[0.1, 0.2, 0.9, 0.0],    # head 0 ranks gold first -> 1.0
                        [0.9, 0.2, 0.5, 0.0],    # head 1 ranks gold second -> 1/log2(3)
                        [0.9, 0.8, 0.0, 0.7]]])  # head 2 ranks gold last -> 1/log2(5)
    gold = np.array([False, False, True, False])
    np.testing.assert_allclose(ndcg_from_scores(scores, gold), [[1.0, 1 / np.log2(3), 1 / np.log2(5)]])
    np.testing.assert_allclose(contrast_per_head(scores, gold), [[0.9 - 0.1, 0.5 - 1.1 / 3, -0.8]])
    q = head_quality([scores, scores], [gold, [False] * 4])  # the second query has no gold: skipped
    np.testing.assert_allclose(q, ndcg_from_scores(scores, gold))
    assert top_heads(q, 2, layers=[7]) == [Head(7, 0), Head(7, 1)]


def test_records_are_validated_with_exact_errors() -> None:
    good = {"id": 1, "question": "q?", "paragraphs": [{"idx": 0, "paragraph_text": "a", "is_supporting": True}]}
    assert parse_records([good], "s")[0].gold == [True]
    bad = [
        ({**good, "paragraphs": []}, r"record 0 \(id 1\): field paragraphs: .*at least 1"),
        ({**good, "paragraphs": [{"idx": 0}]}, r"field paragraphs\[0\].paragraph_text: Field required"),
        ({**good, "question": " "}, r"field question: must not be empty"),
        ({**good, "paragraphs": [{"paragraph_text": "x", "is_supporting": "maybe"}]},
         r"paragraphs\[0\].is_supporting"),
        ({"question": "q", "paragraphs": [{"paragraph_text": "x"}]}, r"field id: Field required"),
    ]
    for rec, match in bad:
        with pytest.raises(InputError, match=match):
            parse_records([rec], "s")


def test_split_is_by_group_never_by_question() -> None:
    recs = [Record(id=f"{g}-{i}", question="q", group=g, paragraphs=[{"paragraph_text": "p"}])
            for g in "abcdef" for i in range(3)]
    train, val = split_by_group(recs, seed=3)
    assert not {r.group for r in train} & {r.group for r in val}
    assert len(val) == 6 and len(train) == 12
    train, val = split_by_group(recs, val_groups=["a"])
    assert {r.group for r in val} == {"a"}
    with pytest.raises(InputError, match="have no records"):
        split_by_group(recs, val_groups=["zz"])


def test_locomo_records_use_the_first_stage_and_evidence(tmp_path: Path) -> None:
    from memory import HashingEmbedder, Memory

    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64))
    recs = load_records(Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json", rerank_k=3, memory=mem)
    assert len(recs) == 8  # the category-5 question is excluded
    first = recs[0]
    assert first.group == "tiny-1" and len(first.paragraphs) == 3
    hits = mem.search("tiny-1", first.question, k=3)
    assert first.texts == [h.text for h in hits]
    assert first.gold == [h.turn_ids == ("D1:3",) for h in hits]
    assert first.titles == [h.session_date for h in hits]


def test_cli_heads_detect_writes_heads_table_and_heatmap(tiny_lm, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["kitten Miso", "marathon Lisbon", "sunrise painting", "support group"]
    lines = []
    for i in range(12):
        gold = int(rng.integers(4))
        lines.append(json.dumps({"id": i, "group": f"g{i % 3}", "question": f"about {words[gold]}?",
                                 "paragraphs": [{"idx": j, "paragraph_text": f"This is about {w}.",
                                                 "is_supporting": j == gold} for j, w in enumerate(words)]}))
    data = tmp_path / "seed.jsonl"
    data.write_text("\n".join(lines))
    out = tmp_path / "heads.json"
    res = CliRunner().invoke(app, ["heads", "detect", "--data", str(data), "--method", "core",
                                   "--limit", "10", "--top", "5", "--out", str(out),
                                   "--model", str(tiny_lm("llama"))])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["method"] == "core" and saved["queries"] == 10 and len(saved["heads"]) == 5
    table = np.array(saved["table"]["core"])
    assert table.shape == (4, 4)
    best = np.unravel_index(np.argmax(table), table.shape)
    assert saved["heads"][0] == f"{best[0]}-{best[1]}"
    assert 0.0 <= saved["stability_top_overlap"] <= 1.0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(app, ["heads", "detect", "--data", str(data), "--method", "magic",
                                   "--out", str(out), "--model", str(tiny_lm("llama"))])
    assert res.exit_code == 1 and "unknown method 'magic'" in res.stderr


def test_cli_heads_detect_under_a_layer_budget(tiny_lm, tmp_path: Path) -> None:
    """--max-layer loads and scores only layers 0..N: the table has N+1 rows, the heads stay in them,
    and each row equals the same row detected with every layer (a causal model's lower layers do not
    depend on the upper ones)."""
    lines = [json.dumps({"id": i, "group": f"g{i % 2}", "question": f"about {w}?",
                         "paragraphs": [{"idx": j, "paragraph_text": f"This is about {v}.", "is_supporting": v == w}
                                        for j, v in enumerate(["kitten Miso", "marathon Lisbon", "support group"])]})
             for i, w in enumerate(["kitten Miso", "marathon Lisbon", "support group"] * 2)]
    data = tmp_path / "seed.jsonl"
    data.write_text("\n".join(lines))
    tables = {}
    for budget in (None, 1):
        out = tmp_path / f"heads-{budget}.json"
        args = ["heads", "detect", "--data", str(data), "--top", "3", "--out", str(out),
                "--model", str(tiny_lm("llama"))] + ([] if budget is None else ["--max-layer", str(budget)])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        saved = json.loads(out.read_text())
        tables[budget] = np.array(saved["table"]["qr"])
        if budget is not None:
            assert saved["max_layer"] == 1 and all(int(h.split("-")[0]) <= 1 for h in saved["heads"])
    assert tables[None].shape == (4, 4) and tables[1].shape == (2, 4)
    np.testing.assert_allclose(tables[1], tables[None][:2], atol=1e-4)
    res = CliRunner().invoke(app, ["heads", "detect", "--data", str(data), "--out", str(tmp_path / "x.json"),
                                   "--model", str(tiny_lm("llama")), "--max-layer", "-1"])
    assert res.exit_code == 2 and "greater than or equal to 0" in res.output
    # a model whose own head list reaches above the budget (as the embedded SmolLM2's does) is
    # detected under it: its list is only a default for detection, not heads asked for
    own = tmp_path / "own"
    shutil.copytree(tiny_lm("llama"), own)
    (own / "qrmem_heads.json").write_text(json.dumps({"heads": ["3-0", "1-1"]}))
    out = tmp_path / "own-heads.json"
    res = CliRunner().invoke(app, ["heads", "detect", "--data", str(data), "--top", "3", "--out", str(out),
                                   "--model", str(own), "--max-layer", "1"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.array(json.loads(out.read_text())["table"]["qr"]), tables[1], atol=1e-4)

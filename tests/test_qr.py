"""QRRanker behaviour on a tiny random model: API, bad input, windows, Memory and CLI integration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from memory import HashingEmbedder, Memory, ModelLoadError, QRRanker
from qrmem.cli import app
from store import InputError

DOCS = ["Caroline went to a support group yesterday.", "Melanie painted a sunrise in 2022.",
        "The kitten is called Miso.", "Ben is training for the Lisbon marathon."]


@pytest.fixture(scope="module")
def ranker(tiny_lm) -> QRRanker:
    return QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", dtype="float32")


def test_rank_returns_typed_results_ordered_by_score(ranker: QRRanker) -> None:
    ranked = ranker.rank("Who painted a sunrise?", DOCS)
    scores = ranker.score("Who painted a sunrise?", DOCS)
    assert [r.index for r in ranked] == sorted(range(4), key=lambda i: -scores[i])
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert all(r.text == DOCS[r.index] and r.score == pytest.approx(scores[r.index]) for r in ranked)
    assert len(ranked.top_k(2)) == 2
    assert len(ranker.model.layers) == 4 and ranker.layers == (1, 2, 3)


def test_head_scores_select_and_calibration_switch(ranker: QRRanker) -> None:
    hs = ranker.head_scores("kitten", DOCS, layers=[1, 3])
    assert hs.raw.shape == (2, 4, 4) and hs.layers == (1, 3)
    assert (hs.raw >= 0).all() and hs.raw.sum(-1).max() <= 1.0 + 1e-5  # attention mass
    assert not np.allclose(hs.raw, hs.calibrated)
    ranker.config.calibrate = False
    try:
        off = ranker.head_scores("kitten", DOCS, layers=[1, 3])
        np.testing.assert_allclose(off.raw, off.calibrated)
        np.testing.assert_allclose(off.raw, hs.raw, atol=1e-5)  # one full pass vs a KV-cached one
    finally:
        ranker.config.calibrate = True


def test_outlier_masking_changes_scores_only_when_on(ranker: QRRanker) -> None:
    base = ranker.head_scores("kitten", DOCS)
    ranker.config.mask_outliers = True
    try:
        masked = ranker.head_scores("kitten", DOCS)
    finally:
        ranker.config.mask_outliers = False
    np.testing.assert_allclose(masked.raw, base.raw)
    assert (masked.calibrated >= base.calibrated - 1e-7).all()  # only negative outliers are zeroed
    assert not np.allclose(masked.calibrated, base.calibrated)


def test_context_and_summary_change_the_prompt(ranker: QRRanker) -> None:
    a = ranker.score("kitten", DOCS)
    b = ranker.score("kitten", DOCS, contexts=["8 May 2023"] * 4, summary="Two friends talk.")
    assert not np.allclose(a, b)


def test_long_shortlists_are_scored_in_comparable_windows(tiny_lm) -> None:
    small = QRRanker.load(str(tiny_lm("llama")), heads="3-0,3-1", dtype="float32", max_tokens=120)
    docs = DOCS * 3  # too long for one 120-token window
    hs = small.head_scores("marathon", docs)
    assert hs.windows > 1
    # Within each window raw scores are shares of the attention on candidates, times their number.
    np.testing.assert_allclose(hs.raw.sum(-1), len(docs), rtol=1e-4)
    s = small.score("marathon", docs)
    # The same candidate in different windows with the same neighbours gets the same score.
    assert s[3] == pytest.approx(s[7], abs=1e-4) or hs.windows != 3


@pytest.mark.parametrize("query, docs, match", [
    ("", DOCS, "query must be a non-empty string"),
    ("   ", DOCS, "query must be a non-empty string"),
    ("q", [], "non-empty list of candidate"),
    ("q", ["ok", ""], "candidate 1 must be a non-empty string"),
])
def test_bad_rank_input(ranker: QRRanker, query: str, docs: list[str], match: str) -> None:
    with pytest.raises(InputError, match=match):
        ranker.rank(query, docs)


def test_candidate_longer_than_the_window(tiny_lm) -> None:
    small = QRRanker.load(str(tiny_lm("llama")), heads="3-0", max_tokens=60)
    with pytest.raises(InputError, match="does not fit the window"):
        small.rank("q", ["short", "word " * 200])


def test_heads_outside_the_model_and_missing_heads(tiny_lm) -> None:
    path = str(tiny_lm("llama"))
    with pytest.raises(InputError, match="head 9-0 is outside .* 4 layers x 4 heads"):
        QRRanker.load(path, heads="9-0")
    with pytest.raises(InputError, match="head 1-7 is outside"):
        QRRanker.load(path, heads=["1-7"])
    with pytest.raises(InputError, match="bad head"):
        QRRanker.load(path, heads="one-two")
    with pytest.raises(InputError, match="no head list"):
        QRRanker.load(path)


def test_not_decoder_only_and_missing_models(tmp_path: Path) -> None:
    import transformers

    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64)).save_pretrained(bert)
    with pytest.raises(InputError, match="not a decoder-only"):
        QRRanker.load(str(bert), heads="0-0")
    t5 = tmp_path / "t5"
    transformers.T5Config(vocab_size=50, d_model=32, num_layers=1, num_heads=2).save_pretrained(t5)
    with pytest.raises(InputError, match="not a decoder-only"):
        QRRanker.load(str(t5), heads="0-0")
    with pytest.raises(ModelLoadError, match="not found"):
        QRRanker.load(str(tmp_path / "missing.gguf"), heads="0-0")
    with pytest.raises(ModelLoadError):
        QRRanker.load(str(tmp_path / "no-such-dir"), heads="0-0")


def test_heads_file_in_model_dir_is_used(tiny_lm, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "with-heads"
    shutil.copytree(tiny_lm("llama"), model)
    (model / "qrmem_heads.json").write_text(json.dumps({"heads": ["1-3", "0-2"]}))
    r = QRRanker.load(str(model))
    assert [str(h) for h in r.heads] == ["1-3", "0-2"] and len(r.model.layers) == 2
    head_file = tmp_path / "h.json"
    head_file.write_text(json.dumps({"heads": ["2-2"]}))
    assert [str(h) for h in QRRanker.load(str(model), heads=str(head_file)).heads] == ["2-2"]


def test_memory_search_reranks_the_first_stage(db: str, ranker: QRRanker) -> None:
    mem = Memory(db, embedder=HashingEmbedder(64), reranker=ranker, fusion_weight=0)  # the reranker's order
    mem.add_session("u", [{"speaker": "u", "text": d} for d in DOCS], session_id="s1", date="1 May 2024")
    first = mem.search("u", "kitten Miso marathon", k=4)
    reranked = mem.search("u", "kitten Miso marathon", k=3, rerank=True, rerank_k=4)
    assert any(h.time_notes for h in first)  # "yesterday": the reranker sees the date and the note
    expected = ranker.rank("kitten Miso marathon", [h.text for h in first],
                           contexts=[h.session_date + (f" ({h.time_notes})" if h.time_notes else "") for h in first])
    assert [h.text for h in reranked] == [first[r.index].text for r in expected.top_k(3)]
    assert [h.rank for h in reranked] == [1, 2, 3]
    assert reranked[0].score == pytest.approx(expected[0].score)
    assert mem.search("nobody", "x", rerank=True) == []
    # Fused (the default): the reranker's scores and the first-stage order, standardised and summed.
    from memory import DEFAULT_FUSION_WEIGHT, fuse_with_first_stage

    mem.fusion_weight = None  # the reranker's own weight: QRRanker's is the shipped default
    assert ranker.fusion_weight == DEFAULT_FUSION_WEIGHT > 0
    fused = mem.search("u", "kitten Miso marathon", k=4, rerank=True, rerank_k=4)
    raw = [0.0] * 4
    for r in expected:
        raw[r.index] = r.score
    want = fuse_with_first_stage(raw, DEFAULT_FUSION_WEIGHT)
    assert [h.score for h in fused] == pytest.approx(sorted(want.tolist(), reverse=True))
    assert [h.text for h in fused] == [first[i].text for i in sorted(range(4), key=lambda i: (-want[i], i))]


def test_cli_rank_candidates_and_records(tiny_lm, tmp_path: Path) -> None:
    runner = CliRunner()
    model = str(tiny_lm("llama"))
    cands = tmp_path / "cands.json"
    cands.write_text(json.dumps(DOCS))
    res = runner.invoke(app, ["rank", str(cands), "--query", "kitten", "--model", model,
                              "--heads", "3-0,3-1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3] and rows[0]["rank"] == 1
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps({"id": f"q{i}", "question": "kitten?", "paragraphs": [
        {"idx": j, "title": "t", "paragraph_text": d} for j, d in enumerate(DOCS)]}) for i in range(2)))
    res = runner.invoke(app, ["rank", str(records), "--model", model, "--heads", "3-0", "--json"])
    assert res.exit_code == 0, res.output
    assert [job["id"] for job in json.loads(res.stdout)] == ["q0", "q1"]
    res = runner.invoke(app, ["rank", str(cands), "--model", model, "--heads", "3-0"])
    assert res.exit_code == 1 and "pass --query" in res.stderr
    res = runner.invoke(app, ["rank", str(cands), "--query", "x", "--model", model, "--heads", "7-0"])
    assert res.exit_code == 1 and "outside" in res.stderr


def test_int8_quantisation_of_the_linear_layers(tiny_lm, ranker: QRRanker, tmp_path: Path) -> None:
    import torch

    path = str(tiny_lm("llama"))
    q8 = QRRanker.load(path, heads="2-1,3-0,1-2", quantize="int8")
    assert q8.quantize == "int8" and ranker.quantize is None
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    mods = list(q8.model.modules())
    assert any(isinstance(m, Int8Linear) for m in mods) and not any(type(m) is torch.nn.Linear for m in mods)
    a = ranker.head_scores("Who painted a sunrise?", DOCS)
    b = q8.head_scores("Who painted a sunrise?", DOCS)
    assert not np.allclose(a.raw, b.raw)  # int8 weights change the numbers (quality: tests/test_qr_smollm2.py)
    assert (b.raw >= 0).all() and b.raw.sum(-1).max() <= 1.0 + 1e-5  # still attention shares
    with pytest.raises(InputError, match="unknown quantisation 'int4'"):
        QRRanker.load(path, heads="3-0", quantize="int4")
    with pytest.raises(InputError, match="needs float32 weights"):
        QRRanker.load(path, heads="3-0", quantize="int8", dtype="bfloat16")
    with pytest.raises(InputError, match="runs on the CPU only"):
        QRRanker.load(path, heads="3-0", quantize="int8", device="cuda")
    cands = tmp_path / "c.json"
    cands.write_text(json.dumps(DOCS))
    res = CliRunner().invoke(app, ["rank", str(cands), "--query", "kitten", "--model", path, "--heads", "3-0",
                                   "--quantize", "int8", "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(r["index"] for r in json.loads(res.stdout)) == [0, 1, 2, 3]
    res = CliRunner().invoke(app, ["rank", str(cands), "--query", "kitten", "--model", path, "--heads", "3-0",
                                   "--quantize", "fp4"])
    assert res.exit_code == 1 and "unknown quantisation 'fp4'" in res.stderr


def test_layer_budget_at_load(tiny_lm) -> None:
    path = str(tiny_lm("llama"))
    budget = QRRanker.load(path, heads="1-0", all_layers=True, max_layer=2)
    assert len(budget.model.layers) == 3 and budget.n_model_layers == 4
    with pytest.raises(InputError, match="heads 3-0 lie above the layer budget 2"):
        QRRanker.load(path, heads="1-0,3-0", max_layer=2)
    with pytest.raises(InputError, match="max_layer must be a layer number"):
        QRRanker.load(path, heads="1-0", max_layer=-1)


def test_auto_dtype_on_a_cpu_is_bf16_only_where_bf16_is_faster_there(tiny_lm) -> None:
    import torch

    from memory.models import cpu_bf16_faster, native_cpu_bf16, pick_dtype

    auto = QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", device="cpu")
    want = torch.bfloat16 if cpu_bf16_faster() else torch.float32
    assert not cpu_bf16_faster() or native_cpu_bf16() or os.environ.get("QRMEM_CPU_BF16") == "1"
    assert {p.dtype for p in auto.model.parameters()} == {want}
    assert pick_dtype("auto", "cpu") is torch.float32  # only inference that asks for it gets bf16
    assert pick_dtype("auto", "cpu", cpu_bf16=True) is want
    int8 = QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", device="cpu", quantize="int8")  # from fp32
    assert int8.quantize == "int8"
    fp32 = QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", dtype="float32")
    docs = ["Ana adopted a kitten called Miso.", "Ben repainted the fence.", "The weather was rainy."]
    np.testing.assert_allclose(auto.score("kitten name?", docs), fp32.score("kitten name?", docs),
                               rtol=0.05, atol=0.02)


def test_cpu_bf16_can_be_forced_either_way_and_a_bad_value_says_what_to_set(tiny_lm, monkeypatch) -> None:
    import torch

    from memory import models

    models.cpu_bf16_faster.cache_clear()
    try:
        monkeypatch.setenv("QRMEM_CPU_BF16", "1")
        assert models.pick_dtype("auto", "cpu", cpu_bf16=True) is torch.bfloat16
        forced = QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", device="cpu")
        assert {p.dtype for p in forced.model.parameters()} == {torch.bfloat16}
        assert models.pick_dtype("auto", "cpu") is torch.float32  # training and int8 stay fp32
        models.cpu_bf16_faster.cache_clear()
        monkeypatch.setenv("QRMEM_CPU_BF16", "0")
        assert models.pick_dtype("auto", "cpu", cpu_bf16=True) is torch.float32
        models.cpu_bf16_faster.cache_clear()
        monkeypatch.setenv("QRMEM_CPU_BF16", "yes")
        with pytest.raises(InputError, match=r"\$QRMEM_CPU_BF16 must be 1 .* or 0"):
            models.pick_dtype("auto", "cpu", cpu_bf16=True)
    finally:
        models.cpu_bf16_faster.cache_clear()


def test_calibration_when_the_query_tokenises_across_the_prefix_boundary(tiny_lm) -> None:
    """A query whose leading space merges into its first token makes the null prompt's prefix a
    token shorter or longer than the real one; the chunks still line up, and scores still come."""
    ranker = QRRanker.load(str(tiny_lm("llama")), heads="2-1,3-0,1-2", dtype="float32", calibrate=True)
    docs = ["Zoë's café in Zürich serves tea.", "Ben ran the Lisbon marathon.", "A kitten named Miso."]
    query = "Zürich café?"
    real = ranker.layout(query, docs)
    null = ranker.layout(ranker.config.null_query, docs)
    assert real.chunk_spans == null.chunk_spans
    one = ranker.score(query, docs)
    many = ranker.score_many([query, "kitten?"], [docs, docs])
    assert len(one) == 3 and all(np.isfinite(one))
    np.testing.assert_allclose(many[0], one, atol=1e-5)

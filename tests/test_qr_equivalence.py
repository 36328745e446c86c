"""The fast QR path (cut model, query rows only, shared KV prefix) equals a naive reference that runs
the full model with eager attention and output_attentions=True, on tiny random Llama and Qwen3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from memory.qr import QRRanker
from memory.qr.prompt import NULL_QUERY, chat_opening

CORPUS = [
    "Caroline went to a support group yesterday and it was powerful.",
    "Melanie painted a sunrise over the lake in 2022.",
    "The kitten is called Miso and she is a grey tabby.",
    "Ben is training for the Lisbon marathon in October.",
]


def naive_head_scores(path: Path, ranker: QRRanker, query: str, docs: list[str], calibrate: bool):
    """Full model, eager attention, output_attentions, a separate full pass for the null query."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    opening = chat_opening(ranker.tokenizer)
    from memory.qr.prompt import build_layout

    def per_head(q: str) -> np.ndarray:
        lay = build_layout(ranker.tokenizer, opening, q, docs)
        with torch.no_grad():
            out = model(torch.tensor([lay.input_ids]), output_attentions=True)
        s, e = lay.query_span
        res = np.zeros((len(out.attentions), model.config.num_attention_heads, len(docs)))
        for layer, att in enumerate(out.attentions):  # (1, H, T, T)
            rows = att[0, :, s:e, :].double().mean(1)  # (H, T)
            for i, (a, b) in enumerate(lay.chunk_spans):
                res[layer, :, i] = rows[:, a:b].sum(-1).numpy()
        return res

    raw = per_head(query)
    return raw, (raw - per_head(NULL_QUERY)) if calibrate else raw


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_fast_path_matches_naive_reference(kind: str, tiny_lm) -> None:
    path = tiny_lm(kind)
    ranker = QRRanker.load(str(path), heads="1-0,3-3", all_layers=True, dtype="float32")
    prompts = [
        ("When did Melanie paint a sunrise?", CORPUS[:4]),
        ("kitten name", [CORPUS[2], CORPUS[0]]),
        ("Which marathon is Ben training for?", CORPUS[:3] + [CORPUS[3] + " " + CORPUS[1]]),
    ]
    for query, docs in prompts:
        for calibrate in (False, True):
            ranker.config.calibrate = calibrate
            fast = ranker.head_scores(query, docs)
            raw, cal = naive_head_scores(path, ranker, query, docs, calibrate)
            np.testing.assert_allclose(fast.raw, raw, atol=1e-4, rtol=0)
            np.testing.assert_allclose(fast.calibrated, cal, atol=1e-4, rtol=0)
            assert raw.max() > 0.1 and raw.std() > 0.01  # peaked attention: the check has teeth


@pytest.mark.parametrize("kind", ["llama"])
def test_cut_model_scores_like_the_full_one(kind: str, tiny_lm) -> None:
    """Loading only the layers up to the last head changes nothing in the scores."""
    path = tiny_lm(kind)
    cut = QRRanker.load(str(path), heads="1-0,1-3", dtype="float32")
    full = QRRanker.load(str(path), heads="1-0,1-3", dtype="float32", all_layers=True)
    assert len(cut.model.layers) == 2 and len(full.model.layers) == 4
    docs = CORPUS[:4]
    np.testing.assert_allclose(cut.score("kitten", docs), full.score("kitten", docs), atol=1e-6)
    ranked = cut.rank("kitten", docs)
    assert [r.index for r in ranked] == list(np.argsort(-np.array(cut.score("kitten", docs)), kind="stable"))
    assert ranked.top_k(2)[0].rank == 1 and ranked[0].text == docs[ranked[0].index]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_rank_many_pads_a_batch_and_equals_rank_per_query(kind: str, tiny_lm) -> None:
    """Prompts of different lengths in one right-padded forward: every query's scores equal its own
    `rank`, with and without calibration, in batches that split the queries unevenly."""
    ranker = QRRanker.load(str(tiny_lm(kind)), heads="1-0,2-1,3-3", dtype="float32")
    queries = ["When did Melanie paint a sunrise?", "kitten name", "Which marathon is Ben training for?"]
    lists = [CORPUS[:4], [CORPUS[2], CORPUS[0]], CORPUS[:3] + [CORPUS[3] + " " + CORPUS[1]]]
    contexts = [["8 May 2023"] * 4, None, ["1 June 2022", None, "", "3 July 2021"]]
    for calibrate in (False, True):
        ranker.config.calibrate = calibrate
        single = [ranker.rank(q, d, contexts=c) for q, d, c in zip(queries, lists, contexts)]
        for batch_size in (1, 2, 16):
            many = ranker.rank_many(queries, lists, contexts, batch_size=batch_size)
            assert len(many) == 3
            for one, batched in zip(single, many):
                assert [r.index for r in batched] == [r.index for r in one]
                np.testing.assert_allclose([r.score for r in batched], [r.score for r in one], atol=1e-4, rtol=0)
        assert len({len(ranker.layout(q, d, c)) for q, d, c in zip(queries, lists, contexts)}) == 3  # padding


def test_rank_many_windows_and_bad_input(tiny_lm) -> None:
    from store import InputError

    small = QRRanker.load(str(tiny_lm("llama")), heads="3-0,3-1", dtype="float32", max_tokens=120,
                          calibrate=False)
    docs = CORPUS * 2  # two or more windows of 120 tokens
    hs = small.head_scores("marathon", docs)
    (many,) = small.head_scores_many(["marathon"], [docs], layers=[3])
    assert hs.windows > 1 and many.windows == hs.windows
    np.testing.assert_allclose(many.raw, hs.raw[3:], atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="one candidate list per query"):
        small.rank_many(["a", "b"], [CORPUS])
    with pytest.raises(InputError, match="candidate 1 must be a non-empty string"):
        small.rank_many(["a"], [["x", " "]])
    with pytest.raises(InputError, match="non-empty list of queries"):
        small.rank_many([], [])
    with pytest.raises(InputError, match="batch_size"):
        small.rank_many(["a"], [CORPUS], batch_size=0)

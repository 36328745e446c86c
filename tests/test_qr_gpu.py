"""The GPU benchmark (benchmarks/qr_gpu.py) in small: runs only where CUDA is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_benchmark_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "qr_gpu.py"), "--small", "--out", str(out)],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {r["batch"] for r in data["runs"]} == {1, 2} and "sdpa" in data["kernels"]
    assert all(r["queries_per_s"] > 0 and r["peak_gpu_mib"] > 0 for r in data["runs"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rank_many_on_gpu_equals_rank(tiny_lm) -> None:
    from memory import QRRanker

    ranker = QRRanker.load(str(tiny_lm("qwen3")), heads="1-0,3-3", device="cuda", dtype="float32",
                           attn_implementation="sdpa", calibrate=False)
    docs = ["The kitten is called Miso.", "Ben runs the Lisbon marathon.", "Melanie painted a sunrise."]
    single = [ranker.score(q, docs) for q in ("kitten", "marathon in Lisbon")]
    many = ranker.score_many(["kitten", "marathon in Lisbon"], [docs, docs])
    for a, b in zip(single, many):
        assert b == pytest.approx(a, abs=1e-4)

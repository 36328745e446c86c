"""The LoCoMo evaluation: results.json rows and summary, report and chart, resumability, CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent.evaluation import EvalConfig, run
from agent.locomo import TINY
from memory import HashingEmbedder, Memory
from memory.generators import Generator
from qrmem.cli import app


class Answers(Generator):
    """Answers 'Miso' to everything and counts its calls."""

    name = "answers"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, messages, options) -> str:
        self.calls += 1
        return "Miso"


def test_eval_writes_rows_summary_report_chart_and_resumes(tmp_path: Path) -> None:
    gen = Answers()
    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64))
    cfg = EvalConfig(out=tmp_path / "out", data=TINY, rerank_k=5, top_n=2, rerank=False)
    summary = run(cfg, mem, gen)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = saved["questions"]
    assert len(rows) == 9 and gen.calls == 9  # every question of both conversations, cat. 5 included
    first = rows[0]
    assert {"question", "answer", "prediction", "category", "evidence", "retrieved", "f1"} <= set(first)
    assert first["question"] == "What is the name of Ana's kitten?" and first["prediction"] == "Miso"
    assert first["f1"] == 1.0 and first["evidence"] == ["D1:3"]
    hits = mem.search("tiny-1", first["question"], k=5)
    assert first["retrieved"] == [t for h in hits for t in h.turn_ids]
    assert summary["scored_questions"] == 8 and saved["summary"] == summary
    assert summary["f1"]["single-hop"] == round(sum(r["f1"] for r in rows if r["category"] == 4) / 5, 4)
    assert summary["f1"]["adversarial"] == 0.0
    assert 0 <= summary["recall@5"]["first_stage"] <= 1
    assert "F1 overall" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    # A re-run answers nothing again.
    again = run(cfg, mem, gen)
    assert gen.calls == 9 and again["f1"] == summary["f1"]


def test_cli_eval_locomo(tmp_path: Path, chat_server) -> None:
    res = CliRunner().invoke(app, [
        "eval", "locomo", "--data", str(TINY), "--conversations", "tiny-2", "--limit", "2",
        "--out", str(tmp_path / "run"), "--reranker", "none", "--generator", "openai:m",
        "--base-url", chat_server["url"]])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["id"] for r in saved["questions"]] == ["tiny-2#0", "tiny-2#1"]
    assert saved["questions"][0]["prediction"] == "Hello!"
    res = CliRunner().invoke(app, ["eval", "locomo", "--data", str(tmp_path / "none.json"),
                                   "--out", str(tmp_path / "x"), "--reranker", "none"])
    assert res.exit_code == 1 and "file not found" in res.stderr


def test_categories_and_retrieval_only(tmp_path: Path) -> None:
    gen = Answers()
    mem = Memory(str(tmp_path / "m.db"), embedder=HashingEmbedder(64))
    cfg = EvalConfig(out=tmp_path / "out", data=TINY, rerank_k=5, rerank=False, categories=[4], answer=False)
    summary = run(cfg, mem, gen)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["questions"]
    assert len(rows) == 5 and {r["category"] for r in rows} == {4}
    assert gen.calls == 0 and all(r["prediction"] is None and r["f1"] is None for r in rows)
    assert summary["f1"]["overall"] is None and summary["recall@5"]["first_stage"] is not None
    assert "| F1 overall | - |" in (tmp_path / "out" / "report.md").read_text()
    res = CliRunner().invoke(app, ["eval", "locomo", "--data", str(TINY), "--categories", "1,9",
                                   "--out", str(tmp_path / "x"), "--reranker", "none"])
    assert res.exit_code == 1 and "--categories takes numbers 1-5" in res.stderr

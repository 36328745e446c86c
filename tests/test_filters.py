"""Search filters: session ids and a date range over free-text session dates, in Memory.search
(every first stage and the reranked path) and in `qrmem search`."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memory import Memory, Reranker, SearchFilter, parse_session_date
from qrmem.cli import app
from store import InputError

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"
# tiny-1: session_1 3 March 2024, session_2 20 April 2024, session_3 2 June 2024 (4 turns each)
DATES = {"session_1": date(2024, 3, 3), "session_2": date(2024, 4, 20), "session_3": date(2024, 6, 2)}


@pytest.mark.parametrize("text, day", [
    ("1:56 pm on 8 May, 2023", date(2023, 5, 8)),
    ("10:37 am on 27 June, 2023", date(2023, 6, 27)),
    ("2023-05-08", date(2023, 5, 8)),
    ("2023-05-08T13:56:00Z", date(2023, 5, 8)),
    ("2023-05-08 13:56:00+02:00", date(2023, 5, 8)),
    ("8 May 2024", date(2024, 5, 8)),
    ("3 Sept 2024", date(2024, 9, 3)),
    ("May 8, 2023", date(2023, 5, 8)),
    ("  march 3rd, 2024 ", date(2024, 3, 3)),
    ("05/08/2023", None),  # day/month order unknown: not guessed
    ("31 February 2023", None),
    ("8 Maybe 2023", None),
    ("last Tuesday", None),
    ("", None),
    (None, None),
])
def test_session_dates_parse_or_are_refused(text: str | None, day: date | None) -> None:
    assert parse_session_date(text) == day


def test_filter_validation() -> None:
    assert SearchFilter.build() is None
    f = SearchFilter.build(["a"], "2024-01-01", date(2024, 2, 1))
    assert f == SearchFilter(frozenset({"a"}), date(2024, 1, 1), date(2024, 2, 1))
    for bad, match in [({"session_ids": "session_1"}, "list of session ids"),
                       ({"session_ids": [1]}, "list of strings"),
                       ({"after": "3 May 2024"}, "YYYY-MM-DD"),
                       ({"before": 20240503}, "YYYY-MM-DD"),
                       ({"after": "2024-05-02", "before": "2024-05-01"}, "later than before")]:
        with pytest.raises(InputError, match=match):
            SearchFilter.build(**bad)
    assert not SearchFilter.build(after="2024-01-01").allows("s", None)  # undated: out of any range
    assert SearchFilter.build(["s"]).allows("s", None)  # no date bound: dates do not matter


@pytest.fixture
def mem(db: str, hashing) -> Memory:
    m = Memory(db, embedder=hashing)
    m.ingest_file(TINY_LOCOMO)
    m.add_session("tiny-1", [{"speaker": "Ana", "text": "Miso the kitten chased a red ball."}],
                  session_id="undated")
    return m


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_filters_mask_before_top_k_in_every_mode(mem: Memory, mode: str) -> None:
    query = "Miso kitten pottery bowl"
    unfiltered = mem.search("tiny-1", query, k=5, mode=mode)
    assert {h.session_id for h in unfiltered} != {"session_2"}  # the filter has work to do
    hits = mem.search("tiny-1", query, k=5, mode=mode, session_ids=["session_2"])
    assert len(hits) == 4 and {h.session_id for h in hits} == {"session_2"}  # all 4 of its turns
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    hits = mem.search("tiny-1", query, k=6, mode=mode, after="2024-04-01")
    assert len(hits) == 6  # k hits although most of the unfiltered top-6 are older
    assert all(DATES[h.session_id] >= date(2024, 4, 1) for h in hits)
    hits = mem.search("tiny-1", query, k=10, mode=mode, before=date(2024, 4, 20))
    assert {h.session_id for h in hits} == {"session_1", "session_2"}  # inclusive; undated left out
    hits = mem.search("tiny-1", query, k=10, mode=mode, session_ids=["undated", "session_3"],
                      after="2024-06-02", before="2024-06-02")
    assert {h.session_id for h in hits} == {"session_3"}
    assert mem.search("tiny-1", query, k=10, mode=mode, session_ids=["undated"])[0].session_id == "undated"
    assert mem.search("tiny-1", query, mode=mode, session_ids=[]) == []
    assert mem.search("tiny-1", query, mode=mode, session_ids=["session_1"], after="2025-01-01") == []


class ShortestFirst(Reranker):
    """A deterministic listwise reranker: shorter candidates score higher."""

    def score(self, query, docs, *, contexts=None, summary=None):
        self.seen = list(docs)
        return [-float(len(d)) for d in docs]


def test_the_reranked_path_honours_the_filter(db: str, hashing) -> None:
    ranker = ShortestFirst()
    mem = Memory(db, embedder=hashing, reranker=ranker, rerank_k=20)
    mem.ingest_file(TINY_LOCOMO)
    hits = mem.search("tiny-1", "Miso kitten", k=3, rerank=True, after="2024-04-01", before="2024-04-30")
    assert len(hits) == 3 and {h.session_id for h in hits} == {"session_2"}
    assert len(ranker.seen) == 4  # the reranker saw only session_2's chunks
    assert [len(h.text) for h in hits] == sorted(len(h.text) for h in hits)
    hits = mem.search("tiny-1", "Miso kitten", k=3, rerank=True, session_ids=["session_3"])
    assert {h.session_id for h in hits} == {"session_3"}
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        mem.search("tiny-1", "Miso", rerank=True, after="soon")


def test_cli_search_filters(db: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "--db", db, str(TINY_LOCOMO), "--embedder", "hashing:64"]).exit_code == 0
    res = runner.invoke(app, ["search", "--db", db, "--user", "tiny-1", "--json", "--k", "10",
                              "--session", "session_1", "--session", "session_3", "Miso"])
    assert res.exit_code == 0, res.output
    assert {h["session_id"] for h in json.loads(res.stdout)} == {"session_1", "session_3"}
    res = runner.invoke(app, ["search", "--db", db, "--user", "tiny-1", "--json", "--after", "2024-04-01",
                              "--before", "2024-05-01", "Miso"])
    assert {h["session_id"] for h in json.loads(res.stdout)} == {"session_2"}
    res = runner.invoke(app, ["search", "--db", db, "--user", "tiny-1", "--after", "April", "Miso"])
    assert res.exit_code == 1 and res.stderr.strip().startswith("error: after must be a date (YYYY-MM-DD)")

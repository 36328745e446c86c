"""Lexical first stage: qrmem's BM25 against what the databases offer, on the same LoCoMo questions.

    python benchmarks/lexical_backends.py [--data ../shared/data/locomo/locomo_dev.json] [--postgres URL]

For each conversation (one qrmem user), the turns as the first stage indexes them (`[date] Speaker:
text`) are ranked for each question by:
- qrmem BM25 (memory/lexical.py, the scores of bm25s' Lucene BM25; stop words, Snowball stems);
- SQLite FTS5 `bm25()` over the same text (tokenizer `porter unicode61`), the query's words OR-ed;
- SQLite FTS5 `bm25()` over qrmem's own tokens (stop words dropped, Snowball stems), to separate the
  ranking function from the tokeniser;
- PostgreSQL `ts_rank_cd` on `to_tsvector('english', ...)` with the query's lexemes OR-ed (when a
  server is given: --postgres or $QRMEM_TEST_POSTGRES_URL).
Recall@5 and nDCG@10 of the evidence turns, category 5 excluded, as in benchmarks/first_stage.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import uuid
from pathlib import Path

from agent.locomo import locomo_questions
from memory.lexical import BM25Index, tokenize
from memory.metrics import ndcg_at_k, recall_at_k
from memory.retrieval import index_text
from store import load_file
from store.chunking import TurnChunker

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"


def corpus(path: Path) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """user -> [(indexed text, turn ids)] in conversation order (chunk = turn, the default)."""
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for s in sorted(load_file(path), key=lambda s: (s.user_id, s.position or 0)):
        for c in TurnChunker().chunk(s.turns):
            ids = tuple(s.turns[p].id or f"{s.session_id}:{p + 1}" for p in c.turn_positions)
            out.setdefault(s.user_id, []).append((index_text(text=c.text, date=s.date), ids))
    return out


def fts_query(words: list[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(words))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--postgres", default=os.environ.get("QRMEM_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    docs = corpus(Path(args.data))
    questions = locomo_questions(json.loads(Path(args.data).read_text()))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE porter USING fts5(user UNINDEXED, pos UNINDEXED, body, "
               "tokenize='porter unicode61')")
    db.execute("CREATE VIRTUAL TABLE stems USING fts5(user UNINDEXED, pos UNINDEXED, body, tokenize='unicode61')")
    db.executemany("INSERT INTO porter(user, pos, body) VALUES (?, ?, ?)",
                   [(u, i, t) for u, rows in docs.items() for i, (t, _) in enumerate(rows)])
    db.executemany("INSERT INTO stems(user, pos, body) VALUES (?, ?, ?)",
                   [(u, i, " ".join(tokenize(t))) for u, rows in docs.items() for i, (t, _) in enumerate(rows)])

    def porter(q: str, user: str) -> list[int]:
        words = [w for w in "".join(ch if ch.isalnum() else " " for ch in q.lower()).split()]
        return [r[0] for r in db.execute(
            "SELECT pos FROM porter WHERE porter MATCH ? AND user = ? ORDER BY bm25(porter) LIMIT 50",
            (fts_query(words), user))] if words else []

    def stems(q: str, user: str) -> list[int]:
        return [r[0] for r in db.execute(
            "SELECT pos FROM stems WHERE stems MATCH ? AND user = ? ORDER BY bm25(stems) LIMIT 50",
            (fts_query(tokenize(q)), user))] if tokenize(q) else []

    rankers = {}
    for user, rows in docs.items():
        bm25 = BM25Index([t for t, _ in rows])
        rankers[(user, "qrmem BM25")] = lambda q, b=bm25: [int(i) for i in (-b.scores(q)).argsort(kind="stable")]
        rankers[(user, "SQLite FTS5 bm25(), porter tokenizer")] = lambda q, u=user: porter(q, u)
        rankers[(user, "SQLite FTS5 bm25(), qrmem's tokens")] = lambda q, u=user: stems(q, u)
    pg = None
    if args.postgres:
        import sqlalchemy as sa

        from store.admin import CreateDatabase, DropDatabase

        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"qrmem_lex_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(CreateDatabase(name))
        pg = sa.create_engine(sa.engine.make_url(args.postgres).set(database=name))
        meta = sa.MetaData()
        turns = sa.Table("turns", meta, sa.Column("user_id", sa.Text), sa.Column("pos", sa.Integer),
                         sa.Column("body", sa.Text))
        meta.create_all(pg)
        with pg.begin() as conn:
            conn.execute(turns.insert(), [{"user_id": u, "pos": i, "body": t}
                                          for u, rows in docs.items() for i, (t, _) in enumerate(rows)])

        def pg_rank(q: str, user: str) -> list[int]:
            vec = sa.func.to_tsvector(sa.literal_column("'english'"), turns.c.body)
            lexemes = sa.func.replace(sa.func.plainto_tsquery(sa.literal_column("'english'"), q).cast(sa.Text), " & ", " | ")
            query = sa.func.to_tsquery(sa.literal_column("'english'"), lexemes)
            with pg.connect() as conn:
                return list(conn.scalars(sa.select(turns.c.pos).where(turns.c.user_id == user, vec.op("@@")(query))
                                         .order_by(sa.func.ts_rank_cd(vec, query).desc(), turns.c.pos).limit(50)))

        for user in docs:
            rankers[(user, "PostgreSQL ts_rank_cd, english")] = lambda q, u=user: pg_rank(q, u)
    names = sorted({name for _, name in rankers}, key=lambda n: (not n.startswith("qrmem"), n))
    print(f"{len(questions)} questions (category 5 excluded)")
    print("| lexical ranking | R@5 | R@10 | nDCG@10 |\n|---|---|---|---|")
    for name in names:
        r5, r10, nd = [], [], []
        for q in questions:
            order = rankers[(q.user_id, name)](q.question)
            retrieved = [docs[q.user_id][i][1] for i in order[:50]]
            r5.append(recall_at_k(retrieved, q.evidence, 5))
            r10.append(recall_at_k(retrieved, q.evidence, 10))
            nd.append(ndcg_at_k(retrieved, q.evidence, 10))
        print(f"| {name} | {statistics.mean(r5):.3f} | {statistics.mean(r10):.3f} | {statistics.mean(nd):.3f} |")
    if pg is not None:
        pg.dispose()
        with admin.connect() as conn:
            conn.execute(DropDatabase(name))


if __name__ == "__main__":
    main()

"""Reliability on SQLite and PostgreSQL: many processes at once, SIGKILL mid-ingest, `qrmem check`,
real deletion with summary roll-back, user isolation on every path, and the security rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from memory import HashingEmbedder, Memory, Reranker, Summarizer
from memory.generators import Generator
from qrmem.cli import app
from store import ConcurrentUpdateError, NotFoundError, Store

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run_script(name: str, *args: str, timeout: int = 600) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


# -- many processes ------------------------------------------------------------------------------------

def _load(db: str, writers: int, sessions: int, shared: int, readers: int) -> None:
    out = run_script("store_load.py", "--db", db, "--writers", str(writers), "--sessions", str(sessions),
                     "--shared", str(shared), "--readers", str(readers))
    expected = writers * (sessions - shared) + shared
    assert out["writer_errors"] == 0 and out["reader_errors"] == 0, out["error_samples"]
    assert (out["expected_sessions"], out["found_sessions"]) == (expected, expected)
    assert out["lost"] == out["duplicated"] == out["unexpected"] == 0
    assert out["sessions_with_wrong_turns"] == 0
    assert out["users_with_inconsistent_summaries"] == 0  # checked before and after a final catch-up
    assert out["leaked_hits"] == 0 and out["queries"] >= 5 * readers
    # Every shared session was stored by exactly one writer; the others found it unchanged.
    assert sum(s.get("added", 0) for s in out["writer_statuses"]) == expected
    assert sum(s.get("unchanged", 0) for s in out["writer_statuses"]) == (writers - 1) * shared
    assert out["check_ok"], out["check_problems"]
    counts = Store(db).counts()
    assert (counts.sessions, counts.turns, counts.embeddings) == (expected, 5 * expected, 5 * expected)


def test_writers_and_readers_in_parallel_processes(db: str) -> None:
    _load(db, writers=4, sessions=50, shared=10, readers=4)


@pytest.mark.slow
def test_full_load_four_writers_two_hundred_sessions_four_readers(db: str) -> None:
    _load(db, writers=4, sessions=200, shared=20, readers=4)


# -- SIGKILL in the middle of an ingest --------------------------------------------------------------

def _crash(db: str, runs: int) -> None:
    out = run_script("crash_ingest.py", "--db", db, "--runs", str(runs), "--turns", "300")
    assert out["failures"] == [] and out["survived"] == runs, out
    assert out["killed_inside_add_session"] >= 1  # the kills did land inside writes
    report = Store(db).check()
    assert report.ok, report.problems
    assert all(s.turns == 300 for s in Store(db).sessions("crash-user"))


def test_sigkill_mid_ingest_leaves_whole_sessions_or_none(db: str) -> None:
    _crash(db, runs=3)


@pytest.mark.slow
def test_sigkill_mid_ingest_many_runs(db: str) -> None:
    _crash(db, runs=20)


# -- qrmem check ---------------------------------------------------------------------------------------

def test_check_passes_a_healthy_store_and_names_damage(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(32))
    mem.add_session("ann", [{"speaker": "ann", "text": f"line {i}"} for i in range(4)], session_id="s1")
    mem.add_session("ann", [{"speaker": "ann", "text": "other"}], session_id="s2")
    res = runner.invoke(app, ["check", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ok"] is True
    # Damage it the way a buggy writer or a bad manual edit would: a session loses its turns,
    # a vector gets the wrong size.
    with mem.store.engine.begin() as conn:
        s2 = conn.scalar(sa.text("SELECT id FROM sessions WHERE external_id = 's2'"))
        conn.execute(sa.text("DELETE FROM turns WHERE session_id = :s"), {"s": s2})
        conn.execute(sa.text("UPDATE embeddings SET dim = 7 WHERE chunk_id = (SELECT MIN(chunk_id) FROM embeddings)"))
    res = runner.invoke(app, ["check", "--db", db])
    assert res.exit_code == 1
    assert "problem: sessions without turns (half-written): 1" in res.output
    assert "problem: chunks covering no turn: 1" in res.output
    assert "problem: embeddings whose size is not dim x 4 bytes: 1" in res.output
    assert "DAMAGED" in res.output


def test_check_on_a_sqlite_file_with_broken_foreign_keys(sqlite_db: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(32))
    mem.add_session("ann", [{"speaker": "ann", "text": "hello"}], session_id="s1")
    mem.store.close()
    import sqlite3

    con = sqlite3.connect(sqlite_db)  # foreign keys off on this raw connection: an orphan is possible
    con.execute("DELETE FROM sessions")
    con.commit()
    con.close()
    report = Store(sqlite_db).check()
    assert not report.ok
    assert any(p.startswith("foreign keys violated") for p in report.problems)
    assert "turns without a session: 1" in report.problems


# -- deletion ------------------------------------------------------------------------------------------

class IdSummarizer(Summarizer):
    """Deterministic summaries: a session's summary is its first turn; a roll appends it."""

    def __init__(self) -> None:
        class Never(Generator):
            name = "ids"

            def generate(self, messages, options):
                raise AssertionError("not used")

        super().__init__(Never())
        self.rolls = 0

    def summarize_session(self, turns, date):
        return turns[0].text

    def roll(self, previous, session_summary, date):
        self.rolls += 1
        return session_summary if not previous else f"{previous} | {session_summary}"


def _conversation(mem: Memory, user: str) -> str | None:
    return next((s.text for s in mem.summaries(user) if s.kind == "conversation"), None)


def test_deleting_a_session_removes_everything_and_rolls_the_summary_back(db: str) -> None:
    mem = Memory(db, embedder=HashingEmbedder(32))
    summ = IdSummarizer()
    rolling = Memory(mem.store, embedder=HashingEmbedder(32), summarizer=summ)
    for i in range(1, 4):
        rolling.add_session("ann", [{"speaker": "ann", "text": f"secret {i}"},
                                    {"speaker": "bot", "text": f"noted {i}"}], session_id=f"s{i}")
    assert _conversation(mem, "ann") == "secret 1 | secret 2 | secret 3"
    before = mem.store.counts()
    # Without a summarizer: the conversation summary goes back to before s2, and says so.
    result = mem.delete_session("ann", "s2")
    assert (result.turns, result.chunks) == (2, 2)
    # Versions 2 and 3 held s2; version 1 is written again as version 4 (numbers are never reused).
    assert result.conversation_rolled_back_to == 4 and result.needs_resummarize
    assert _conversation(mem, "ann") == "secret 1"
    assert [s.version for s in mem.summaries("ann") if s.kind == "conversation"] == [4]
    after = mem.store.counts()
    assert (before.turns - after.turns, before.chunks - after.chunks, before.embeddings - after.embeddings) == (2, 2, 2)
    assert result.summaries == 1 + 2  # s2's own + the 2 conversation versions that held it
    assert before.summaries - after.summaries == 3 - 1  # ... and version 1 copied forward
    with mem.store.engine.connect() as conn:  # nothing of s2 is left anywhere in the database
        for table, column in (("turns", "text"), ("chunks", "text"), ("summaries", "text")):
            rows = conn.execute(sa.select(sa.column(column)).select_from(sa.table(table))).scalars().all()
            assert not any("secret 2" in r or "noted 2" in r for r in rows), table
    assert all("secret 2" not in h.text for h in mem.search("ann", "secret 2", k=10))
    # `summarize` rolls the later sessions in again.
    assert rolling.summarize("ann") == 0
    assert _conversation(mem, "ann") == "secret 1 | secret 3"
    # With a summarizer, deletion re-rolls at once.
    rolling.delete_session("ann", "s1")
    assert _conversation(mem, "ann") == "secret 3"
    assert mem.store.check().ok
    # Replacing a session takes its old content out of the conversation summary too.
    rolling.add_session("ann", [{"speaker": "ann", "text": "secret 4"}], session_id="s4")
    assert _conversation(mem, "ann") == "secret 3 | secret 4"
    rolling.add_session("ann", [{"speaker": "ann", "text": "secret 3, corrected"}], session_id="s3",
                        replace=True)
    assert _conversation(mem, "ann") == "secret 3, corrected | secret 4"
    # A process still rolling from a version that was rolled back can never append.
    stale = mem.store.conversation_version("ann") - 1
    with pytest.raises(ConcurrentUpdateError):
        mem.store.add_summary("ann", "conversation", "secret 2 leaks back", if_version=stale)
    # Deleting the user removes every row that was theirs.
    mem.delete_user("ann")
    assert mem.store.counts().as_dict() == {"users": 0, "sessions": 0, "turns": 0, "chunks": 0,
                                            "embeddings": 0, "summaries": 0}


def test_secure_delete_leaves_no_copy_in_the_sqlite_files(sqlite_db: str) -> None:
    secret = "my bank PIN is 99173254"
    mem = Memory(sqlite_db, embedder=HashingEmbedder(32), secure_delete=True)
    mem.add_session("ann", [{"speaker": "ann", "text": secret}], session_id="s1")
    mem.add_session("ann", [{"speaker": "ann", "text": "something harmless"}], session_id="s2")
    files = [Path(sqlite_db), Path(sqlite_db + "-wal")]
    assert any(secret.encode() in f.read_bytes() for f in files if f.exists())
    res = runner.invoke(app, ["delete", "--db", sqlite_db, "--user", "ann", "--session", "s1", "--yes", "--secure"])
    assert res.exit_code == 0, res.output
    assert "deleted session 's1' of user 'ann': 1 turns, 1 chunks" in res.output
    mem.store.close()
    for f in files:
        if f.exists():
            assert secret.encode() not in f.read_bytes(), f
    assert [s.session_id for s in Store(sqlite_db).sessions("ann")] == ["s2"]


# -- user isolation on every path -----------------------------------------------------------------

class Recording(Reranker):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, query, docs, *, contexts=None, summary=None):
        self.seen += list(docs) + [c for c in contexts or [] if c] + ([summary] if summary else [])
        return [0.0] * len(docs)


def test_one_user_can_never_reach_another_users_memory(db: str, tmp_path: Path) -> None:
    rec = Recording()
    mem = Memory(db, embedder=HashingEmbedder(64), summarizer=IdSummarizer(), reranker=rec,
                 rerank_context="summary")
    mem.add_session("alice", [{"speaker": "alice", "text": "alice secret: the safe code is 4471"}], session_id="s1")
    mem.add_session("bob", [{"speaker": "bob", "text": "bob likes trains"}], session_id="s1")
    mem.add_session("bob", [{"speaker": "bob", "text": "bob owns a kite"}], session_id="s2")
    query = "alice secret safe code 4471"
    # search, every first stage, and the reranker's candidates, contexts and summary
    for mode in ("dense", "bm25", "hybrid"):
        assert {h.user_id for h in mem.search("bob", query, k=10, mode=mode)} == {"bob"}
    mem.search("bob", query, k=10, rerank=True)
    assert rec.seen and not any("4471" in x for x in rec.seen)
    # summaries
    assert not any("4471" in s.text for s in mem.summaries("bob"))
    with pytest.raises(NotFoundError):
        mem.store.add_summary("bob", "session", "x", session_id="s3")  # no such session for bob
    # export
    assert "4471" not in json.dumps(mem.export_user("bob"))
    out = mem.export_to("bob", tmp_path / "bob.json")
    assert "4471" not in out.read_text() and out.stat().st_mode & 0o777 == 0o600
    # deletion by a session id both users have touches only the named user
    mem.delete_session("bob", "s1")
    assert [s.session_id for s in mem.sessions("alice")] == ["s1"]
    assert "4471" in mem.search("alice", query, k=1)[0].text
    with pytest.raises(NotFoundError):
        mem.delete_session("bob", "s1")
    mem.delete_user("bob")
    assert [u.user_id for u in mem.users()] == ["alice"]
    assert mem.search("bob", query) == []
    with pytest.raises(NotFoundError):
        mem.summaries("bob")


# -- security rules, checked on the source ---------------------------------------------------------

LIBRARY = ("store", "memory", "agent", "qrmem", "demos")
EVERYTHING = (*LIBRARY, "benchmarks")


@pytest.mark.parametrize("pattern, why, dirs", [
    (r"\bimport pickle\b|\bfrom pickle\b|\bcPickle\b|\bdill\b|\bjoblib\b", "no pickle for stored data", EVERYTHING),
    (r"allow_pickle\s*=\s*True", "numpy files are loaded without pickle", EVERYTHING),
    (r"torch\.load\((?![^)]*weights_only=True)", "torch.load only with weights_only=True", EVERYTHING),
    (r"trust_remote_code\s*=\s*True\s*[,)]", "trust_remote_code only when the caller asks for it", EVERYTHING),
])
def test_security_rules_hold_in_the_source(pattern: str, why: str, dirs: tuple[str, ...]) -> None:
    sources = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sources
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert hits == [], why


def _sql_arguments_built_from_strings(path: Path) -> list[str]:
    """Calls of text(), exec_driver_sql() or execute() whose SQL argument is not a plain literal:
    an f-string, a % or + expression, a .format() call, or a variable (the library writes SQL
    with SQLAlchemy constructs; raw SQL only as literals)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        owner = getattr(node.func.value, "id", None) if isinstance(node.func, ast.Attribute) else None
        if name == "text" and owner not in (None, "sa", "sqlalchemy", "sql"):
            continue  # e.g. hypothesis' st.text(...), not SQLAlchemy's text()
        arg = node.args[0]
        built = isinstance(arg, ast.JoinedStr | ast.BinOp) or (
            isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format")
        choices = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]  # "A" if x else "B"
        literal = all(isinstance(c, ast.Constant) and isinstance(c.value, str) for c in choices)
        raw = name in ("text", "exec_driver_sql") and not literal
        if (name in ("text", "exec_driver_sql", "execute") and built) or raw:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_sql_is_built_from_strings_anywhere_in_the_tree(tmp_path: Path) -> None:
    """The library, the benchmarks, the demos and the tests themselves: set-up code that creates or
    drops a database quotes the name through SQLAlchemy (`store.admin`), like everything else."""
    sources = [p for d in (*EVERYTHING, "tests") for p in (ROOT / d).rglob("*.py")]
    assert {p.relative_to(ROOT).parts[0] for p in sources} >= {*EVERYTHING, "tests"}
    hits = [f"{p.parent.name}/{h}" for p in sources for h in _sql_arguments_built_from_strings(p)]
    assert hits == []
    # The check itself finds what it is for, even spread over lines.
    bad = tmp_path / "bad.py"
    bad.write_text('conn.execute(\n    text(\n        f"SELECT * FROM users WHERE id = {uid}"))\n'
                   'conn.exec_driver_sql(query)\ncur.execute("DELETE FROM t WHERE a = %s" % a)\n'
                   'conn.execute(text("SELECT 1"))\nconn.execute(sa.text(f\'CREATE DATABASE "{name}"\'))\n'
                   'st.text(st.characters(codec="utf-8"))\n')
    assert sorted(h.rsplit(":", 1)[1] for h in _sql_arguments_built_from_strings(bad)) == ["2", "4", "5", "7"]


def test_trust_remote_code_is_off_unless_asked_and_warns_when_on(tiny_lm, qr_cache,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from memory import QRRanker

    path = tiny_lm("llama")
    with caplog.at_level("WARNING"):
        QRRanker.load(str(path), heads="1-0")
    assert "trust_remote_code" not in caplog.text
    with caplog.at_level("WARNING"):
        QRRanker.load(str(path), heads="1-0", trust_remote_code=True)
    assert "trust_remote_code=True: code shipped with" in caplog.text
    assert "--trust-remote-code" in runner.invoke(app, ["search", "--help"]).output

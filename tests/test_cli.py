"""The `qrmem` command line, end to end on real SQLite files; every bad input exits 1 with one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qrmem.cli import app
from store import Store

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"
runner = CliRunner()
HASH = ["--embedder", "hashing:64"]


def qrmem(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_ingest_search_info_sessions(db: str) -> None:
    res = qrmem("ingest", "--db", db, str(TINY_LOCOMO), *HASH)
    assert res.exit_code == 0, res.output
    assert "5 sessions added, 0 replaced, 0 unchanged; 20 turns, 20 chunks" in res.stdout
    res = qrmem("ingest", "--db", db, str(TINY_LOCOMO), *HASH)
    assert "0 sessions added, 0 replaced, 5 unchanged" in res.stdout

    res = qrmem("info", "--db", db, "--json")
    assert json.loads(res.stdout) == {"users": 2, "sessions": 5, "turns": 20, "chunks": 20,
                                      "embeddings": 20, "summaries": 0}
    res = qrmem("search", "--db", db, "--user", "tiny-1", "--k", "2", "--json", "Miso kitten name")
    hits = json.loads(res.stdout)
    assert len(hits) == 2
    assert hits[0]["turn_ids"] == ["D1:3"] and hits[0]["session_id"] == "session_1"
    assert hits[0]["text"] == "Ana: Her name is Miso, she is a tiny grey tabby."
    assert set(hits[0]) >= {"text", "score", "session_id", "turn_ids", "session_date", "rank"}
    res = qrmem("sessions", "--db", db, "--user", "tiny-2", "--json")
    assert [s["session_id"] for s in json.loads(res.stdout)] == ["session_1", "session_2"]


def test_env_var_selects_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("QRMEM_DB", str(db))
    assert qrmem("ingest", str(TINY_LOCOMO), *HASH).exit_code == 0
    assert Store(db).counts().sessions == 5


def test_delete_export_import(db: str, tmp_path: Path) -> None:
    qrmem("ingest", "--db", db, str(TINY_LOCOMO), *HASH)
    out = tmp_path / "export.json"
    res = qrmem("export", "--db", db, "--user", "tiny-1", "--out", str(out))
    assert res.exit_code == 0 and stat.S_IMODE(os.stat(out).st_mode) == 0o600
    res = qrmem("delete", "--db", db, "--user", "tiny-1", "--session", "session_2", input="n\n")
    assert res.exit_code == 1 and Store(db).counts().sessions == 5
    res = qrmem("delete", "--db", db, "--user", "tiny-1", "--session", "session_2", input="y\n")
    assert res.exit_code == 0 and Store(db).counts().sessions == 4
    assert qrmem("delete", "--db", db, "--user", "tiny-1", "--yes").exit_code == 0
    assert Store(db).counts().sessions == 2
    res = qrmem("import", "--db", db, str(out), *HASH)
    assert res.exit_code == 0 and "3 sessions added" in res.stdout
    assert Store(db).counts().as_dict()["turns"] == 20


def _bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def _locomo(turns: list[dict], sid: str = "x") -> str:
    return json.dumps([{"sample_id": sid, "conversation": {
        "speaker_a": "A", "speaker_b": "B", "session_1": turns}}])


@pytest.mark.parametrize("name, content, expected", [
    ("broken.json", '[{"sample_id": "x", ', "broken.json: malformed JSON"),
    ("missing.json", _locomo([{"speaker": "A"}]),
     "missing.json: record #1 (x), field conversation.session_1[0].text: missing"),
    ("empty.json", _locomo([{"speaker": "A", "text": ""}]),
     "empty.json: record #1 (x), field conversation.session_1[0].text: text must not be empty"),
    ("stranger.json", _locomo([{"speaker": "Q", "text": "hi"}]), "unknown speaker 'Q'"),
    ("dupes.json", json.dumps([json.loads(_locomo([{"speaker": "A", "text": "hi"}]))[0]] * 2),
     "session 'session_1' of user 'x' appears twice"),
])
def test_bad_input_exits_with_one_clear_line_and_writes_nothing(db: str, tmp_path: Path, name: str,
                                                                 content: str, expected: str) -> None:
    assert qrmem("ingest", "--db", db, str(TINY_LOCOMO), *HASH).exit_code == 0
    before = Store(db).counts()
    # A valid sample first: the bad record later in the file must still stop everything.
    good_then_bad = json.loads(TINY_LOCOMO.read_text())[:1]
    good_then_bad[0]["sample_id"] = "new-user"
    try:
        good_then_bad.extend(json.loads(content))
        content = json.dumps(good_then_bad)
    except json.JSONDecodeError:
        pass
    res = qrmem("ingest", "--db", db, str(_bad(tmp_path, name, content)), *HASH)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert Store(db).counts() == before


def test_unopenable_db_and_unknown_model_and_missing_user(tmp_path: Path, db: str) -> None:
    res = qrmem("ingest", "--db", str(tmp_path / "no" / "such" / "dir.db"), str(TINY_LOCOMO), *HASH)
    assert res.exit_code == 1 and "directory" in res.stderr and "does not exist" in res.stderr
    res = qrmem("ingest", "--db", db, str(TINY_LOCOMO), "--embedder", str(tmp_path / "no-model"))
    assert res.exit_code == 1 and "cannot load sentence-transformers model" in res.stderr
    assert Store(db).counts().sessions == 0
    res = qrmem("sessions", "--db", db, "--user", "ghost")
    assert res.exit_code == 1 and "no user 'ghost'" in res.stderr
    res = qrmem("ingest", "--db", db, str(tmp_path / "nope.json"), *HASH)
    assert res.exit_code == 1 and "nope.json: file not found" in res.stderr


def test_changed_session_needs_replace(db: str, tmp_path: Path) -> None:
    qrmem("ingest", "--db", db, str(TINY_LOCOMO), *HASH)
    data = json.loads(TINY_LOCOMO.read_text())
    data[0]["conversation"]["session_1"][0]["text"] = "Hello again"
    path = _bad(tmp_path, "changed.json", json.dumps(data))
    res = qrmem("ingest", "--db", db, str(path), *HASH)
    assert res.exit_code == 1 and "tiny-1/session_1" in res.stderr and "--replace" in res.stderr
    res = qrmem("ingest", "--db", db, str(path), "--replace", *HASH)
    assert res.exit_code == 0 and "1 replaced" in res.stdout


def test_console_script_help_is_light() -> None:
    """`qrmem --help` works as an installed command, and the core imports no ML stack."""
    res = subprocess.run(["qrmem", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "ingest" in res.stdout
    code = ("import sys, store, memory, qrmem.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)

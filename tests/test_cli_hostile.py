"""Hostile and careless input at the edges (issue 11: the CLI, files, secrets): every case below went
wrong before (a whole user deleted, a store overwritten, a password printed, a traceback, a hang, a
session reported saved that was never stored, an empty store created by a typo), and each test
checks the whole class, through the CLI and through the Python API, on real files and processes."""

from __future__ import annotations

import json
import os
import re
import resource
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import MemoryAgent
from agent.evaluation import EvalConfig, parse_categories
from agent.evaluation import run as run_eval
from agent.locomo import load_records, parse_conversations
from memory import HashingEmbedder, Memory, load_embedder, load_reranker
from memory.generators import Generator, OpenAIGenerator, load_generator
from qrmem.cli import app
from store import InputError, OutputError, QrmemError, Store, StoreError, make_chunker
from store.files import write_private
from store.redact import RedactingFilter, redact

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "agent" / "data" / "tiny_locomo.json"
HASH = ["--embedder", "hashing:64"]
runner = CliRunner()


def qrmem(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def one_error_line(res, *expected: str) -> str:
    """The command failed with exactly one `error:` line on stderr holding every expected piece."""
    assert res.exit_code == 1, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


@pytest.fixture
def stored(sqlite_db: str) -> str:
    """A SQLite store holding the tiny LoCoMo conversations (users tiny-1 and tiny-2)."""
    assert qrmem("ingest", "--db", sqlite_db, str(TINY), *HASH).exit_code == 0
    return sqlite_db


def run_cli(*args: str, limit_bytes: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m qrmem ARGS` in a real process (optionally with a file-size limit: writes beyond
    it fail as they do on a full disk)."""
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "qrmem", *args], capture_output=True, text=True,
                          preexec_fn=limit, env={**os.environ, **(env or {})}, check=False)


# -- 1. an empty value is an error, never "absent" -------------------------------------------------

def test_an_empty_session_id_deletes_nothing(stored: str) -> None:
    before = Store(stored).counts()
    for value in ("", " ", "\t"):
        one_error_line(qrmem("delete", "--db", stored, "--user", "tiny-1", "--session", value, "--yes"),
                       "--session is empty")
    assert Store(stored).counts() == before
    mem = Memory(stored)
    with pytest.raises(InputError, match="session id must not be empty"):
        mem.delete_session("tiny-1", "")
    with pytest.raises(InputError, match="empty"):
        mem.store.add_summary("tiny-1", "session", "x", session_id="")  # not a conversation summary
    assert Store(stored).counts() == before


@pytest.mark.parametrize("args, option", [
    (["search", "--db", "DB", "--user", "tiny-1", "--embedder", "", "kitten"], "--embedder"),
    (["search", "--db", "DB", "--user", "", "kitten"], "--user"),
    (["sessions", "--db", "DB", "--user", " "], "--user"),
    (["ingest", "--db", "DB", str(TINY), "--embedder", " "], "--embedder"),
    (["rank", str(TINY), "--query", ""], "--query"),
    (["summarize", "--db", "DB", "--user", "tiny-1", "--generator", "openai:m", "--base-url", ""], "--base-url"),
    (["chat", "--db", "DB", "--user", "tiny-1", "--generator", "openai:m", "--base-url", " "], "--base-url"),
    (["eval", "locomo", "--data", str(TINY), "--conversations", ""], "--conversations"),
    (["eval", "locomo", "--data", str(TINY), "--categories", " "], "--categories"),
    (["heads", "detect", "--data", str(TINY), "--out", "h.json", "--model", ""], "--model"),
    (["heads", "detect", "--data", str(TINY), "--out", "h.json", "--db", ""], "--db"),
    (["train", "--data", str(TINY), "--out", "m", "--val-conversations", ""], "--val-conversations"),
    (["search", "--user", "tiny-1", "--db", "", "kitten"], "--db"),
])
def test_every_optional_value_given_empty_is_refused(stored: str, args: list[str], option: str) -> None:
    before = Store(stored).counts()
    one_error_line(qrmem(*[stored if a == "DB" else a for a in args]), f"{option} is empty")
    assert Store(stored).counts() == before


def test_empty_specs_and_lists_are_errors_in_the_library(tmp_path: Path) -> None:
    for call in (lambda: load_embedder(""), lambda: load_embedder("hashing:"), lambda: load_reranker("qr:"),
                 lambda: load_generator("transformers:"), lambda: load_generator("openai:"),
                 lambda: make_chunker("window:"), lambda: parse_categories(""),
                 lambda: parse_conversations(""), lambda: parse_conversations("conv-1,,conv-2")):
        with pytest.raises(InputError):
            call()
    from memory.models import resolve

    with pytest.raises(InputError, match="empty"):
        resolve("")
    with pytest.raises(InputError, match="conversations"):
        load_records(TINY, conversations=[])
    mem = Memory(str(tmp_path / "e.db"), embedder=HashingEmbedder(16))
    with pytest.raises(InputError, match="empty list"):
        run_eval(EvalConfig(out=tmp_path / "out", data=TINY, conversations=[], rerank=False, answer=False),
                 mem, None)  # type: ignore[arg-type]
    assert mem.store.counts().sessions == 0  # refused before anything was ingested
    assert parse_conversations(None) is None and parse_categories(None) is None  # absent: all
    res = qrmem("rank", str(TINY), "--k", "0")
    one_error_line(res, "--k must be at least 1")


# -- 2. files are written through a new file renamed into place, never through a link --------------

def test_export_refuses_the_store_links_devices_directories_and_existing_files(stored: str, tmp_path: Path) -> None:
    before = Memory(stored).export_user("tiny-1")
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    victim.chmod(0o644)
    (tmp_path / "link.json").symlink_to(victim)
    (tmp_path / "existing.json").write_text("keep me")
    cases = {
        stored: "is the store itself",
        stored + "-wal": "is the store itself",
        stored + "-shm": "is the store itself",
        str(tmp_path / "link.json"): "symbolic link",
        str(tmp_path / "existing.json"): "already exists; pass --force",
        str(tmp_path): "is a directory",
        str(tmp_path / "missing" / "x.json"): "does not exist",
        "/dev/full": "not a regular file",
        "/dev/null": "not a regular file",
    }
    for out, expected in cases.items():
        one_error_line(qrmem("export", "--db", stored, "--user", "tiny-1", "--out", out), expected)
        with pytest.raises(OutputError, match=expected.split(";")[0]):
            Memory(stored).export_to("tiny-1", out)
        if "already exists" not in expected:  # --force replaces an existing file, nothing else
            one_error_line(qrmem("export", "--db", stored, "--user", "tiny-1", "--out", out, "--force"), expected)
            with pytest.raises(OutputError, match=expected):
                Memory(stored).export_to("tiny-1", out, force=True)
    # the symlink through the directory to the store is the store too; so is a hard link to it
    (tmp_path / "alias").symlink_to(Path(stored).parent)
    os.link(stored, tmp_path / "hard.db")
    for out in (str(tmp_path / "alias" / Path(stored).name), str(tmp_path / "hard.db")):
        one_error_line(qrmem("export", "--db", stored, "--user", "tiny-1", "--out", out, "--force"),
                       "is the store itself")
    assert Memory(stored).export_user("tiny-1") == before and Store(stored).check().ok
    assert victim.read_text() == "someone else's file" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert (tmp_path / "existing.json").read_text() == "keep me"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_force_replaces_the_name_never_the_file_behind_it(stored: str, tmp_path: Path) -> None:
    out, other = tmp_path / "export.json", tmp_path / "other-name.json"
    out.write_text("old")
    os.link(out, other)  # the same file under another name: it must keep its content
    res = qrmem("export", "--db", stored, "--user", "tiny-1", "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["user_id"] == "tiny-1" and other.read_text() == "old"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_ino != other.stat().st_ino
    path = Memory(stored).export_to("tiny-2", tmp_path / "api.json")
    assert json.loads(path.read_text())["user_id"] == "tiny-2" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(OutputError, match="already exists"):
        Memory(stored).export_to("tiny-2", tmp_path / "api.json")


def test_a_write_the_system_refuses_is_one_line_and_leaves_no_file(stored: str, tmp_path: Path) -> None:
    out = tmp_path / "big.json"
    res = run_cli("export", "--db", stored, "--user", "tiny-1", "--out", str(out), limit_bytes=100)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: ") and "larger than this system allows" in res.stderr
    assert not out.exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_every_file_qrmem_writes_refuses_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from memory.qr.detect import Detection, write
    from memory.qr.heads import Head

    victim = tmp_path / "victim"
    victim.write_text("not yours")
    det = Detection(model="m", method="qr", quality={"qr": np.ones((2, 2)), "core": np.ones((2, 2))},
                    heads=[Head(1, 0)], queries=3, stability=1.0)
    # head files (and their heatmap)
    (tmp_path / "heads.json").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        write(det, tmp_path / "heads.json", force=True)
    (tmp_path / "h2.png").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        write(det, tmp_path / "h2.json", force=True)
    head_file, png = write(det, tmp_path / "h3.json")
    with pytest.raises(OutputError, match="already exists"):
        write(det, head_file)
    assert json.loads(head_file.read_text())["heads"] == ["1-0"] and png.read_bytes()[:4] == b"\x89PNG"
    # the evaluation's results, refused before any work
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").symlink_to(victim)
    mem = Memory(str(tmp_path / "e.db"), embedder=HashingEmbedder(16))
    with pytest.raises(OutputError, match="symbolic link"):
        run_eval(EvalConfig(out=out, data=TINY, rerank=False, answer=False), mem, None)  # type: ignore[arg-type]
    # a trained model's files, refused before training
    from memory.qr.train import ATTN_FILE, TrainConfig, train

    model = tmp_path / "model"
    model.mkdir()
    (model / ATTN_FILE).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        train(None, [], [], model, TrainConfig())
    # the model cache
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memory import models as loading

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    monkeypatch.setenv("QRMEM_CACHE", str(tmp_path / "cache"))
    entry = loading.cache_root() / "gguf" / loading.file_digest(gguf)[:32]
    entry.parent.mkdir(parents=True)
    entry.symlink_to(tmp_path)
    with pytest.raises(QrmemError, match="symbolic link"):
        loading.gguf_to_dir(gguf)
    assert victim.read_text() == "not yours"
    # and the primitive itself: never through a link, replacing only with force
    with pytest.raises(OutputError, match="symbolic link"):
        write_private(tmp_path / "heads.json", "x", force=True)
    assert write_private(tmp_path / "new.txt", "y").read_text() == "y"


# -- 4. secrets never reach a message --------------------------------------------------------------

SECRET = "Hunter2Secret"


@pytest.mark.parametrize("url", [
    f"mysql://u:{SECRET}@host/db",                      # driver missing
    f"postgresql+psycopg2://u:{SECRET}@h/db",           # driver missing
    f"postgresql+psycopg://u:{SECRET}@h:abc/db",        # malformed: the port is not a number
    f"postgresql+psycopg://u@127.0.0.1:1/db?password={SECRET}",  # in the query string; refused
])
def test_database_passwords_are_never_printed(url: str, tmp_path: Path) -> None:
    line = one_error_line(qrmem("ingest", "--db", url, str(TINY), *HASH))
    assert SECRET not in line and "***" in line
    res = run_cli("info", env={"QRMEM_DB": url})
    assert res.returncode == 1 and SECRET not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    with pytest.raises(QrmemError) as err:
        Memory(url, embedder=HashingEmbedder(8)).sessions("u")
    assert SECRET not in str(err.value)


def test_api_keys_and_url_credentials_are_never_printed(chat_server, stored: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # A key with a stray newline or a non-ASCII character: refused up front, the key not shown.
    for key in (f"sk-{SECRET}\n", f"sk-{SECRET}é"):
        monkeypatch.setenv("MY_LLM_KEY", key)
        line = one_error_line(qrmem("summarize", "--db", stored, "--user", "tiny-1", "--generator", "openai:m",
                                    "--base-url", chat_server["url"], "--api-key-env", "MY_LLM_KEY"),
                              "$MY_LLM_KEY holds")
        assert SECRET not in line
        with pytest.raises(InputError) as err:
            OpenAIGenerator("m", base_url=chat_server["url"], api_key_env="MY_LLM_KEY")
        assert SECRET not in str(err.value)
    assert chat_server["requests"] == []
    # Credentials inside --base-url: not in the error, the retry warnings or the CLI's output.
    monkeypatch.delenv("MY_LLM_KEY")
    url = chat_server["url"].replace("http://", f"http://user:{SECRET}@")
    chat_server["script"] = [(503, {"error": "busy"})] * 2 + [(400, {"error": "no"})]
    gen = OpenAIGenerator("m", base_url=url, retries=3, backoff=0.01)
    with caplog.at_level("WARNING"), pytest.raises(QrmemError) as err:
        gen.complete([{"role": "user", "content": "hi"}])
    assert "retrying" in caplog.text and SECRET not in caplog.text and SECRET not in str(err.value)
    chat_server["script"] = [(400, {"error": "no"})]
    res = qrmem("chat", "--db", stored, "--user", "tiny-1", "--generator", "openai:m", "--base-url", url,
                "--no-rerank", "--no-summarize", input="hello\n/end\n")
    assert "refused the request" in res.stderr and SECRET not in res.output


def test_one_redaction_for_every_message_and_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-9f8e7d6c5b4a")
    text = ("mysql://u:pw1x@h/db http://a:b@c/v1 Authorization: Bearer abc.def-123 sk-abcdefgh12345 "
            "postgresql://h/db?user=u&password=pw2x tok-9f8e7d6c5b4a")
    out = redact(text)
    for secret in ("pw1x", ":b@", "abc.def-123", "abcdefgh12345", "pw2x", "tok-9f8e7d6c5b4a"):
        assert secret not in out, (secret, out)
    assert "mysql://u:***@h/db" in out and "Bearer ***" in out
    assert str(StoreError(text)) == out  # qrmem's errors redact themselves
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed (%s)", (text,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == f"failed ({out})"


# -- 5. what the system refuses is one line that says what to do -----------------------------------

def test_a_read_only_store_is_one_line_on_every_writing_command(stored: str, tmp_path: Path) -> None:
    ro = f"sqlite:///file:{stored}?mode=ro&uri=true"  # what a read-only file gives, also as root
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**Memory(stored).export_user("tiny-1"), "user_id": "new-user"}))
    before = Store(stored).counts()
    one_error_line(qrmem("ingest", "--db", ro, str(new), *HASH), "readonly", "nothing was written",
                   "write access")
    one_error_line(qrmem("delete", "--db", ro, "--user", "tiny-1", "--yes"), "readonly")
    one_error_line(qrmem("import", "--db", ro, str(new), *HASH), "readonly")
    assert Store(stored).counts() == before
    res = qrmem("search", "--db", ro, "--user", "tiny-1", "kitten", *HASH)  # reading still works
    assert res.exit_code == 0 and "Miso" in res.stdout


def test_a_full_disk_during_ingest_keeps_what_was_written_and_says_so(sqlite_db: str, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"user_id": "u", "session_id": f"s{i}", "turns": [
        {"speaker": "a", "text": f"{'word ' * 200}{j}"} for j in range(20)]}) + "\n" for i in range(200)))
    res = run_cli("ingest", "--db", sqlite_db, str(big), "--embedder", "hashing:64", limit_bytes=1_500_000)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert "stored whole and intact" in res.stderr and "run the same command again" in res.stderr
    written = int(re.search(r"the (\d+) sessions written before it", res.stderr)[1])
    store = Store(sqlite_db)
    assert store.check().ok and store.counts().sessions == written > 0
    assert all(s.turns == 20 for s in store.sessions("u"))
    res = run_cli("ingest", "--db", sqlite_db, str(big), "--embedder", "hashing:64")  # space again
    assert res.returncode == 0 and f"{written} unchanged" in res.stdout


def test_sqlite_full_is_a_store_error_naming_what_is_intact(sqlite_db: str) -> None:
    """The library path of "database or disk is full" (SQLite's own limit stands in for the disk)."""
    from sqlalchemy import event

    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    mem.add_session("u", [{"speaker": "a", "text": "first"}], session_id="s0")

    def cap(dbapi_conn, _record) -> None:
        dbapi_conn.execute("PRAGMA max_page_count = 60")  # 240 KB in all: a few sessions more

    event.listen(mem.store.engine, "connect", cap)
    mem.store.engine.dispose()  # every connection from now on is a new, capped one
    turns = [{"speaker": "a", "text": "x" * 50_000}]
    sessions = [{"session_id": f"s{i}", "turns": turns} for i in range(1, 6)]
    with pytest.raises(StoreError, match="database or disk is full.*intact"):
        for s in sessions:
            mem.add_session("u", s["turns"], session_id=s["session_id"])
    assert mem.store.check().ok and mem.sessions("u")[0].session_id == "s0"


def test_sizes_that_would_exhaust_memory_are_refused_up_front(sqlite_db: str) -> None:
    one_error_line(qrmem("ingest", "--db", sqlite_db, str(TINY), "--embedder", "hashing:10000000000"),
                   "hashing embedder dim must be an integer from 1 to 65,536")
    with pytest.raises(InputError):
        HashingEmbedder(10**10)
    assert not Path(sqlite_db).exists() or Store(sqlite_db).counts().sessions == 0


def test_system_errors_that_reach_the_cli_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # --out inside a path whose parent is a file: the OSError of creating the directory
    res = qrmem("eval", "locomo", "--data", str(TINY), "--out", str(blocker / "sub"), "--reranker", "none",
                "--no-answer")
    one_error_line(res, str(blocker))


# -- 6. secure delete never hangs on a reader ------------------------------------------------------

def test_secure_delete_with_a_reader_finishes_and_says_what_remains(stored: str) -> None:
    reader = sqlite3.connect(stored)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM turns").fetchone()[0] == 20  # holds a read snapshot
    try:
        res = qrmem("delete", "--db", stored, "--user", "tiny-1", "--session", "session_2", "--yes",
                    "--secure", "--secure-wait", "0.3")
        assert res.exit_code == 0, res.output
        assert "deleted session 'session_2'" in res.stdout
        assert "-wal until those connections close" in res.stderr and "wal_checkpoint(TRUNCATE)" in res.stderr
        mem = Memory(stored, secure_delete=True, secure_delete_wait=0.2)
        result = mem.delete_session("tiny-1", "session_3")
        assert result.remaining and "zeroed in" in result.remaining
    finally:
        reader.close()
    assert [s.session_id for s in Store(stored).sessions("tiny-1")] == ["session_1"]
    result = Memory(stored, secure_delete=True).delete_session("tiny-1", "session_1")
    assert result.remaining is None  # no reader: the log is truncated
    assert not Path(stored + "-wal").exists() or Path(stored + "-wal").stat().st_size == 0
    with pytest.raises(InputError, match="secure_delete_wait"):
        Store(stored, secure_delete_wait=-1)


# -- 10. chat refuses what it could not store, keeps going, and never claims a save ---------------

def test_chat_refuses_bad_lines_and_keeps_going(chat_server, stored: str) -> None:
    lines = b"\n".join([b"x" * 1_000_000, b"hello\x00there", b"\xff\xfe not utf-8", b"hi, remember Miso",
                        b"/end"]) + b"\n"
    res = qrmem("chat", "--db", stored, "--user", "ann", "--generator", "openai:m", "--base-url",
                chat_server["url"], "--no-rerank", "--no-summarize", input=lines)
    assert res.exit_code == 0, res.output
    refused = [ln for ln in res.stderr.splitlines() if ln.startswith("refused: ")]
    assert len(refused) == 3, res.stderr
    assert "longer than 100000" in refused[0] and "NUL" in refused[1] and "not valid UTF-8" in refused[2]
    assert all("nothing was sent or stored" in ln for ln in refused)
    assert len(chat_server["requests"]) == 1  # only the good line reached the generator
    assert res.stdout.count("bot> Hello!") == 1 and "saved session chat-" in res.stdout
    (session,) = Store(stored).sessions("ann")
    assert res.stdout.strip().endswith(f"saved session {session.session_id}") and session.turns == 2


def test_chat_with_only_bad_lines_saves_nothing_and_says_nothing_was_saved(chat_server, stored: str) -> None:
    res = qrmem("chat", "--db", stored, "--user", "ann", "--generator", "openai:m", "--base-url",
                chat_server["url"], "--no-rerank", "--no-summarize", input=b"a\x00b\n" + b"y" * 200_000 + b"\n")
    assert res.exit_code == 0 and res.stderr.count("refused: ") == 2, res.output
    assert "saved session" not in res.stdout and chat_server["requests"] == []
    assert [u.user_id for u in Store(stored).users()] == ["tiny-1", "tiny-2"]


class Scripted(Generator):
    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply, self.calls = reply, 0

    def generate(self, messages, options) -> str:
        self.calls += 1
        return self.reply


def test_the_agent_checks_a_message_before_anything_is_searched_sent_or_stored(sqlite_db: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    gen = Scripted("fine")
    agent = MemoryAgent(mem, gen, rerank=False)
    for bad in ("x" * 100_001, "a\x00b", "lone \ud800 surrogate"):
        with pytest.raises(InputError, match="message cannot be stored"):
            agent.chat("ann", bad)
    assert gen.calls == 0 and agent.end_session("ann") is None and mem.users() == []
    bad_reply = MemoryAgent(mem, Scripted("broken \x00 reply"), rerank=False)
    with pytest.raises(InputError, match="reply cannot be stored"):
        bad_reply.chat("ann", "hello")
    assert bad_reply.end_session("ann") is None and mem.users() == []
    assert agent.chat("ann", "hello").text == "fine" and agent.end_session("ann") is not None


# -- 13. a store that does not exist is an error on every reading command --------------------------

@pytest.mark.parametrize("args", [
    ["search", "--user", "u", "kitten"], ["sessions", "--user", "u"], ["info"], ["check"],
    ["export", "--user", "u"], ["delete", "--user", "u", "--yes"], ["summarize", "--user", "u"],
])
def test_reading_commands_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "memroy.db"
    one_error_line(qrmem(*args, "--db", str(typo)), f"no store at {typo}", "qrmem ingest")
    assert not typo.exists()


def test_an_in_memory_database_is_refused_on_the_cli(tmp_path: Path) -> None:
    for url in ("sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"):
        for args in (["ingest", str(TINY), *HASH], ["info"]):
            one_error_line(qrmem(*args, "--db", url), "in-memory database")
    mem = Memory("sqlite:///:memory:", embedder=HashingEmbedder(8))  # the Python API may keep it
    mem.add_session("u", [{"speaker": "a", "text": "hi"}])
    assert mem.store.counts().sessions == 1


def test_create_false_refuses_a_missing_store_on_every_backend(db: str) -> None:
    with pytest.raises(StoreError, match="no store at|no qrmem store in"):
        Memory(db, create=False).users()
    if "://" not in db:
        assert not Path(db).exists()
    Memory(db, embedder=HashingEmbedder(8)).add_session("u", [{"speaker": "a", "text": "hi"}])
    assert [u.user_id for u in Memory(db, create=False).users()] == ["u"]

"""Hostile and careless input at the store's edge (issue 11): who owns a session, how JSON and JSONL
are read, exact ids, strict types, export/import round trips and damaged store files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memory import HashingEmbedder, Memory, Summarizer
from memory.generators import Generator
from memory.qr.data import read_json_or_jsonl
from memory.qr.heads import read_head_file
from memory.qr.records import read_rank_input
from qrmem.cli import app
from store import InputError, Store, StoreError, load_file, parse_obj

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"
LOCOMO_DEV = Path("/work/shared/data/locomo/locomo_dev.json")
runner = CliRunner()


def write(tmp_path: Path, obj, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def turn(speaker: str = "ann", text: str = "hello", **kw) -> dict:
    return {"speaker": speaker, "text": text, **kw}


def log(user: str = "ann", **sessions_kw) -> dict:
    return {"user_id": user, "sessions": [{"session_id": "s1", "turns": [turn()], **sessions_kw}]}


# -- 3. a session belongs to the record's user ---------------------------------------------------------

def test_a_session_cannot_name_another_owner(tmp_path: Path, sqlite_db: str) -> None:
    hostile = {"user_id": "ann", "sessions": [
        {"session_id": "s1", "turns": [turn()]},
        {"session_id": "s2", "user_id": "bob", "turns": [turn(text="planted")]}]}
    with pytest.raises(InputError, match=r"record #0 \(ann\), field sessions\[1\]\.user_id: .*'bob'.*'ann'"):
        load_file(write(tmp_path, hostile))
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    with pytest.raises(InputError, match="sessions\\[1\\].user_id"):
        mem.import_user(hostile)
    assert mem.store.counts().sessions == 0 and mem.users() == []
    # The same id as the record's is harmless.
    same = {"user_id": "ann", "sessions": [{"session_id": "s1", "user_id": "ann", "turns": [turn()]}]}
    assert [s.user_id for s in parse_obj(same, "x.json", "qrmem")] == ["ann"]


# -- 7. JSON and JSONL readers: line breaks inside strings, huge numbers, deep nesting -------------------

SEPARATORS = ["\u2028", "\u2029", "\u0085"]


@pytest.mark.parametrize("sep", SEPARATORS)
def test_jsonl_lines_are_split_on_newline_only(tmp_path: Path, sep: str) -> None:
    rows = [{"user_id": "ann", "session_id": f"s{i}", "turns": [turn(text=f"one{sep}two {i}")]}
            for i in range(2)]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    sessions = load_file(write(tmp_path, text, "log.jsonl"))
    assert [s.turns[0].text for s in sessions] == [f"one{sep}two 0", f"one{sep}two 1"]
    # The QRRanker record reader and the `qrmem rank` reader split the same way.
    records = [{"id": f"r{i}", "question": f"q{sep}?", "paragraphs": [{"paragraph_text": f"a{sep}b"}]}
               for i in range(2)]
    path = write(tmp_path, "\n".join(json.dumps(r, ensure_ascii=False) for r in records), "r.jsonl")
    assert [r["question"] for r in read_json_or_jsonl(path)] == [f"q{sep}?", f"q{sep}?"]
    assert [j.query for j in read_rank_input(path, None)] == [f"q{sep}?", f"q{sep}?"]
    plain = write(tmp_path, f"first{sep}candidate\nsecond\n", "c.txt")
    assert read_rank_input(plain, "q")[0].texts == [f"first{sep}candidate", "second"]


HUGE_INT = "1" * 5000


@pytest.mark.parametrize("name, content", [
    ("in.json", '{"user_id": "ann", "sessions": [{"session_id": "s", "position": ' + HUGE_INT + ', "turns": []}]}'),
    ("in.jsonl", '{"user_id": "ann", "session_id": "s", "position": ' + HUGE_INT + ', "turns": []}'),
    ("in.json", "[" * 100_000 + "]" * 100_000),
    ("in.jsonl", "[" * 100_000 + "]" * 100_000),
])
def test_every_json_reader_refuses_huge_numbers_and_deep_nesting(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path, content, name)
    for read in (load_file, read_json_or_jsonl, lambda p: read_rank_input(p, "q"), read_head_file):
        with pytest.raises(InputError, match=r"digits|nested too deeply") as err:
            read(path)
        assert str(path) in str(err.value)


# -- 11. ids are exact: refused when they carry edge whitespace or control characters --------------------

BAD_IDS = [" bob", "bob ", "bob\u00a0", "bob\n", "\tbob", "bo\x00b", "bo\x1bb", "bob\u2028", "bob\u200b",
           "\u202ebob", "bo\x7fb", "bob\u3000", ""]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_are_never_rewritten(sqlite_db: str, bad: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    mem.add_session("bob", [turn("bob")], session_id="s1")
    before = mem.store.counts()
    writes = [lambda: mem.add_session(bad, [turn("bob", "planted")], session_id="s2"),
              lambda: mem.add_session("bob", [turn("bob", "planted")], session_id=bad),
              lambda: mem.add_session("bob", [turn("bob", "planted", id=bad)], session_id="s2"),
              lambda: mem.add_session("bob", [turn(bad, "planted")], session_id="s2")]
    reads = [lambda: mem.sessions(bad), lambda: mem.search(bad, "hello"), lambda: mem.export_user(bad),
             lambda: mem.summaries(bad), lambda: mem.store.turns("bob", bad),
             lambda: mem.store.add_summary(bad, "conversation", "x"),
             lambda: mem.delete_session("bob", bad), lambda: mem.delete_user(bad)]
    for call in writes + reads:
        with pytest.raises(InputError):
            call()
    assert mem.store.counts() == before
    assert [s.session_id for s in mem.sessions("bob")] == ["s1"]


def test_ids_keep_inner_spaces_and_joiners(sqlite_db: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    for user in ("Ann Lee", "👩\u200d🔬", "مستخدم\u200cجديد"):
        mem.add_session(user, [turn(user)], session_id="s 1")
        assert [(u.user_id, u.sessions) for u in mem.users() if u.user_id == user] == [(user, 1)]


@pytest.mark.parametrize("path", [TINY_LOCOMO, LOCOMO_DEV])
def test_locomo_files_still_ingest(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    sessions = load_file(path)
    assert sessions and all(t.id for s in sessions for t in s.turns)


# -- 12. strict types at the boundary ------------------------------------------------------------------

def _locomo(**sample) -> list[dict]:
    conv = {"speaker_a": "A", "speaker_b": "B", "session_1": [{"speaker": "A", "text": "hi", "dia_id": "D1:1"}]}
    conv.update(sample.pop("conversation", {}))
    return [{"sample_id": "x", "conversation": conv, **sample}]


@pytest.mark.parametrize("content, match", [
    (_locomo(sample_id=True), r"field sample_id: expected str/int, got bool"),
    (_locomo(sample_id=1.5), r"field sample_id: expected str/int, got float"),
    (log(position="1"), r"field sessions\[0\]\.position: .*integer"),
    (log(position=1.0), r"field sessions\[0\]\.position: .*integer"),
    (log(position=True), r"field sessions\[0\]\.position: .*integer"),
    (log(position=-5), r"field sessions\[0\]\.position: .*0"),
    ({"user_id": "ann", "sessions": [{"session_id": "a", "position": 2, "turns": [turn()]},
                                     {"session_id": "b", "position": 2, "turns": [turn()]}]},
     r"sessions 'a' and 'b' of user 'ann' both have position 2"),
    ({**log(), "speakers": []}, r"field speakers: .*at least one"),
    ({**log(), "speakers": ["ann", " bot"]}, r"field speakers\[1\]: speaker .*whitespace"),
    ({**log(), "speakers": ["ann", "b\udc80"]}, r"field speakers\[1\]: .*not valid Unicode"),
    ({**log(), "summaries": "nope"}, r"field summaries: .*list"),
    ({**log(), "summaries": [{"kind": "weekly", "text": "x"}]}, r"field summaries\[0\]\.kind"),
    ({**log(), "summaries": [{"kind": "session", "session_id": "zz", "text": "x"}]},
     r"field summaries\[0\]\.session_id: .*'zz'.*not in this record"),
    ({**log(), "summaries": [{"kind": "conversation", "text": "x", "meta": {"through_session": "zz"}}]},
     r"field summaries\[0\]\.meta\.through_session"),
    ({**log(), "summaries": [{"kind": "conversation", "text": "x", "meta": "m"}]},
     r"field summaries\[0\]\.meta"),
    ({**log(), "format": "qrmem.v2"}, r"field format: .*'qrmem.v1'"),
    ({**log(), "format": 1}, r"field format: .*'qrmem.v1'"),
])
def test_wrong_types_are_refused(tmp_path: Path, content, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_file(write(tmp_path, content))


def test_integer_sample_ids_and_positions_are_kept(tmp_path: Path) -> None:
    sessions = load_file(write(tmp_path, _locomo(sample_id=7)))
    assert [(s.user_id, s.position) for s in sessions] == [("7", 1)]
    jsonl = "\n".join(json.dumps({"user_id": "u", "session_id": f"s{p}", "position": p, "turns": [turn()]})
                      for p in (0, 3))
    assert [s.position for s in load_file(write(tmp_path, jsonl, "x.jsonl"))] == [0, 3]


def test_a_position_held_by_another_stored_session_is_refused(tmp_path: Path, sqlite_db: str) -> None:
    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    first = "\n".join(json.dumps({"user_id": "u", "session_id": s, "position": p, "turns": [turn()]})
                      for s, p in (("a", 1), ("b", 2)))
    assert mem.ingest_file(write(tmp_path, first, "one.jsonl")).count("added") == 2
    second = "\n".join(json.dumps({"user_id": "u", "session_id": s, "position": p, "turns": [turn()]})
                       for s, p in (("c", 5), ("d", 2)))
    before = mem.store.counts()
    with pytest.raises(InputError, match=r"position 2 of user 'u' is taken by session 'b'; nothing was written"):
        mem.ingest_file(write(tmp_path, second, "two.jsonl"))
    assert mem.store.counts() == before  # not even session c
    assert [(s.session_id, s.position) for s in mem.sessions("u")] == [("a", 1), ("b", 2)]


# -- 14. messages that name the real problem -------------------------------------------------------------

def test_two_keys_for_one_locomo_session_are_both_named(tmp_path: Path) -> None:
    sample = _locomo(conversation={"session_01": [{"speaker": "A", "text": "again", "dia_id": "D1:9"}]})
    with pytest.raises(InputError, match=r"'session_01' and 'session_1'"):
        load_file(write(tmp_path, sample))
    alone = _locomo()
    alone[0]["conversation"]["session_01"] = alone[0]["conversation"].pop("session_1")
    assert [s.session_id for s in load_file(write(tmp_path, alone))] == ["session_1"]


@pytest.mark.parametrize("where", ["speaker_a", "speaker_b", "turn"])
def test_a_lone_surrogate_in_a_speaker_name_is_called_invalid_unicode(tmp_path: Path, where: str) -> None:
    sample = _locomo()
    conv = sample[0]["conversation"]
    if where == "turn":
        conv["session_1"][0]["speaker"] = "A\udc80"
    else:  # the turn is by the name as it reads without the broken character
        conv[where] = conv[where] + "\udc80"
        conv["session_1"][0]["speaker"] = conv[where][:-1]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(sample), encoding="utf-8")  # json.dumps escapes it: \udc80
    with pytest.raises(InputError, match="not valid Unicode") as err:
        load_file(path)
    assert "unknown speaker" not in str(err.value)


def _damaged_store(path: str) -> None:
    mem = Memory(path, embedder=HashingEmbedder(16))
    mem.ingest_file(TINY_LOCOMO)
    mem.store.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    roots = dict(con.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(path, "r+b") as fh:  # the data pages of the users, sessions and turns tables
        for table in ("users", "sessions", "turns"):
            fh.seek((roots[table] - 1) * page_size)
            fh.write(bytes(range(256)) * (page_size // 256))


def test_a_damaged_store_gives_one_line_errors_and_check_reports_it(sqlite_db: str, tmp_path: Path) -> None:
    _damaged_store(sqlite_db)
    store = Store(sqlite_db)
    for call in (store.users, lambda: store.sessions("tiny-1"), lambda: store.export_user("tiny-1"),
                 lambda: Memory(store, embedder=HashingEmbedder(16)).ingest_file(TINY_LOCOMO)):
        with pytest.raises(StoreError, match=r"damaged.*qrmem check.*backup"):
            call()
    report = store.check()
    assert not report.ok and any("damaged" in p for p in report.problems)
    res = runner.invoke(app, ["check", "--db", sqlite_db])
    assert res.exit_code == 1 and "damaged" in res.output and "Traceback" not in res.output


def test_garbage_in_the_migration_table_is_damage_not_a_newer_qrmem(sqlite_db: str) -> None:
    Store(sqlite_db).counts()
    con = sqlite3.connect(sqlite_db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    raw = bytearray(Path(sqlite_db).read_bytes())
    at = [i for i in range(len(raw)) if raw.startswith(b"m001_initial", i)]
    assert at
    for i in at:  # table row and index key: printable garbage of the same length
        raw[i:i + 12] = b"#q!~garbage?"
    Path(sqlite_db).write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="damaged") as err:
        Store(sqlite_db).users()
    assert "upgrade qrmem" not in str(err.value)
    report = Store(sqlite_db).check()
    assert not report.ok and any("damaged" in p for p in report.problems)


def test_a_real_newer_migration_still_asks_for_an_upgrade(sqlite_db: str) -> None:
    Store(sqlite_db).counts()
    con = sqlite3.connect(sqlite_db)
    con.execute("INSERT INTO schema_migrations VALUES ('m999_future_table', '2030-01-01')")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="upgrade qrmem"):
        Store(sqlite_db).users()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError, match="not a database"):
        Store(str(path)).users()
    assert not Store(str(path)).check().ok


# -- 8. export and import round trips ---------------------------------------------------------------

class FirstTurn(Summarizer):
    """Deterministic summaries (first turn; rolls append); fails if asked after `frozen`."""

    def __init__(self) -> None:
        class Unused(Generator):
            name = "first-turn"

            def generate(self, messages, options):
                raise AssertionError("not used")

        super().__init__(Unused())
        self.frozen = False

    def summarize_session(self, turns, date):
        assert not self.frozen, "summaries were recomputed"
        return f"{turns[0].text} ({date})"

    def roll(self, previous, session_summary, date):
        assert not self.frozen, "the conversation was rolled again"
        return session_summary if not previous else f"{previous} | {session_summary}"


def _memory_with_summaries(db: str) -> Memory:
    mem = Memory(db, embedder=HashingEmbedder(32), summarizer=FirstTurn())
    for i in range(3):  # turns without ids: the store names them SESSION:N
        mem.add_session("ann", [turn("ann", f"fact {i}", time="10:00"), turn("bot", f"ok {i}")],
                        session_id=f"s{i}", date=f"{i + 1} May 2024")
    mem.add_session("ann", [turn("ann", "with ids", id="x:1", image_caption="a cat")], session_id="s3")
    return mem


def _state(mem: Memory, user: str) -> tuple:
    sessions = [(s.session_id, s.date, s.position) for s in mem.sessions(user)]
    turns = [(t.speaker, t.text, t.time, t.id, t.image_caption)
             for s in mem.sessions(user) for t in mem.store.turns(user, s.session_id)]
    summaries = sorted((s.kind, s.session_id or "", s.text, s.model, json.dumps(s.meta, sort_keys=True))
                       for s in mem.summaries(user))
    return sessions, turns, summaries


def test_export_then_import_into_the_same_store_changes_nothing(db: str) -> None:
    mem = _memory_with_summaries(db)
    exported = mem.export_user("ann")
    assert {s["kind"] for s in exported["summaries"]} == {"session", "conversation"}
    assert all("meta" in s for s in exported["summaries"])
    before = (mem.store.counts(), mem.store.revision("ann"), _state(mem, "ann"))
    for _ in range(2):
        report = mem.import_user(json.loads(json.dumps(exported)))
        assert [r.status for r in report.results] == ["unchanged"] * 4
        assert (mem.store.counts(), mem.store.revision("ann"), _state(mem, "ann")) == before


def test_export_then_import_into_a_new_store_reproduces_everything(db: str, tmp_path: Path) -> None:
    mem = _memory_with_summaries(db)
    exported = json.loads(json.dumps(mem.export_user("ann")))
    summarizer = FirstTurn()
    fresh = Memory(str(tmp_path / "fresh.db"), embedder=HashingEmbedder(32), summarizer=summarizer)
    summarizer.frozen = True  # everything comes from the file: nothing is summarised again
    report = fresh.import_user(exported)
    assert report.count("added") == 4
    assert _state(fresh, "ann") == _state(mem, "ann")
    assert fresh.summarize("ann") == 0  # the rolling state (through_session) came along
    assert fresh.export_user("ann")["sessions"] == exported["sessions"]
    assert fresh.import_user(exported).count("unchanged") == 4


def test_cli_export_import_round_trip(db: str, tmp_path: Path) -> None:
    _memory_with_summaries(db).store.close()
    out = tmp_path / "ann.json"
    assert runner.invoke(app, ["export", "--db", db, "--user", "ann", "--out", str(out)]).exit_code == 0
    res = runner.invoke(app, ["import", "--db", db, str(out), "--embedder", "hashing:32"])
    assert res.exit_code == 0, res.output
    assert "0 sessions added, 0 replaced, 4 unchanged" in res.output
    other = str(tmp_path / "other.db")
    res = runner.invoke(app, ["import", "--db", other, str(out), "--embedder", "hashing:32"])
    assert res.exit_code == 0 and "4 sessions added" in res.output
    kinds = sorted(s.kind for s in Store(other).summaries("ann"))
    assert kinds == ["conversation", "session", "session", "session", "session"]


def test_stores_hashed_before_the_fix_still_match_their_exports(sqlite_db: str) -> None:
    """Old stores hashed turn ids exactly as given; their sessions stay `unchanged`."""
    import hashlib

    from sqlalchemy import update

    from store import schema

    mem = Memory(sqlite_db, embedder=HashingEmbedder(16))
    given = [turn("ann", "a", id="old:1"), turn("ann", "b", id="old:2")]  # ids equal to the defaults
    mem.add_session("ann", given, session_id="old")
    legacy = hashlib.sha256(json.dumps(
        {"date": None, "turns": [{"speaker": t["speaker"], "text": t["text"], "time": None,
                                  "id": t["id"], "image_caption": None} for t in given]},
        sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    with mem.store.engine.begin() as conn:
        conn.execute(update(schema.sessions).values(content_hash=legacy))
    bare = [{k: v for k, v in t.items() if k != "id"} for t in given]
    assert mem.add_session("ann", bare, session_id="old").status == "unchanged"
    assert mem.add_session("ann", given, session_id="old").status == "unchanged"
    assert mem.import_user(mem.export_user("ann")).count("unchanged") == 1

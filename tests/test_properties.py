"""Property-based tests (hypothesis) of every parser and of the public API: whatever comes in
(arbitrary unicode, huge strings, NUL bytes, lone surrogates, wrong types, missing keys, deep
nesting), the answer is a correct result or a clear `QrmemError`, never a traceback from deep
inside and never a partial write. Example counts are fixed per property (see `EXAMPLES`)."""

from __future__ import annotations

import json
import unicodedata
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.evaluation import parse_categories
from agent.locomo import parse_evidence
from memory import HashingEmbedder, Memory
from memory.qr.data import parse_records
from memory.qr.heads import parse_heads
from store import InputError, QrmemError, make_chunker, parse_obj
from store.formats import load_file, parse_jsonl

EXAMPLES = {"parser": 300, "api": 100}
FAST = settings(max_examples=EXAMPLES["parser"], deadline=None)
DB = settings(max_examples=EXAMPLES["api"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that stresses storage: any code point (NUL and lone surrogates included), some long.
nasty_text = st.one_of(
    st.text(st.characters(), max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=10),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x" * 200_000, "  ", "", "🦀" * 300, "\u202e\u200b"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    nasty_text)
json_like = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(nasty_text, kids, max_size=4)),
                         max_leaves=25)

turn = st.fixed_dictionaries({"speaker": st.one_of(st.sampled_from(["Ana", "Ben"]), nasty_text),
                              "text": st.one_of(st.text(min_size=1, max_size=60), nasty_text, scalars)},
                             optional={"time": scalars, "id": scalars, "image_caption": scalars})
bad_turn = st.dictionaries(nasty_text, scalars, max_size=4)  # missing keys, unknown keys, wrong types
ids = st.one_of(st.sampled_from(["keep", "alice", "Ünïcødé 用户"]), st.text(min_size=1, max_size=20), nasty_text, scalars)
locomo_sample = st.fixed_dictionaries(
    {"conversation": st.one_of(
        st.fixed_dictionaries({"speaker_a": st.just("Ana"), "speaker_b": st.just("Ben"),
                               "session_1": st.lists(turn, max_size=3)},
                              optional={"session_1_date_time": scalars, "session_2": json_like}),
        json_like)},
    optional={"sample_id": scalars, "qa": json_like})
user_log = st.fixed_dictionaries(
    {"user_id": scalars, "sessions": st.one_of(
        st.lists(st.fixed_dictionaries({"session_id": scalars, "turns": st.lists(turn, max_size=3)},
                                       optional={"date": scalars, "position": scalars}), max_size=3),
        json_like)},
    optional={"speakers": json_like, "format": scalars})


def _ok_or_clear(fn, *args) -> object:
    """Call fn; a QrmemError is a clear answer, anything else escapes and fails the test."""
    try:
        return fn(*args)
    except QrmemError as exc:
        assert str(exc).strip()
        return exc


def _valid_sessions(result) -> None:
    if isinstance(result, QrmemError):
        return
    for s in result:
        assert s.user_id.strip() and s.session_id.strip() and s.turns
        for t in s.turns:
            assert t.text.strip() and "\x00" not in t.text
            t.text.encode("utf-8")  # storable: no lone surrogates


@FAST
@given(st.one_of(locomo_sample, st.lists(locomo_sample, max_size=3), json_like))
def test_locomo_parser(data) -> None:
    _valid_sessions(_ok_or_clear(parse_obj, data, "x.json", "locomo"))


@FAST
@given(st.one_of(user_log, st.lists(user_log, max_size=3), json_like))
def test_qrmem_log_parser(data) -> None:
    _valid_sessions(_ok_or_clear(parse_obj, data, "x.json", "qrmem"))
    _valid_sessions(_ok_or_clear(parse_obj, data, "x.json", "auto"))


@FAST
@given(st.lists(st.one_of(nasty_text, user_log.map(json.dumps), json_like.map(json.dumps)), max_size=4))
def test_jsonl_parser(lines) -> None:
    _valid_sessions(_ok_or_clear(parse_jsonl, "\n".join(lines), "x.jsonl"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.just(b"[" * 100_000), st.just(b'{"a":' * 50_000),
                 st.just(b"\xff\xfe\x00"), json_like.map(lambda d: json.dumps(d).encode())))
def test_load_file_on_arbitrary_bytes(tmp_path: Path, raw: bytes) -> None:
    for name in ("x.json", "x.jsonl"):
        path = tmp_path / name
        path.write_bytes(raw)
        _valid_sessions(_ok_or_clear(load_file, path))


@FAST
@given(st.one_of(nasty_text, scalars, st.lists(scalars, max_size=3)))
def test_small_parsers(value) -> None:
    for fn in (make_chunker, parse_categories):
        _ok_or_clear(fn, value)
    result = _ok_or_clear(parse_evidence, value if isinstance(value, list) else [value])
    assert isinstance(result, (list, QrmemError))
    heads = _ok_or_clear(parse_heads, value)
    if not isinstance(heads, QrmemError):
        assert heads and all(h.layer >= 0 and h.head >= 0 for h in heads)


@FAST
@given(st.one_of(json_like, st.lists(st.fixed_dictionaries(
    {"question": scalars, "paragraphs": st.lists(st.fixed_dictionaries({"text": scalars}, optional={
        "is_supporting": scalars, "title": scalars}), max_size=3)}), max_size=3)))
def test_card_record_parser(data) -> None:
    result = _ok_or_clear(parse_records, data if isinstance(data, list) else [data], "r.json")
    if not isinstance(result, QrmemError):
        assert all(r.question.strip() and r.paragraphs for r in result)


# -- the public API on a real store (SQLite and PostgreSQL) ---------------------------------------

@pytest.fixture
def mem(db: str) -> Memory:
    m = Memory(db, embedder=HashingEmbedder(32))
    m.add_session("keep", [{"speaker": "a", "text": "a fact that must survive"}], session_id="base")
    return m


clean_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=300).filter(str.strip)
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _edge_ok(value: str) -> bool:
    return all(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in (value[0], value[-1]))


# Ids (and speaker names) as the store takes them: exact, any script, inner spaces and joiners,
# no whitespace or invisible format character at either end, no control characters.
clean_id = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                                 exclude_characters=BIDI_CONTROLS), min_size=1, max_size=60).filter(_edge_ok)


@DB
@given(user=st.one_of(st.sampled_from(["keep", "alice"]), clean_id), date=st.none() | clean_id,
       turns=st.lists(st.fixed_dictionaries({"speaker": clean_id, "text": clean_text},
                                            optional={"time": clean_id, "image_caption": clean_text}),
                      min_size=1, max_size=4))
def test_any_well_formed_unicode_session_round_trips(mem: Memory, user, date, turns) -> None:
    result = mem.add_session(user, turns, date=date)
    assert result.status == "added"
    stored = mem.store.turns(result.user_id, result.session_id)
    assert [(t.speaker, t.text, t.time, t.image_caption) for t in stored] == [
        (t["speaker"], t["text"], t.get("time"), t.get("image_caption")) for t in turns]
    assert [s.date for s in mem.sessions(user) if s.session_id == result.session_id] == [date]
    hits = mem.search(user, turns[0]["text"], k=50)
    assert hits and all(h.user_id == user for h in hits)
    if sum(s.chunks for s in mem.sessions(user)) <= 50:  # all of the user's chunks come back
        assert any(h.session_id == result.session_id for h in hits)


@DB
@given(user=ids, session_id=st.one_of(st.none(), ids), date=scalars,
       turns=st.one_of(st.lists(turn, min_size=1, max_size=3), st.lists(st.one_of(turn, bad_turn), max_size=3),
                       json_like))
def test_add_session_stores_exactly_or_writes_nothing(mem: Memory, user, session_id, date, turns) -> None:
    before = mem.store.counts()
    try:
        result = mem.add_session(user, turns, session_id=session_id, date=date)
    except QrmemError as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(exc).strip()
        assert mem.store.counts() == before  # never a partial write
        return
    event(f"stored: {result.status}")
    assert result.status in ("added", "unchanged")
    stored = mem.store.turns(result.user_id, result.session_id)
    assert [t.text for t in stored] == [t["text"] for t in turns]
    assert mem.store.check().ok


@DB
@given(user=ids, query=st.one_of(st.text(min_size=1, max_size=60), nasty_text, scalars),
       k=st.one_of(st.integers(1, 50), st.integers(-5, 0), scalars),
       mode=st.sampled_from([None, "dense", "bm25", "hybrid", "x"]))
def test_search_answers_or_refuses_clearly(mem: Memory, user, query, k, mode) -> None:
    try:
        hits = mem.search(user, query, k=k, mode=mode)
    except QrmemError as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(exc).strip()
        return
    event("answered with hits" if hits else "answered, no hits")
    assert len(hits) <= k and all(h.user_id == user for h in hits)


@DB
@given(user=ids.filter(lambda u: u != "keep"), session_id=ids)
def test_delete_and_export_of_unknown_ids_are_clear(mem: Memory, user, session_id) -> None:
    before = mem.store.counts()
    for call in (lambda: mem.delete_session(user, session_id), lambda: mem.export_user(user),
                 lambda: mem.summaries(user)):
        try:
            call()
        except QrmemError as exc:
            assert str(exc).strip()
    assert mem.store.counts() == before
    assert mem.search("keep", "fact survive", k=1)[0].text.endswith("a fact that must survive")


def test_wrong_types_name_the_field(mem: Memory) -> None:
    with pytest.raises(InputError, match="field turns.0"):
        mem.add_session("u", ["not a dict"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="field turns.0.text"):
        mem.add_session("u", [{"speaker": "a", "text": 7}])


# -- ids, positions, export/import round trips (issue 11) -------------------------------------------

WHITESPACE = [chr(c) for c in range(0x3001) if chr(c).isspace()]  # every whitespace character
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\u00ad", "\u180e"]
CONTROLS = [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]  # category Cc
bad_id = st.one_of(  # a valid id spoiled at an edge, or anywhere by a control character
    st.builds(lambda core, ch, end: core + ch if end else ch + core, clean_id,
              st.sampled_from(WHITESPACE + INVISIBLE), st.booleans()),
    st.builds(lambda core, ch, i: core[:i] + ch + core[i:], clean_id,
              st.sampled_from([*CONTROLS, "\u2028", "\u2029", *BIDI_CONTROLS]), st.integers(0, 60)))


@DB
@given(bad=bad_id, role=st.sampled_from(["user", "session", "turn id", "speaker"]))
def test_ids_with_edge_whitespace_or_controls_are_refused_everywhere(mem: Memory, bad: str, role: str) -> None:
    before = mem.store.counts()
    ids: dict[str, str | None] = {"user": "keep", "session": "new", "turn id": None, "speaker": "a"}
    ids[role] = bad
    turn = {"speaker": ids["speaker"], "text": "planted", **({"id": ids["turn id"]} if ids["turn id"] else {})}
    record = {"user_id": ids["user"], "sessions": [{"session_id": ids["session"], "turns": [turn]}]}
    writes = [lambda: mem.add_session(ids["user"], [turn], session_id=ids["session"]),
              lambda: mem.import_user(json.loads(json.dumps(record))),
              lambda: parse_jsonl(json.dumps({**record["sessions"][0], "user_id": ids["user"]}), "x.jsonl")]
    reads = [lambda: mem.sessions(bad), lambda: mem.search(bad, "fact"), lambda: mem.export_user(bad),
             lambda: mem.summaries(bad), lambda: mem.store.turns("keep", bad),
             lambda: mem.delete_session("keep", bad), lambda: mem.delete_user(bad)]
    for call in writes + reads:
        with pytest.raises(InputError):
            call()
    assert mem.store.counts() == before
    assert [s.session_id for s in mem.sessions("keep")] == ["base"]


@DB
@given(user=clean_id, session_id=clean_id, turn_id=clean_id, speaker=clean_id)
def test_any_valid_id_round_trips_exactly(mem: Memory, user: str, session_id: str, turn_id: str,
                                          speaker: str) -> None:
    result = mem.add_session(user, [{"speaker": speaker, "text": "same text", "id": turn_id}],
                             session_id=session_id, replace=True)
    assert (result.user_id, result.session_id) == (user, session_id)
    assert user in [u.user_id for u in mem.users()]
    assert session_id in [s.session_id for s in mem.sessions(user)]
    assert [(t.speaker, t.id) for t in mem.store.turns(user, session_id)] == [(speaker, turn_id)]
    assert any(c.turn_ids == (turn_id,) and c.session_id == session_id for c in mem.store.chunks(user))
    exported = json.loads(json.dumps(mem.export_user(user)))
    again = parse_obj(exported, "x.json", "qrmem")
    assert any((s.user_id, s.session_id, s.turns[0].id, s.turns[0].speaker) == (user, session_id, turn_id, speaker)
               for s in again)


@FAST
@given(position=st.one_of(st.text(max_size=4), st.floats(), st.booleans(), st.integers(max_value=-1),
                          st.integers(min_value=2**31), st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)))
def test_positions_of_the_wrong_type_are_refused(position) -> None:
    session = {"session_id": "s", "position": position, "turns": [{"speaker": "a", "text": "x"}]}
    with pytest.raises(InputError, match="position"):
        parse_obj({"user_id": "u", "sessions": [session]}, "x.json", "qrmem")
    with pytest.raises(InputError, match="position"):
        parse_jsonl(json.dumps({**session, "user_id": "u"}), "x.jsonl")


@FAST
@given(positions=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=4))
def test_positions_are_kept_or_refused_when_repeated(positions: list[int]) -> None:
    record = {"user_id": "u", "sessions": [{"session_id": f"s{i}", "position": p, "turns": [{"speaker": "a", "text": "x"}]}
                                           for i, p in enumerate(positions)]}
    if len(set(positions)) < len(positions):
        with pytest.raises(InputError, match="both have position"):
            parse_obj(record, "x.json", "qrmem")
    else:
        assert [s.position for s in parse_obj(record, "x.json", "qrmem")] == positions


class _FirstTurn:
    """Deterministic summaries for round trips: a session's is its first turn, a roll appends."""

    def __init__(self) -> None:
        from memory import Summarizer
        from memory.generators import Generator

        class Unused(Generator):
            name = "first-turn"

            def generate(self, messages, options):
                raise AssertionError("not used")

        outer = self

        class Summ(Summarizer):
            def summarize_session(self, turns, date):
                assert not outer.frozen, "a summary was computed again"
                return turns[0].text

            def roll(self, previous, session_summary, date):
                assert not outer.frozen, "the conversation was rolled again"
                return session_summary if not previous else f"{previous} | {session_summary}"

        self.frozen = False
        self.summarizer = Summ(Unused())


def _state(mem: Memory, user: str) -> tuple:
    infos = mem.sessions(user)
    return ([(s.session_id, s.date, s.position) for s in infos],
            [[(t.speaker, t.text, t.time, t.id, t.image_caption) for t in mem.store.turns(user, s.session_id)]
             for s in infos],
            sorted((s.kind, s.session_id or "", s.text, s.model, json.dumps(s.meta, sort_keys=True))
                   for s in mem.summaries(user)))


session_spec = st.fixed_dictionaries(
    {"turns": st.lists(st.fixed_dictionaries({"speaker": clean_id, "text": clean_text},
                                             optional={"time": clean_id, "id": clean_id, "image_caption": clean_text}),
                       min_size=1, max_size=3)},
    optional={"date": clean_id})


@DB
@given(specs=st.lists(session_spec, min_size=1, max_size=4), placed=st.booleans(), summarize=st.booleans(),
       data=st.data())
def test_export_import_round_trips(db: str, tmp_path: Path, specs, placed: bool, summarize: bool, data) -> None:
    from store import SessionIn

    n = len(specs)
    session_ids = data.draw(st.lists(clean_id, min_size=n, max_size=n, unique=True))
    positions = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True)) if placed else [None] * n
    user = f"u-{uuid.uuid4().hex[:8]}"
    try:
        sessions = [SessionIn(user_id=user, session_id=sid, position=pos, **spec)
                    for sid, pos, spec in zip(session_ids, positions, specs, strict=True)]
    except ValueError:  # two turns of a session drew the same id: not a round-trip question
        event("turn ids repeat: skipped")
        return
    fake = _FirstTurn()
    mem = Memory(db, embedder=HashingEmbedder(32), summarizer=fake.summarizer if summarize else None)
    mem.add_sessions(sessions)
    exported = json.loads(json.dumps(mem.export_user(user)))
    state = _state(mem, user)
    fake.frozen = True  # from here on, every summary comes from the export

    # Into the same store: every session unchanged, nothing written (twice).
    before = (mem.store.counts(), mem.store.revision(user))
    for _ in range(2):
        report = mem.import_user(exported)
        assert [r.status for r in report.results] == ["unchanged"] * n
        assert (mem.store.counts(), mem.store.revision(user), _state(mem, user)) == (*before, state)

    # Into a new store (SQLite), and on this backend under another user id: everything comes back.
    fresh = Memory(str(tmp_path / f"{uuid.uuid4().hex}.db"), embedder=HashingEmbedder(32))
    other = f"{user}-copy"
    for target, doc, owner in ((fresh, exported, user), (mem, {**exported, "user_id": other}, other)):
        assert target.import_user(doc).count("added") == n
        assert _state(target, owner) == state
        assert target.import_user(doc).count("unchanged") == n
        if summarize:  # the rolling state came along: nothing is left to summarise
            assert Memory(target.store, embedder=HashingEmbedder(32), summarizer=fake.summarizer).summarize(owner) == 0
    fresh.store.close()
    mem.store.close()

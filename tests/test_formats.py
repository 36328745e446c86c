"""Parsers: LoCoMo and the qrmem chat-log format, with errors that name file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store import InputError, load_file

TINY_LOCOMO = Path(__file__).parents[1] / "agent" / "data" / "tiny_locomo.json"


def write(tmp_path: Path, obj, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_locomo_file_becomes_users_and_sessions_in_order() -> None:
    sessions = load_file(TINY_LOCOMO)
    assert [(s.user_id, s.session_id, s.position) for s in sessions] == [
        ("tiny-1", "session_1", 1), ("tiny-1", "session_2", 2), ("tiny-1", "session_3", 3),
        ("tiny-2", "session_1", 1), ("tiny-2", "session_2", 2)]
    first = sessions[0]
    assert first.date == "10:00 am on 3 March, 2024"
    assert [t.id for t in first.turns] == ["D1:1", "D1:2", "D1:3", "D1:4"]
    assert first.turns[2].speaker == "Ana"


def test_single_locomo_sample_and_numeric_session_order(tmp_path: Path) -> None:
    sample = json.loads(TINY_LOCOMO.read_text())[0]
    conv = sample["conversation"]
    conv["session_10"] = conv.pop("session_2")  # session numbers sort numerically, not as text
    sessions = load_file(write(tmp_path, sample))
    assert [s.session_id for s in sessions] == ["session_1", "session_3", "session_10"]


def test_locomo_image_captions_are_kept(tmp_path: Path) -> None:
    sample = json.loads(TINY_LOCOMO.read_text())[0]
    sample["conversation"]["session_1"][0]["blip_caption"] = "a photo of a grey kitten"
    s = load_file(write(tmp_path, [sample]))[0]
    assert s.turns[0].image_caption == "a photo of a grey kitten"


def test_qrmem_json_and_jsonl(tmp_path: Path) -> None:
    log = {"user_id": "alice", "speakers": ["alice", "bot"], "sessions": [
        {"session_id": "a", "date": "2024-01-01", "turns": [{"speaker": "alice", "text": "hi"}]},
        {"session_id": "b", "turns": [{"speaker": "bot", "text": "hello", "time": "10:00"}]}]}
    sessions = load_file(write(tmp_path, log))
    assert [(s.user_id, s.session_id, s.date) for s in sessions] == [
        ("alice", "a", "2024-01-01"), ("alice", "b", None)]
    lines = "\n".join(json.dumps({"user_id": "bob", "session_id": f"s{i}",
                                  "turns": [{"speaker": "bob", "text": f"t{i}"}]}) for i in range(3))
    sessions = load_file(write(tmp_path, lines + "\n\n", "log.jsonl"))
    assert [s.session_id for s in sessions] == ["s0", "s1", "s2"]


@pytest.mark.parametrize("content, match", [
    ("{not json", r"in.json: malformed JSON"),
    ("", r"in.json: file is empty"),
    ("[]", r"expected a JSON object or a non-empty list"),
    ('"a string"', r"expected a JSON object"),
    ([{"conversation": {}}], r"record #0, field sample_id: missing"),
    ([{"sample_id": "x", "conversation": {"speaker_a": "A", "speaker_b": "B"}}],
     r"record #0 \(x\), field conversation: no session_N lists"),
    ([{"sample_id": "x", "conversation": {"speaker_a": "A", "speaker_b": "B",
                                          "session_1": [{"speaker": "A"}]}}],
     r"record #0 \(x\), field conversation.session_1\[0\].text: missing"),
    ([{"sample_id": "x", "conversation": {"speaker_a": "A", "speaker_b": "B",
                                          "session_1": [{"speaker": "A", "text": "  "}]}}],
     r"field conversation.session_1\[0\].text: text must not be empty"),
    ([{"sample_id": "x", "conversation": {"speaker_a": "A", "speaker_b": "B",
                                          "session_1": [{"speaker": "Zed", "text": "hi"}]}}],
     r"field conversation.session_1\[0\].speaker: unknown speaker 'Zed'"),
    ({"user_id": "u", "sessions": [{"session_id": "a", "turns": []}]},
     r"record #0 \(u\), field sessions\[0\].turns: .*at least 1"),
    ({"user_id": "u", "sessions": [{"session_id": "a", "turns": [{"speaker": "u", "text": 5}]}]},
     r"field sessions\[0\].turns\[0\].text: .*string"),
    ({"user_id": "u", "sessions": [{"session_id": "a", "turns": [{"speaker": "u", "text": "x"}]},
                                   {"session_id": "a", "turns": [{"speaker": "u", "text": "y"}]}]},
     r"session 'a' of user 'u' appears twice"),
    ({"user_id": "u", "speakers": ["u"], "sessions": [
        {"session_id": "a", "turns": [{"speaker": "v", "text": "x"}]}]}, r"unknown speaker 'v'"),
    ({"user_id": "u", "sessions": [{"session_id": "a", "turns": [{"speaker": "u", "text": "x\u0000"}]}]},
     r"NUL"),
    ({"user_id": "u", "sesions": []}, r"unknown keys \['sesions'\]"),
])
def test_bad_input_names_file_record_and_field(tmp_path: Path, content, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_file(write(tmp_path, content))


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '{"user_id": "u", "session_id": "a", "turns": [{"speaker": "u", "text": "x"}]}\n{oops\n',
                 "log.jsonl")
    with pytest.raises(InputError, match=r"log.jsonl: record line 2: malformed JSON"):
        load_file(path)


def test_missing_file_and_deep_nesting(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_file(tmp_path / "nope.json")
    with pytest.raises(InputError):
        load_file(write(tmp_path, "[" * 100_000 + "]" * 100_000))

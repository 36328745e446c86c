"""`qrmem serve`: a real server process on a loopback port driven by httpx (REST, auth, limits,
isolation, SIGTERM, two processes on one PostgreSQL), plus the lanes' back-pressure and timeouts
in process, where a gate in a real embedder holds work for as long as a test needs."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("mcp")

import httpx
from serving import FAST, Server, assert_error, auth, make_key
from typer.testing import CliRunner

import store.errors
from memory import GenerationError, HashingEmbedder, Memory
from qrmem.cli import app
from qrmem.server import errors as server_errors
from store import QrmemError, Store

runner = CliRunner()
PETS = [{"speaker": "alice", "text": "My kitten is called Miso and she loves tuna."},
        {"speaker": "bot", "text": "Miso is a lovely name."}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server on a SQLite file for the module, with keys of every kind."""
    root = tmp_path_factory.mktemp("serve")
    db = str(root / "serve.db")
    keys = {"alice": make_key(db, "alice app", ["alice"]), "all": make_key(db, "admin"),
            "pair": make_key(db, "pair", ["alice", "bob"]), "revoked": make_key(db, "old", ["alice"])}
    res = runner.invoke(app, ["keys", "revoke", "--db", db, keys["revoked"].split("_")[1]])
    assert res.exit_code == 0, res.output
    server = Server(db, root / "server.log", "--max-body", "65536").wait_ready()
    yield server, keys, db
    assert server.stop() == 0, server.output()


def post(server: Server, key: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/users/{path}", json=body, headers=auth(key), timeout=30)


def get(server: Server, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/users/{path}", headers=auth(key), timeout=30)


def delete(server: Server, key: str, path: str) -> httpx.Response:
    return httpx.delete(f"{server.url}/v1/users/{path}", headers=auth(key), timeout=30)


# -- starting ----------------------------------------------------------------------------------------


def test_the_server_refuses_to_start_without_keys_unless_loopback_and_no_auth(tmp_path: Path) -> None:
    db = str(tmp_path / "nokeys.db")
    res = runner.invoke(app, ["serve", "--db", db, *FAST])
    assert res.exit_code == 1 and "no active API key" in res.stderr and "qrmem keys create" in res.stderr
    res = runner.invoke(app, ["serve", "--db", db, "--host", "0.0.0.0", "--no-auth", *FAST])
    assert res.exit_code == 1 and "--no-auth is only allowed on a loopback host" in res.stderr
    res = runner.invoke(app, ["serve", "--db", db, "--workers", "0", *FAST])
    assert res.exit_code == 1 and res.stderr.startswith("error: --workers:")
    key = make_key(db, "k", ["alice"])
    runner.invoke(app, ["keys", "revoke", "--db", db, key.split("_")[1]])
    res = runner.invoke(app, ["serve", "--db", db, *FAST])  # a revoked key is no key
    assert res.exit_code == 1 and "no active API key" in res.stderr


def test_health_readiness_openapi_and_docs(served) -> None:
    server, _, _ = served
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "detail": {}}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["detail"]["embedder"] == "hashing:64"
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/users/{user_id}/sessions", "/v1/users/{user_id}/messages", "/v1/users/{user_id}/search",
            "/v1/users/{user_id}/sessions/{session_id}", "/v1/users/{user_id}/export",
            "/v1/users/{user_id}/summaries", "/v1/users/{user_id}/chat", "/v1/users/{user_id}",
            "/healthz", "/readyz"} <= set(spec["paths"])
    search = spec["paths"]["/v1/users/{user_id}/search"]["post"]
    assert {"401", "403", "413", "422", "429", "503"} <= set(search["responses"])
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert_error(httpx.get(f"{server.url}/nowhere"), 404, "not_found")
    assert_error(httpx.put(f"{server.url}/healthz"), 405, "method_not_allowed")


# -- the REST API -------------------------------------------------------------------------------------


def test_sessions_messages_search_read_delete(served, tmp_path: Path) -> None:
    server, keys, db = served
    key, user = keys["alice"], "alice"
    body = {"session_id": "pets", "date": "1:56 pm on 8 May, 2023", "turns": PETS}
    assert post(server, key, f"{user}/sessions", body).json() == {
        "user_id": user, "session_id": "pets", "status": "added", "turns": 2, "chunks": 2}
    assert post(server, key, f"{user}/sessions", body).json()["status"] == "unchanged"
    changed = {**body, "turns": PETS[:1]}
    assert "replace" in assert_error(post(server, key, f"{user}/sessions", changed), 409, "conflict")
    assert post(server, key, f"{user}/sessions", {**changed, "replace": True}).json()["status"] == "replaced"
    assert post(server, key, f"{user}/sessions", {**body, "replace": True}).json()["turns"] == 2

    opened = post(server, key, f"{user}/messages", {"turns": [{"speaker": user, "text": "I booked Lisbon for June."}],
                                                    "date": "2023-06-01"}).json()
    sid = opened["session_id"]
    assert opened["status"] == "added" and opened["turns"] == 1 and sid.startswith("chat-")
    more = post(server, key, f"{user}/messages", {"session_id": sid, "turns": [
        {"speaker": "bot", "text": "Lisbon in June is lovely."}, {"speaker": user, "text": "For the marathon!"}]})
    assert more.json() == {"user_id": user, "session_id": sid, "status": "replaced", "turns": 3, "chunks": 3}
    turns = get(server, key, f"{user}/sessions/{sid}").json()
    assert turns["date"] == "2023-06-01" and [t["text"] for t in turns["turns"]] == [
        "I booked Lisbon for June.", "Lisbon in June is lovely.", "For the marathon!"]
    assert [t["id"] for t in turns["turns"]] == [f"{sid}:1", f"{sid}:2", f"{sid}:3"]

    listed = get(server, key, f"{user}/sessions").json()
    assert [(s["session_id"], s["turns"]) for s in listed["sessions"]] == [("pets", 2), (sid, 3)]

    hits = post(server, key, f"{user}/search", {"query": "what is the kitten called", "k": 2}).json()["hits"]
    cli = runner.invoke(app, ["search", "--db", db, "--user", user, "--embedder", "hashing:64", "--k", "2",
                              "--json", "what is the kitten called"])
    assert hits == json.loads(cli.stdout)  # the same hits, field for field, as `qrmem search --json`
    assert hits[0]["text"] == "alice: My kitten is called Miso and she loves tuna."
    filtered = post(server, key, f"{user}/search", {"query": "kitten Miso", "k": 5, "after": "2023-05-09"}).json()
    assert {h["session_id"] for h in filtered["hits"]} == {sid} and len(filtered["hits"]) == 3
    only = post(server, key, f"{user}/search", {"query": "Lisbon", "session_ids": ["pets"], "mode": "bm25"}).json()
    assert {h["session_id"] for h in only["hits"]} == {"pets"}

    exported = get(server, key, f"{user}/export").json()
    assert exported["format"] == "qrmem.v1" and [s["session_id"] for s in exported["sessions"]] == ["pets", sid]
    assert get(server, key, f"{user}/summaries").json() == {"user_id": user, "summaries": []}
    assert "no generator" in assert_error(post(server, key, f"{user}/chat", {"message": "hi"}), 503, "not_configured")
    assert "reranker" in assert_error(post(server, key, f"{user}/search", {"query": "x", "rerank": True}),
                                      503, "not_configured")

    gone = delete(server, key, f"{user}/sessions/{sid}").json()
    assert gone["session_id"] == sid and gone["turns"] == 3
    assert_error(get(server, key, f"{user}/sessions/{sid}"), 404, "not_found")
    assert_error(delete(server, key, f"{user}/sessions/{sid}"), 404, "not_found")
    assert delete(server, key, user).json()["turns"] == 2
    message = assert_error(get(server, key, f"{user}/sessions"), 404, "not_found")
    assert db not in message  # the store's location is not the client's business
    assert post(server, key, f"{user}/search", {"query": "kitten"}).json() == {"hits": [], "relevance": None}


def test_search_hits_carry_their_grounded_time_notes(served) -> None:
    server, keys, db = served
    body = {"session_id": "s1", "date": "1:56 pm on 8 May, 2023", "turns": [
        {"speaker": "tina", "text": "I went to a pottery class yesterday."},
        {"speaker": "bot", "text": "See you next time!"}]}
    assert post(server, keys["all"], "tina/sessions", body).json()["status"] == "added"
    hits = post(server, keys["all"], "tina/search", {"query": "pottery class", "k": 2}).json()["hits"]
    assert [(h["text"], h["time_notes"]) for h in hits] == [
        ("tina: I went to a pottery class yesterday.", "yesterday = 7 May 2023"), ("bot: See you next time!", None)]
    cli = runner.invoke(app, ["search", "--db", db, "--user", "tina", "--embedder", "hashing:64", "--k", "2",
                              "--json", "pottery class"])
    assert hits == json.loads(cli.stdout)
    assert delete(server, keys["all"], "tina").json()["turns"] == 2


def test_authentication_and_user_scope(served) -> None:
    server, keys, _ = served
    routes = [("post", "sessions", {"turns": PETS}), ("post", "messages", {"turns": PETS}),
              ("post", "search", {"query": "kitten"}), ("get", "sessions", None), ("get", "sessions/s1", None),
              ("delete", "sessions/s1", None), ("get", "export", None), ("get", "summaries", None),
              ("post", "chat", {"message": "hi"}), ("delete", "", None)]

    def call(method: str, path: str, body, headers: dict[str, str], user: str = "alice") -> httpx.Response:
        url = f"{server.url}/v1/users/{user}/{path}".rstrip("/")
        return httpx.request(method, url, json=body, headers=headers, timeout=30)

    before = Store(served[2]).counts()
    for method, path, body in routes:
        resp = call(method, path, body, {})
        assert "Bearer" in assert_error(resp, 401, "unauthorized") and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(call(method, path, body, {"Authorization": "Basic abc"}), 401, "unauthorized")
        assert_error(call(method, path, body, auth("qrm_000000000000_" + "A" * 43)), 401, "unauthorized")
        assert_error(call(method, path, body, auth(keys["alice"] + "x")), 401, "unauthorized")
        assert_error(call(method, path, body, auth(keys["revoked"])), 401, "unauthorized")
        message = assert_error(call(method, path, body, auth(keys["alice"]), user="bob"), 403, "forbidden")
        assert "'bob'" in message and keys["alice"] not in message
        assert_error(call(method, path, body, auth(keys["pair"]), user="carol"), 403, "forbidden")
    assert Store(served[2]).counts() == before  # nothing refused was written
    # Auth comes before reading the body: a bad body without a key is a 401, not a 400.
    resp = httpx.post(f"{server.url}/v1/users/alice/search", content=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert_error(resp, 401, "unauthorized")


def test_bad_bodies_get_the_right_4xx_and_write_nothing(served) -> None:
    server, keys, db = served
    key, url = keys["all"], f"{server.url}/v1/users/dora"
    post(server, key, "dora/sessions", {"session_id": "s0", "turns": PETS})
    before = Store(db).counts()
    json_headers = {**auth(key), "Content-Type": "application/json"}
    cases = [
        (b'{"turns": [', json_headers, 400, "bad_json"),
        (b'{"turns": [{"speaker": "a", "text": "hi"}]}', {**auth(key), "Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
    ]
    for content, headers, status, kind in cases:
        assert_error(httpx.post(f"{url}/sessions", content=content, headers=headers), status, kind)
    for body, field in [
        ({"turns": "hello"}, "body.turns"),
        ({"turns": []}, "body.turns"),
        ({"turns": [{"speaker": "a"}]}, "body.turns.0.text"),
        ({"turns": [{"speaker": "a", "text": "   "}]}, "body.turns.0.text"),
        ({"turns": [{"speaker": "a", "text": "x\x00y"}]}, "body.turns.0.text"),
        ({"turns": [{"speaker": "a", "text": "hi", "mood": "happy"}]}, "body.turns.0.mood"),
        ({"turns": PETS, "replace": "yes"}, "body.replace"),
        ({"turns": PETS, "session_id": 7}, "body.session_id"),
        ({"turns": PETS, "extra": 1}, "body.extra"),
        ([PETS], "body"),
    ]:
        message = assert_error(post(server, key, "dora/sessions", body), 422, "validation_error")
        assert message.startswith(field), (body, message)
    for body, field in [({"query": "kitten", "k": "3"}, "body.k"), ({"query": "kitten", "k": 0}, "body.k"),
                        ({"query": ""}, "body.query"), ({"query": "kitten", "mode": "fuzzy"}, "body.mode"),
                        ({"query": "kitten", "after": "May 2023"}, "body.after"), ({}, "body.query")]:
        assert assert_error(post(server, key, "dora/search", body), 422, "validation_error").startswith(field)
    assert "non-empty" in assert_error(post(server, key, "dora/search", {"query": "   "}), 400, "invalid_input")
    assert "later than before" in assert_error(post(server, key, "dora/search", {
        "query": "x", "after": "2024-02-01", "before": "2024-01-01"}), 400, "invalid_input")
    assert "200 characters" in assert_error(post(server, key, "u" * 201 + "/sessions", {"turns": PETS}),
                                            400, "invalid_input")
    big = {"turns": [{"speaker": "a", "text": "x" * 70_000}]}  # over --max-body 65536
    assert "65536 bytes" in assert_error(post(server, key, "dora/sessions", big), 413, "payload_too_large")

    def chunks():  # no Content-Length: the size is only known while the body streams in
        for _ in range(40):
            yield b'{"turns": [{"speaker": "a", "text": "' + b"y" * 2000
    resp = httpx.post(f"{url}/sessions", content=chunks(), headers=json_headers)
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert_error(resp, 413, "payload_too_large")
    assert Store(db).counts() == before
    assert post(server, key, "dora/sessions", {"turns": PETS, "session_id": "s1"}).status_code == 200  # still serving


def test_users_never_see_each_other(served) -> None:
    server, keys, _ = served
    key = keys["all"]
    for user, word in [("erin", "saxophone"), ("finn", "trombone")]:
        post(server, key, f"{user}/sessions", {"session_id": "s1", "date": "2024-01-01", "turns": [
            {"speaker": user, "text": f"I play the {word} on Sundays."}]})
        post(server, key, f"{user}/messages", {"session_id": "open", "turns": [{"speaker": user, "text": f"more {word}"}]})
    blob = json.dumps
    assert "saxophone" not in blob(post(server, key, "finn/search", {"query": "saxophone", "k": 50}).json())
    assert "saxophone" not in blob(post(server, key, "finn/search", {"query": "saxophone", "session_ids": ["s1"]}).json())
    assert "saxophone" not in blob(get(server, key, "finn/sessions/s1").json())
    assert "saxophone" not in blob(get(server, key, "finn/sessions/open").json())
    assert "saxophone" not in blob(get(server, key, "finn/export").json())
    assert [s["turns"] for s in get(server, key, "finn/sessions").json()["sessions"]] == [1, 1]
    assert delete(server, key, "finn/sessions/s1").status_code == 200
    assert "saxophone" in blob(get(server, key, "erin/sessions/s1").json())  # same session id, other user
    assert delete(server, key, "finn").status_code == 200
    assert len(get(server, key, "erin/sessions").json()["sessions"]) == 2
    assert post(server, key, "erin/search", {"query": "saxophone"}).json()["hits"][0]["user_id"] == "erin"


def test_chat_retrieves_answers_and_writes_back_through_the_model_process(tmp_path: Path, chat_server) -> None:
    """/chat with an OpenAI-compatible generator (a scripted loopback server): the generator runs in
    the server's model process, the answer comes back with the memories it used, and the exchange
    is stored."""
    db = str(tmp_path / "chat.db")
    key = make_key(db, "chat", ["gus"])
    chat_server["script"] = [(200, {"choices": [{"message": {"content": " Your kitten is Miso. "}}]})]
    server = Server(db, tmp_path / "server.log", "--generator", "openai:test-model", "--base-url",
                    chat_server["url"]).wait_ready()
    try:
        post(server, key, "gus/sessions", {"session_id": "pets", "date": "8 May 2024", "turns": PETS})
        answer = post(server, key, "gus/chat", {"message": "What is my kitten called?"}).json()
        assert answer["text"] == "Your kitten is Miso."
        assert answer["chunks"][0]["session_id"] == "pets" and "Miso" in answer["chunks"][0]["text"]
        prompt = chat_server["requests"][-1]["body"]["messages"][-1]["content"]
        assert "[8 May 2024] alice: My kitten is called Miso" in prompt and prompt.endswith("What is my kitten called?")
        stored = get(server, key, f"gus/sessions/{answer['session_id']}").json()["turns"]
        assert [(t["speaker"], t["text"]) for t in stored] == [("gus", "What is my kitten called?"),
                                                              ("assistant", "Your kitten is Miso.")]
        chat_server["script"] = [(400, {"error": "no such model"})]
        assert "refused the request" in assert_error(post(server, key, "gus/chat", {"message": "again?"}),
                                                     502, "generation_failed")
    finally:
        assert server.stop() == 0, server.output()


# -- errors ---------------------------------------------------------------------------------------------


def _all_subclasses(cls: type) -> set[type]:
    return {cls} | {s for sub in cls.__subclasses__() for s in _all_subclasses(sub)}


def test_every_qrmem_error_class_has_its_status() -> None:
    import agent  # noqa: F401  (every library module that may define an error is imported)
    import memory.qr

    expected = {store.errors.InputError: 400, store.errors.NotFoundError: 404,
                store.errors.SessionConflictError: 409, store.errors.ConcurrentUpdateError: 409,
                store.errors.StoreError: 503, memory.errors.ModelLoadError: 503,
                memory.errors.MissingDependencyError: 503, GenerationError: 502,
                store.errors.MalformedJSONError: 400, store.errors.DamagedStoreError: 500,
                store.errors.OutputError: 500,
                server_errors.AuthError: 401, server_errors.ForbiddenError: 403,
                server_errors.PayloadTooLargeError: 413, server_errors.OverloadedError: 429,
                server_errors.RequestTimeoutError: 503, server_errors.NotReadyError: 503,
                server_errors.NotConfiguredError: 503}
    known = {c for c in _all_subclasses(QrmemError) - {QrmemError, server_errors.ServiceError}
             if c.__module__.split(".")[0] in ("store", "memory", "agent", "qrmem")}
    assert known <= set(expected), f"map these errors to a status: {known - set(expected)}"
    for cls, status in expected.items():
        got, kind, retry = server_errors.classify(cls("what went wrong; what to do"))
        assert got == status and kind not in ("error", "internal_error"), cls
        if status == 503 and cls.__module__.startswith(("store", "memory")):
            assert retry is not None, cls  # the store or a model may come back: say when to retry
    assert server_errors.classify(server_errors.OverloadedError("busy", retry_after=3)) == (429, "overloaded", 3)
    assert server_errors.classify(QrmemError("unmapped")) == (500, "error", None)


# -- lanes, readiness, timeouts and crashes, in process ------------------------------------------------


class GateEmbedder(HashingEmbedder):
    """A real embedder that waits at a gate while embedding a text that contains `hold`."""

    def __init__(self, hold: str = "HOLD") -> None:
        super().__init__(64)
        self.hold = hold
        self.gate, self.entered = threading.Event(), threading.Event()

    def embed_batch(self, texts):
        if any(self.hold in t for t in texts):
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().embed_batch(texts)


class BrokenEmbedder(HashingEmbedder):
    def embed_batch(self, texts):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("secret internal detail at /srv/qrmem/db")
        return super().embed_batch(texts)


def in_process(db: str, embedder, **options):
    from fastapi.testclient import TestClient

    from qrmem.server.app import create_app
    from qrmem.server.config import ServeConfig
    from qrmem.server.service import MemoryService

    cfg = ServeConfig(db=db, no_auth=True, reranker="none", **options)
    service = MemoryService(cfg, memory=Memory(db, embedder=embedder))
    return service, TestClient(create_app(service), raise_server_exceptions=False)


def test_a_full_lane_answers_429_with_retry_after(sqlite_db: str) -> None:
    gate = GateEmbedder()
    gate.gate.set()  # let the warm-up through
    _, client = in_process(sqlite_db, gate, workers=1, queue=0)
    with client:
        assert client.get("/readyz").status_code == 200
        gate.gate.clear()
        held: dict[str, int] = {}
        thread = threading.Thread(target=lambda: held.update(status=client.post(
            "/v1/users/u/sessions", json={"session_id": "held", "turns": [{"speaker": "u", "text": "HOLD"}]}).status_code))
        thread.start()
        assert gate.entered.wait(30)  # the one worker is busy and nothing may wait
        resp = client.post("/v1/users/u/sessions", json={"session_id": "s2", "turns": [{"speaker": "u", "text": "hi"}]})
        assert "busy" in assert_error(resp, 429, "overloaded") and int(resp.headers["Retry-After"]) >= 1
        assert_error(client.post("/v1/users/u/search", json={"query": "hi"}), 429, "overloaded")
        gate.gate.set()
        thread.join(30)
        assert held == {"status": 200}
        assert client.post("/v1/users/u/search", json={"query": "HOLD"}).json()["hits"][0]["session_id"] == "held"
    assert [s.session_id for s in Store(sqlite_db).sessions("u")] == ["held"]


def test_past_the_deadline_a_running_request_gets_503_and_a_queued_one_429_unprocessed(sqlite_db: str) -> None:
    gate = GateEmbedder()
    gate.gate.set()
    _, client = in_process(sqlite_db, gate, workers=1, queue=4, timeout=0.5)
    with client:
        gate.gate.clear()
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: results.update(first=client.post(
            "/v1/users/u/sessions", json={"session_id": "slow", "turns": [{"speaker": "u", "text": "HOLD"}]})))
        first.start()
        assert gate.entered.wait(30)
        queued = client.post("/v1/users/u/sessions", json={"session_id": "queued", "turns": [{"speaker": "u", "text": "x"}]})
        assert "dropped unprocessed" in assert_error(queued, 429, "overloaded") and "Retry-After" in queued.headers
        first.join(30)
        assert "resending it is safe" in assert_error(results["first"], 503, "timeout")  # its answer gave up ...
        gate.gate.set()
    # ... but its write, once started, finished whole when the lane shut down; the queued one never ran.
    assert [(s.session_id, s.turns) for s in Store(sqlite_db).sessions("u")] == [("slow", 1)]
    assert Store(sqlite_db).check().ok


def test_a_lane_refuses_work_that_would_only_wait_past_its_deadline() -> None:
    import time

    import anyio

    from qrmem.server.lanes import Lane

    lane = Lane("model", workers=1, queue=10, timeout=0.5)
    gate = threading.Event()

    async def main() -> None:
        with pytest.raises(server_errors.RequestTimeoutError):
            await lane.run(time.sleep, 0.7)  # the pace the lane measures: longer than its deadline
        while lane.inflight:  # the sleeping job still holds its slot until its thread is done
            await anyio.sleep(0.01)
        assert await lane.run(lambda: "alone") == "alone"  # nothing ahead: always admitted
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: lane.run(gate.wait, 30))
            while not lane.inflight:
                await anyio.sleep(0.01)
            with pytest.raises(server_errors.OverloadedError, match="longer than the 0.5 s deadline") as exc:
                await lane.run(lambda: "queued")  # the queue has room, but it would time out waiting
            assert exc.value.retry_after >= 1
            gate.set()

    anyio.run(main)
    lane.shutdown()


def test_not_ready_until_the_models_are_loaded(sqlite_db: str) -> None:
    loader = GateEmbedder(hold="warm up")  # holds the start-up warm-up: the models are "loading"
    _, client = in_process(sqlite_db, loader)
    with client:
        assert loader.entered.wait(30)
        assert client.get("/healthz").status_code == 200
        resp = client.get("/readyz")
        assert "loading" in assert_error(resp, 503, "not_ready") and resp.headers["Retry-After"] == "5"
        resp = client.post("/v1/users/u/sessions", json={"turns": [{"speaker": "u", "text": "hi"}]})
        assert_error(resp, 503, "not_ready")
        assert_error(client.post("/v1/users/u/search", json={"query": "hi"}), 503, "not_ready")
        assert_error(client.get("/v1/users/u/sessions"), 404, "not_found")  # no model needed: served
        loader.gate.set()
        for _ in range(600):  # hang guard
            if client.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.post("/v1/users/u/sessions", json={"turns": [{"speaker": "u", "text": "hi"}]}).status_code == 200


def test_a_crash_is_a_500_without_a_stack_trace_and_the_server_goes_on(sqlite_db: str) -> None:
    _, client = in_process(sqlite_db, BrokenEmbedder(64))
    with client:
        resp = client.post("/v1/users/u/sessions", json={"turns": [{"speaker": "u", "text": "BOOM"}]})
        assert_error(resp, 500, "internal_error")
        assert "secret internal detail" not in resp.text and "RuntimeError" not in resp.text
        assert client.post("/v1/users/u/sessions", json={"turns": [{"speaker": "u", "text": "fine"}]}).status_code == 200
    assert [s.turns for s in Store(sqlite_db).sessions("u")] == [1]


# -- shutdown --------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_writes_in_flight_and_leaves_a_clean_store(tmp_path: Path) -> None:
    db = str(tmp_path / "term.db")
    key = make_key(db, "writer")
    server = Server(db, tmp_path / "server.log", "--workers", "2").wait_ready()
    n, size = 20, 500
    results: dict[int, object] = {}
    first_done = threading.Event()

    def write(i: int) -> None:
        body = {"session_id": f"s{i}", "turns": [{"speaker": "w", "text": f"turn {j} of session {i}"}
                                                for j in range(size)]}
        try:
            resp = httpx.post(f"{server.url}/v1/users/writer/sessions", json=body, headers=auth(key), timeout=120)
            results[i] = resp.status_code
        except httpx.TransportError:  # sent after the server stopped accepting
            results[i] = "refused"
        first_done.set()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    assert first_done.wait(120)
    done_before = sum(v == 200 for v in list(results.values()))
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert server.stop() == 0, server.output()
    assert set(results.values()) <= {200, "refused"}, results  # never a 5xx, never a broken answer
    ok = sorted(i for i, v in results.items() if v == 200)
    assert len(ok) > done_before, (done_before, results)  # requests in flight at SIGTERM were finished
    st = Store(db)
    report = st.check()
    assert report.ok, report.problems
    stored = {s.session_id: s.turns for s in st.sessions("writer")}
    assert {f"s{i}" for i in ok} <= set(stored) and set(stored.values()) == {size}


# -- several processes on one store (PostgreSQL: how a deployment outgrows a machine) ----------------


def test_two_server_processes_on_one_store(db: str, tmp_path: Path) -> None:
    url = db
    servers: list[Server] = []
    try:
        key = make_key(url, "fleet")
        servers = [Server(url, tmp_path / f"server{i}.log") for i in range(2)]  # start both, then wait
        for server in servers:
            server.wait_ready()
        a, b = servers
        results: list[tuple[int, str]] = []

        def write(i: int) -> None:
            server = servers[i % 2]
            sid = f"shared{i % 5}" if i % 3 == 0 else f"s{i}"  # some sessions sent through both
            body = {"session_id": sid, "turns": [{"speaker": "u", "text": f"{sid}: the tandem kayak story"}]}
            resp = post(server, key, "pat/sessions", body)
            results.append((resp.status_code, resp.json()["status"]))

        threads = [threading.Thread(target=write, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {s for s, _ in results} == {200} and len(results) == 30
        sessions_a = get(a, key, "pat/sessions").json()["sessions"]
        assert sessions_a == get(b, key, "pat/sessions").json()["sessions"]
        ids = [s["session_id"] for s in sessions_a]
        assert len(ids) == len(set(ids)) == 20 + len({i % 5 for i in range(30) if i % 3 == 0})
        post(a, key, "pat/sessions", {"session_id": "from-a", "turns": [{"speaker": "u", "text": "zeppelin ride"}]})
        assert post(b, key, "pat/search", {"query": "zeppelin", "k": 1}).json()["hits"][0]["session_id"] == "from-a"
        assert delete(b, key, "pat/sessions/from-a").status_code == 200
        assert all(h["session_id"] != "from-a" for h in post(a, key, "pat/search", {"query": "zeppelin"}).json()["hits"])
        runner.invoke(app, ["keys", "revoke", "--db", url, key.split("_")[1]])
        for server in servers:
            assert_error(get(server, key, "pat/sessions"), 401, "unauthorized")
        assert Store(url).check().ok
    finally:
        for server in servers:
            server.stop()


@pytest.mark.slow
def test_rerank_through_the_server_with_the_embedded_qrranker(tmp_path: Path, qr_cache) -> None:
    db = str(tmp_path / "qr.db")
    key = make_key(db, "qr")
    server = Server(db, tmp_path / "server.log", "--embedder", "hashing:64", fast=False).wait_ready(600)
    try:
        post(server, key, "ana/sessions", {"session_id": "s1", "turns": [
            {"speaker": "ana", "text": "I repainted the fence last weekend."},
            {"speaker": "ana", "text": "My kitten's name is Miso, a grey tabby."},
            {"speaker": "ana", "text": "The weather was grey all week."}]})
        found = post(server, key, "ana/search", {"query": "What is the name of Ana's kitten?", "k": 3,
                                                 "rerank": True}).json()
        hits = found["hits"]
        assert hits[0]["text"] == "ana: My kitten's name is Miso, a grey tabby."
        assert found["relevance"] == 1.0  # every candidate was said by ana, the person asked about
        assert [h["rank"] for h in hits] == [1, 2, 3]
        for h in hits:  # the model process's evidence spans come back as offsets into the text
            assert h["evidence"] and all(h["text"][e["start"]:e["end"]] == e["text"] for e in h["evidence"])
    finally:
        assert server.stop() == 0

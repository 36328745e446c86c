"""The MCP server through the official SDK's clients: `qrmem mcp` over stdio (the client launches it)
and `/mcp` of a real `qrmem serve` over streamable HTTP with an API key. Every tool is called; the
user is bound by the server (--user) or the key, never by a tool argument."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")

import anyio
import httpx
import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from serving import FAST, Server, assert_error, auth, make_key, qrmem_env
from typer.testing import CliRunner

from memory import Memory
from qrmem.cli import app
from store import Store

TOOLS = {"add_memory", "search_memories", "get_memories", "delete_memory", "delete_all_memories"}
BOB = [{"speaker": "bob", "text": "My secret hobby is competitive origami."}]


def seed_bob(db: str) -> None:
    Memory(db, embedder="hashing:64").add_session("bob", BOB, session_id="s1", date="2024-01-05")


def data(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text
    return text


async def exercise(session: ClientSession, user: str) -> list[str]:
    """List the tools and call each one; returns what the tools answered (as JSON), for leak checks."""
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        props = set(tool.input_schema.get("properties", {}))
        assert not props & {"user", "user_id", "userId"}, (tool.name, props)  # the user is never an argument
        assert len(tool.description) > 80 and "call" in tool.description.lower(), tool.name
    assert tools["delete_all_memories"].annotations.destructive_hint is True
    assert tools["search_memories"].annotations.read_only_hint is True
    seen: list[str] = []

    async def call(name: str, args: dict):
        result = await session.call_tool(name, args)
        seen.append(json.dumps(result.structured_content) + " ".join(getattr(c, "text", "") for c in result.content))
        return result

    assert data(await call("get_memories", {})) ["sessions"] == []  # nothing stored for this user yet
    first = data(await call("add_memory", {"text": "My kitten is called Miso.", "date": "8 May 2024"}))
    assert first["status"] == "added" and first["turns"] == 1
    sid = first["session_id"]
    more = data(await call("add_memory", {"session_id": sid, "messages": [
        {"role": "assistant", "content": "What a lovely name!"}, {"role": "user", "content": "She is a grey tabby."}]}))
    assert more == {"session_id": sid, "status": "replaced", "turns": 3}
    other = data(await call("add_memory", {"text": "I am training for the Lisbon marathon.", "date": "2024-06-01"}))
    assert other["session_id"] != sid

    hits = data(await call("search_memories", {"query": "what is my cat called", "limit": 2}))["hits"]
    assert hits[0]["text"] == f"{user}: My kitten is called Miso." and hits[0]["session_id"] == sid
    assert hits[0]["session_date"] == "8 May 2024" and len(hits) == 2
    assert hits[0]["evidence"] == []  # evidence and relevance come with rerank only
    assert data(await call("search_memories", {"query": "what is my cat called"}))["relevance"] is None
    june = data(await call("search_memories", {"query": "kitten", "after": "2024-05-09"}))["hits"]
    assert {h["session_id"] for h in june} == {other["session_id"]}
    assert "YYYY-MM-DD" in error_text(await call("search_memories", {"query": "kitten", "after": "last week"}))
    assert "reranker" in error_text(await call("search_memories", {"query": "kitten", "rerank": True}))
    schema_error = await call("search_memories", {"query": "kitten", "limit": 0})  # the SDK checks the schema
    assert schema_error.is_error and "limit" in schema_error.content[0].text
    assert "Traceback" not in schema_error.content[0].text
    assert "either text or messages" in error_text(await call("add_memory", {}))
    assert "empty" in error_text(await call("add_memory", {"text": "   "}))

    listed = data(await call("get_memories", {}))["sessions"]
    assert [(s["session_id"], s["turns"]) for s in listed] == [(sid, 3), (other["session_id"], 1)]
    one = data(await call("get_memories", {"session_id": sid}))
    assert [(t["speaker"], t["text"]) for t in one["turns"]] == [
        (user, "My kitten is called Miso."), ("assistant", "What a lovely name!"), (user, "She is a grey tabby.")]
    assert "no session" in error_text(await call("get_memories", {"session_id": "s1"}))  # bob's id, not ours
    assert "no session" in error_text(await call("delete_memory", {"session_id": "s1"}))

    gone = data(await call("delete_memory", {"session_id": other["session_id"]}))
    assert gone == {"session_id": other["session_id"], "turns": 1, "chunks": 1}
    assert "confirm=true" in error_text(await call("delete_all_memories", {"confirm": False}))
    assert data(await call("get_memories", {}))["sessions"][0]["session_id"] == sid  # still there
    everything = data(await call("delete_all_memories", {"confirm": True}))
    assert everything == {"session_id": None, "turns": 3, "chunks": 3}
    assert data(await call("search_memories", {"query": "kitten"}))["hits"] == []
    return seen


def test_stdio_server_lists_and_calls_every_tool_for_its_user_only(tmp_path: Path) -> None:
    db = str(tmp_path / "mcp.db")
    seed_bob(db)
    params = StdioServerParameters(command=sys.executable, env=qrmem_env(), cwd=str(tmp_path),
                                   args=["-m", "qrmem", "mcp", "--db", db, "--user", "alice", *FAST])

    async def main(errlog) -> list[str]:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            return await exercise(session, "alice")

    with open(tmp_path / "stderr.log", "w") as errlog:
        seen = anyio.run(main, errlog)
    assert not any("origami" in s for s in seen)  # bob's memory never came through a tool
    st = Store(db)
    assert [u.user_id for u in st.users()] == ["bob"] and st.sessions("bob")[0].turns == 1
    assert st.check().ok


def test_stdio_server_refuses_a_bad_user_at_start(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["mcp", "--db", str(tmp_path / "x.db"), "--user", " ", *FAST])
    assert res.exit_code == 1 and "--user is empty" in res.stderr


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-http")
    db = str(root / "mcp.db")
    seed_bob(db)
    keys = {"carol": make_key(db, "carol", ["carol"]), "pair": make_key(db, "pair", ["dave", "bob"]),
            "revoked": make_key(db, "old", ["carol"])}
    CliRunner().invoke(app, ["keys", "revoke", "--db", db, keys["revoked"].split("_")[1]])
    server = Server(db, root / "server.log").wait_ready()
    yield server, keys, db
    assert server.stop() == 0, server.output()


async def _over_http(url: str, headers: dict[str, str], user: str) -> list[str]:
    async with (httpx2.AsyncClient(headers=headers, timeout=30) as client,
                streamable_http_client(f"{url}/mcp", http_client=client) as (read, write),
                ClientSession(read, write) as session):
        return await exercise(session, user)


def test_http_mcp_binds_the_keys_only_user(http_server) -> None:
    server, keys, db = http_server
    seen = anyio.run(_over_http, server.url, auth(keys["carol"]), "carol")
    assert not any("origami" in s for s in seen)
    assert Store(db).sessions("bob")[0].turns == 1


def test_http_mcp_binds_the_user_named_by_the_header_when_the_key_allows_it(http_server) -> None:
    server, keys, db = http_server
    seen = anyio.run(_over_http, server.url, {**auth(keys["pair"]), "X-Qrmem-User": "dave"}, "dave")
    assert not any("origami" in s for s in seen)
    assert Store(db).sessions("bob")[0].turns == 1


def test_http_mcp_refuses_callers_it_cannot_bind(http_server) -> None:
    server, keys, _ = http_server
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}

    def post(extra: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.url}/mcp", json=init, headers={**headers, **extra}, timeout=30)

    assert_error(post({}), 401, "unauthorized")
    assert_error(post(auth(keys["revoked"])), 401, "unauthorized")
    assert_error(post(auth(keys["carol"] + "x")), 401, "unauthorized")
    assert "X-Qrmem-User" in assert_error(post(auth(keys["pair"])), 400, "invalid_input")
    assert "'carol'" in assert_error(post({**auth(keys["pair"]), "X-Qrmem-User": "carol"}), 403, "forbidden")
    assert_error(post({**auth(keys["carol"]), "X-Qrmem-User": "bob"}), 403, "forbidden")
    ok = post(auth(keys["carol"]))
    assert ok.status_code == 200 and ok.json()["result"]["serverInfo"]["name"] == "qrmem"

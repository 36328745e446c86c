"""Helpers for the server tests: a real `qrmem serve` process on a free loopback port, and keys."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from qrmem.cli import app

FAST = ["--embedder", "hashing:64", "--reranker", "none"]  # no model to load: the server is the subject
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_key(db: str, name: str, users: list[str] | None = None) -> str:
    scope = ["--all"] if users is None else ["--users", ",".join(users)]
    res = CliRunner().invoke(app, ["keys", "create", "--db", db, "--name", name, "--json", *scope])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["key"]


def qrmem_env() -> dict[str, str]:
    """The environment of a child `python -m qrmem`: this checkout first on the path."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


class Server:
    """`python -m qrmem serve` in a child process; its output goes to `log`."""

    def __init__(self, db: str, log: Path, *args: str, fast: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qrmem", "serve", "--db", db, "--port", str(self.port),
             "--log-level", "warning", *(FAST if fast else []), *args],
            stdout=self._out, stderr=subprocess.STDOUT, env=qrmem_env(), cwd=str(log.parent))

    def wait_ready(self, limit: float = 120.0) -> Server:
        """Poll /readyz until the models are in (a hang guard, not a timing assertion)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, limit: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(resp: httpx.Response, status: int, kind: str) -> str:
    """A JSON error of the documented shape, and no stack trace anywhere in the response."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    message = body["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in resp.text and 'File "' not in resp.text
    return message

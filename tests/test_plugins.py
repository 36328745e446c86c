"""Plug-ins: a separate package, installed here with pip, registers an embedder, a reranker, a chunker
and a generator through entry points; `Memory(embedder="NAME:ARG", reranker="NAME:ARG")` and the CLI
then use them without any change to qrmem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_LOCOMO = ROOT / "agent" / "data" / "tiny_locomo.json"

PLUGIN = '''
import numpy as np

from memory import Embedder, Generator, Reranker
from store import ChunkIn, Chunker, render_turn


class LetterCounts(Embedder):
    """Counts of each letter, folded into `dim` buckets."""

    def __init__(self, dim):
        self.dim = dim
        self.name = f"letters:{dim}"  # a spec that recreates it

    def embed_batch(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text.lower():
                if ch.isalpha():
                    out[row, ord(ch) % self.dim] += 1.0
        return out


class ShortestFirst(Reranker):
    def score(self, query, docs, *, contexts=None, summary=None):
        return [-float(len(d)) for d in docs]


class Pairs(Chunker):
    spec = "pairs"

    def chunk(self, turns):
        return [ChunkIn("\\n".join(render_turn(t) for t in turns[i:i + 2]), tuple(range(i, min(i + 2, len(turns)))))
                for i in range(0, len(turns), 2)]


class Parrot(Generator):
    name = "parrot"

    def generate(self, messages, options):
        return "parrot: " + messages[-1]["content"][-20:]


def embedder(arg, **options):
    return LetterCounts(int(arg or 8))


def reranker(arg, **options):
    return ShortestFirst()


def chunker(arg, **options):
    return Pairs()


def generator(arg, **options):
    return Parrot()
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "qrmem-letters"
version = "0.1"

[project.entry-points."qrmem.embedders"]
letters = "qrmem_letters:embedder"

[project.entry-points."qrmem.rerankers"]
shortest = "qrmem_letters:reranker"

[project.entry-points."qrmem.chunkers"]
pairs = "qrmem_letters:chunker"

[project.entry-points."qrmem.generators"]
parrot = "qrmem_letters:generator"
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plug-in package, pip-installed (offline, no dependencies) into its own site directory."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "qrmem_letters").mkdir()
    (src / "qrmem_letters" / "__init__.py").write_text(PLUGIN)
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True)
    return site


def run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=False)


def test_a_plugin_package_adds_backends_to_the_python_api(plugin_site: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import json
        from memory import EMBEDDERS, RERANKERS, Memory, load_generator
        from store import CHUNKERS

        db = {str(tmp_path / "m.db")!r}
        mem = Memory(db, embedder="letters:16", reranker="shortest", chunker="pairs")
        mem.ingest_file({str(TINY_LOCOMO)!r})
        hits = mem.search("tiny-1", "kitten name", k=3, rerank=True, rerank_k=6)
        again = Memory(db).search("tiny-1", "kitten name", k=2)  # the store's embedder: the plug-in's
        print(json.dumps({{
            "names": [sorted(EMBEDDERS), sorted(RERANKERS), sorted(CHUNKERS)],
            "models": Memory(db).store.embedding_models(),
            "lengths": [len(h.text) for h in hits],
            "turns_per_chunk": sorted({{len(h.turn_ids) for h in hits}}),
            "again": len(again),
            "reply": load_generator("parrot").complete([{{"role": "user", "content": "hello there"}}]),
        }}))
    """)
    res = run(plugin_site, "-c", code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "letters" in out["names"][0] and "hashing" in out["names"][0]
    assert "shortest" in out["names"][1] and "qr" in out["names"][1]
    assert out["names"][2] == ["pairs", "turn", "window"]
    assert out["models"] == {"letters:16": 10}  # 20 turns in pairs
    assert out["lengths"] == sorted(out["lengths"]) and len(out["lengths"]) == 3
    assert out["turns_per_chunk"] == [2]
    assert out["again"] == 2
    assert out["reply"] == "parrot: hello there"


def test_the_cli_uses_a_plugin_and_names_it_in_errors(plugin_site: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    res = run(plugin_site, "-m", "qrmem", "ingest", "--db", db, str(TINY_LOCOMO), "--embedder", "letters:8")
    assert res.returncode == 0, res.stderr
    res = run(plugin_site, "-m", "qrmem", "search", "--db", db, "--user", "tiny-2", "--json", "--k", "4",
              "--rerank", "--reranker", "shortest", "dog adopted")
    assert res.returncode == 0, res.stderr
    lengths = [len(h["text"]) for h in json.loads(res.stdout)]
    assert len(lengths) == 4 and lengths == sorted(lengths)
    res = run(plugin_site, "-m", "qrmem", "search", "--db", db, "--user", "tiny-2", "--rerank",
              "--reranker", "shortest", "--model", "x", "dog")
    assert res.returncode == 1 and "--model apply to the qr reranker" in res.stderr
    res = run(plugin_site, "-m", "qrmem", "search", "--db", db, "--user", "tiny-2", "--rerank",
              "--reranker", "nosuch", "dog")
    assert res.returncode == 1
    assert "unknown reranker 'nosuch'; choose one of ['qr', 'shortest']" in res.stderr

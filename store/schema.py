"""Tables of the store (SQLAlchemy Core). Migrations in `store.migrations` create and evolve them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per applied migration, by name, in order.
schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("external_id", String(200), nullable=False, unique=True),
    # Bumped on every write to the user's memory; search caches are keyed by it.
    Column("revision", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("date_text", String(200)),
    Column("position", Integer, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("chunker", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user_id", "external_id", name="uq_session_user_external"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("speaker", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("time_text", String(200)),
    Column("external_id", String(200)),
    Column("image_caption", Text),
    UniqueConstraint("session_id", "position", name="uq_turn_position"),
)

chunks = Table(
    "chunks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    # Denormalised owner, so per-user reads need no join and isolation is one WHERE clause.
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("text", Text, nullable=False),
    # Relative time expressions of the text grounded against the session date at ingest
    # ("yesterday = 7 May 2023; last week = week of 1 May 2023"); NULL: none, or not grounded.
    # Added by migration m005_chunk_time_notes.
    Column("time_notes", Text),
    Index("ix_chunks_user", "user_id"),
)

chunk_turns = Table(
    "chunk_turns",
    metadata,
    Column("chunk_id", Integer, ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
    Column("turn_id", Integer, ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_chunk_turns_turn", "turn_id"),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("chunk_id", Integer, ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
    Column("model", String(300), primary_key=True),
    Column("dim", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),  # little-endian float32, dim * 4 bytes
)

summaries = Table(
    "summaries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE")),
    Column("kind", String(20), nullable=False),  # "session" | "conversation"
    Column("version", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("model", String(300)),
    Column("meta", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_summaries_scope", "user_id", "kind", "session_id", "version"),
)

# Store-wide settings, each recorded explicitly and changed only on request (e.g. the embedder whose
# vectors the store keeps: `embedder`).
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every chunk added or deleted, by the user revision that did it: what lets an in-process index of
# an older revision apply exactly the changes, without rereading the user's chunks (chunk ids can be
# reused by SQLite after a delete, so the log names each change, not a high-water mark). Pruned to
# the last CHANGE_WINDOW revisions of each user (an index older than that reloads in full).
chunk_changes = Table(
    "chunk_changes",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("chunk_id", Integer, nullable=False),
    Column("added", Boolean, nullable=False),  # False: deleted
    Index("ix_chunk_changes_user_revision", "user_id", "revision"),
)

# API keys of `qrmem serve` (migration m004_api_keys). Only a hash of each key is stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),  # public part, shown in listings
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # sha256 hex of the whole key
    Column("users", JSON),  # list of user ids the key may touch; NULL: every user
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

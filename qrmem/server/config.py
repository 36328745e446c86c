"""The configuration of one `qrmem serve` / `qrmem mcp` process."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from store import InputError

DEFAULT_PORT = 8420


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeConfig(BaseModel):
    """Everything a server process is started with; models are loaded once per process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str | None = None  # SQLite path or SQLAlchemy URL (None: $QRMEM_DB or the data dir)
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    workers: int = Field(4, ge=1, le=256)  # threads for database and embedding work
    queue: int = Field(64, ge=0, le=100_000)  # requests that may wait for one of them
    model_queue: int = Field(8, ge=0, le=100_000)  # rerank / chat requests waiting for the model thread
    rerank_batch: int = Field(8, ge=1, le=64)  # concurrent reranks run together in one rank_many pass
    rerank_wait_ms: float = Field(5.0, ge=0, le=1000)  # how long the first of them waits for others
    timeout: float = Field(30.0, gt=0, le=3600)  # seconds per request, waiting included
    max_body: int = Field(1_048_576, ge=1024, le=1 << 30)  # bytes
    embedder: str | None = None
    reranker: str = "qr"  # qr, qr:PATH_OR_HUB_ID, or none
    generator: str | None = None  # transformers[:MODEL] or openai:MODEL; enables /chat
    base_url: str | None = None
    api_key_env: str | None = None
    no_auth: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @classmethod
    def of(cls, **options: object) -> ServeConfig:
        """Validated options, with errors as one `InputError` line naming the option."""
        try:
            return cls(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            message = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                message = "--" + str(err["loc"][0]).replace("_", "-") + ": " + message
            raise InputError(message) from None

    @model_validator(mode="after")
    def _known_models(self) -> ServeConfig:
        from memory import GENERATORS, RERANKERS

        if self.has_reranker and self.reranker.partition(":")[0] not in RERANKERS:
            raise ValueError(f"unknown reranker {self.reranker!r}: use none, or one of {sorted(RERANKERS)}[:ARG]")
        if self.generator is not None and self.generator.partition(":")[0] not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator!r}: use one of {sorted(GENERATORS)}[:MODEL]")
        return self

    @property
    def has_reranker(self) -> bool:
        return self.reranker != "none"

    def check_auth_policy(self, active_keys: bool) -> None:
        """Refuse to serve without keys, except on loopback with an explicit --no-auth."""
        if self.no_auth and not is_loopback(self.host):
            raise InputError(f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1), not "
                             f"{self.host!r}; create a key with `qrmem keys create` and drop --no-auth")
        if not self.no_auth and not active_keys:
            raise InputError("no active API key in this store: create one with `qrmem keys create "
                             "--name NAME --all` (or --users U1,U2), or serve on loopback with --no-auth")

"""Start a server process: `qrmem serve` (uvicorn, one process) and `qrmem mcp` (stdio)."""

from __future__ import annotations

import logging
import signal

from memory import MissingDependencyError

from .config import ServeConfig

log = logging.getLogger(__name__)

EXTRA = "pip install 'qrmem[server]'"


def require_server_deps() -> None:
    """The server's libraries are an extra; say which when one is missing."""
    for module in ("fastapi", "uvicorn", "mcp"):
        try:
            __import__(module)
        except ModuleNotFoundError:
            raise MissingDependencyError(f"`qrmem serve` and `qrmem mcp` need {module}: {EXTRA}") from None


def serve(cfg: ServeConfig) -> None:
    """Serve REST + MCP until SIGTERM/SIGINT: then stop accepting, finish the requests in flight
    (up to the request timeout), finish the work they started, and return."""
    require_server_deps()
    import uvicorn

    from .app import create_app
    from .service import MemoryService

    service = MemoryService(cfg)
    cfg.check_auth_policy(service.keys.any_active())  # also opens (and migrates) the store
    app = create_app(service)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, lifespan="on",
                            server_header=False, timeout_graceful_shutdown=int(cfg.timeout) + 5,
                            timeout_keep_alive=5)
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: this one,
    # so a graceful stop exits with status 0 (and a SIGTERM before uvicorn is up exits at once).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve_stdio(cfg: ServeConfig, user: str) -> None:
    require_server_deps()
    from .mcp import run_stdio

    run_stdio(cfg, user)

"""The reranker registry: `--reranker NAME[:ARG]`, `Memory(reranker="NAME[:ARG]")`.

Built in: `qr` (the embedded QRRanker) and `qr:PATH_OR_HUB_ID`. Plug-ins register more through the
`qrmem.rerankers` entry point group (see `store.registry`).
"""

from __future__ import annotations

from store.registry import Registry

from .ranking import Reranker


def _load_qr(arg: str | None, **options) -> Reranker:
    from .qr import QRRanker  # heavy: only when a QR reranker is asked for

    return QRRanker.load(arg, **options)


RERANKERS: Registry[Reranker] = Registry("reranker", "qrmem.rerankers")
RERANKERS.register("qr", _load_qr)


def load_reranker(spec: str = "qr", **options) -> Reranker:
    """`qr` (the embedded QRRanker), `qr:PATH_OR_HUB_ID`, or a plug-in's `NAME[:ARG]`; keyword options
    go to the factory (for `qr`: `QRRanker.load`'s, e.g. heads=, device=)."""
    return RERANKERS.create(spec, **options)

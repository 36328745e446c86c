"""mem0: QRRanker behind mem0's `Memory.search(..., rerank=True)`.

mem0 builds its rerankers from a fixed list of providers, so hand it the instance:

    from mem0 import Memory as Mem0
    from qrmem.adapters.mem0 import QRRankerMem0Reranker
    m = Mem0.from_config(config)
    m.reranker = QRRankerMem0Reranker()          # the embedded QRRanker (offline), or reranker=...
    m.search("what is my cat called?", user_id="alice", rerank=True)

mem0 calls `rerank(query, documents, top_k)` with its memories (dicts carrying a `memory` text): they
come back best first, each with `rerank_score` added (all of them in one listwise prompt).
"""

from __future__ import annotations

from typing import Any

from ._deps import require

require("mem0.reranker.base", "mem0")

from mem0.reranker.base import BaseReranker  # noqa: E402

from memory import Reranker, load_reranker  # noqa: E402
from store.errors import InputError  # noqa: E402

TEXT_KEYS = ("memory", "text", "content")  # where mem0's documents keep their text, in that order


class QRRankerMem0Reranker(BaseReranker):
    """A mem0 reranker that scores all documents together with a qrmem `Reranker` (default: QRRanker)."""

    def __init__(self, reranker: Reranker | str = "qr", *, context_key: str | None = "created_at") -> None:
        self.reranker = reranker if isinstance(reranker, Reranker) else load_reranker(reranker)
        self.context_key = context_key  # a document field shown to the reranker as context (its date)

    def rerank(self, query: str, documents: list[dict[str, Any]], top_k: int | None = None) -> list[dict[str, Any]]:
        if not documents:
            return []
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        texts = []
        for i, doc in enumerate(documents):
            text = next((doc[key] for key in TEXT_KEYS if isinstance(doc, dict) and isinstance(doc.get(key), str)), None)
            if text is None:
                raise InputError(f"document {i} has no text: expected one of {list(TEXT_KEYS)}")
            texts.append(text)
        contexts = None
        if self.context_key is not None:
            values = [doc.get(self.context_key) for doc in documents]
            contexts = [str(v) if v is not None else None for v in values] if any(values) else None
        ranked = self.reranker.rank(query, texts, contexts=contexts)
        return [{**documents[r.index], "rerank_score": r.score} for r in ranked.top_k(top_k or len(ranked))]

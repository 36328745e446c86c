"""LangChain: a retriever over one user's memory, and a document compressor that reranks any
retriever's documents with QRRanker (for `ContextualCompressionRetriever`).

    from qrmem.adapters.langchain import QrmemRetriever, QRRankerCompressor
    retriever = QrmemRetriever(memory=Memory("memory.db"), user_id="alice", k=5, rerank=True)
    docs = retriever.invoke("what is my cat called?")          # or await retriever.ainvoke(...)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ._deps import require

require("langchain_core", "langchain")

from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict, Field  # noqa: E402

from memory import DEFAULT_RERANK_K, Memory, Reranker, SearchHit  # noqa: E402


def hit_document(hit: SearchHit) -> Document:
    """A search hit as a LangChain Document: the chunk text, and where it came from in metadata."""
    return Document(page_content=hit.text, metadata={
        "user_id": hit.user_id, "session_id": hit.session_id, "session_date": hit.session_date,
        "turn_ids": list(hit.turn_ids), "score": hit.score, "rank": hit.rank, "chunk_id": hit.chunk_id,
        "time_notes": hit.time_notes})


class QrmemRetriever(BaseRetriever):
    """One user's qrmem memory as a LangChain retriever (sync `invoke`, async `ainvoke`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Memory
    user_id: str
    k: int = Field(default=5, ge=1, description="documents returned")
    rerank: bool = Field(default=False, description="rerank the first stage with the Memory's reranker")
    rerank_k: int = Field(default=DEFAULT_RERANK_K, ge=1, description="first-stage candidates to rerank")
    mode: str | None = Field(default=None, description="hybrid, dense or bm25 (default: the Memory's)")
    search_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more Memory.search options, e.g. the search filters")

    def _search(self, query: str) -> list[Document]:
        hits = self.memory.search(self.user_id, query, k=self.k, mode=self.mode, rerank=self.rerank,
                                  rerank_k=self.rerank_k, **self.search_kwargs)
        return [hit_document(h) for h in hits]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self._search(query)

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        return await asyncio.to_thread(self._search, query)  # model work stays off the event loop


class QRRankerCompressor(BaseDocumentCompressor):
    """Reranks any retriever's documents listwise with a qrmem `Reranker` (QRRanker by default) and
    keeps the best `top_n`, each with `relevance_score` in its metadata. A document's
    `metadata[context_key]` (its session date, say) is given to the reranker as memory context."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Reranker
    top_n: int = Field(default=3, ge=1)
    context_key: str | None = "session_date"

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        contexts = None
        if self.context_key is not None:
            values = [d.metadata.get(self.context_key) for d in documents]
            contexts = [v if isinstance(v, str) else None for v in values] if any(values) else None
        ranked = self.reranker.rank(query, [d.page_content for d in documents], contexts=contexts)
        return [Document(page_content=documents[r.index].page_content, id=documents[r.index].id,
                         metadata={**documents[r.index].metadata, "relevance_score": r.score})
                for r in ranked.top_k(self.top_n)]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)

"""qrmem's memory layer: embedders, first-stage recall (dense, BM25, hybrid) and the `Memory` facade."""

from .embedders import (
    EMBEDDERS,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from .filters import SearchFilter, parse_session_date
from .fusion import dense_scores, rrf, top_k
from .generators import (
    GENERATORS,
    Generator,
    OpenAIGenerator,
    TransformersGenerator,
    load_generator,
)
from .lexical import BM25Index
from .memory import SEARCH_MODES, Memory, index_text
from .qr import QRRanker  # light: torch is imported when a model loads
from .rerankers import RERANKERS, RankedResult, RankedResults, Reranker, load_reranker
from .summaries import Summarizer
from .types import IngestReport, SearchHit

__all__ = [
    "EMBEDDERS",
    "GENERATORS",
    "RERANKERS",
    "SEARCH_MODES",
    "BM25Index",
    "Embedder",
    "Generator",
    "HashingEmbedder",
    "IngestReport",
    "Memory",
    "OpenAIGenerator",
    "QRRanker",
    "RankedResult",
    "RankedResults",
    "Reranker",
    "SearchFilter",
    "SearchHit",
    "SentenceTransformerEmbedder",
    "Summarizer",
    "TransformersGenerator",
    "dense_scores",
    "index_text",
    "load_embedder",
    "load_generator",
    "load_reranker",
    "parse_session_date",
    "rrf",
    "top_k",
]

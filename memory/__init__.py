"""qrmem's memory layer: embedders, first-stage recall (dense, BM25, hybrid) and the `Memory` facade."""

from .embedders import (
    EMBEDDERS,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from .fusion import dense_scores, rrf, top_k
from .lexical import BM25Index
from .memory import SEARCH_MODES, Memory, index_text
from .qr import QRRanker  # light: torch is imported when a model loads
from .generators import GENERATORS, Generator, OpenAIGenerator, TransformersGenerator, load_generator
from .summaries import Summarizer
from .rerankers import RERANKERS, RankedResult, RankedResults, Reranker, load_reranker
from .types import IngestReport, SearchHit



__all__ = [
    "GENERATORS", "Generator", "OpenAIGenerator", "Summarizer", "TransformersGenerator", "load_generator",
    "RERANKERS", "QRRanker", "RankedResult", "RankedResults", "Reranker", "load_reranker",
    "EMBEDDERS", "SEARCH_MODES", "BM25Index", "Embedder", "HashingEmbedder", "IngestReport", "Memory",
    "SearchHit", "SentenceTransformerEmbedder", "dense_scores", "index_text", "load_embedder", "rrf",
    "top_k",
]

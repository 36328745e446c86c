"""qrmem's memory layer: embedders, first-stage recall (dense, BM25, hybrid), rerankers (QRRanker),
generators, rolling summaries and the `Memory` facade. Nothing here imports torch until a model loads."""

from .attribution import attribution
from .embedders import (
    EMBEDDERS,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from .errors import GenerationError, MissingDependencyError, ModelLoadError
from .filters import SearchFilter, parse_session_date
from .fusion import (
    dense_scores,
    fuse_with_first_stage,
    rrf,
    top_k,
)
from .generators import (
    GENERATORS,
    Generator,
    OpenAIGenerator,
    TransformersGenerator,
    load_generator,
)
from .lexical import BM25Index
from .memory import Memory
from .qr import QRRanker  # light: torch is imported when a model loads
from .ranking import Evidence, RankedResult, RankedResults, Reranker, highlight
from .rerankers import RERANKERS, load_reranker
from .retrieval import DEFAULT_RERANK_K, SEARCH_MODES, index_text
from .summaries import Summarizer
from .types import IngestReport, ReindexReport, SearchHit, SearchResults

DEFAULT_FUSION_WEIGHT = QRRanker.fusion_weight  # the embedded reranker's, chosen by cross-validation

__all__ = [
    "DEFAULT_FUSION_WEIGHT",
    "DEFAULT_RERANK_K",
    "EMBEDDERS",
    "GENERATORS",
    "RERANKERS",
    "SEARCH_MODES",
    "BM25Index",
    "Embedder",
    "Evidence",
    "GenerationError",
    "Generator",
    "HashingEmbedder",
    "IngestReport",
    "Memory",
    "MissingDependencyError",
    "ModelLoadError",
    "OpenAIGenerator",
    "QRRanker",
    "RankedResult",
    "RankedResults",
    "ReindexReport",
    "Reranker",
    "SearchFilter",
    "SearchHit",
    "SearchResults",
    "SentenceTransformerEmbedder",
    "Summarizer",
    "TransformersGenerator",
    "attribution",
    "dense_scores",
    "fuse_with_first_stage",
    "highlight",
    "index_text",
    "load_embedder",
    "load_generator",
    "load_reranker",
    "parse_session_date",
    "rrf",
    "top_k",
]

"""QRRanker: reranking with query-focused retrieval heads (see `ranker.py`)."""

from .heads import Head, parse_heads, read_head_file
from .prompt import PromptLayout, build_layout
from .ranker import HeadScores, QRConfig, QRRanker

__all__ = ["Head", "HeadScores", "PromptLayout", "QRConfig", "QRRanker", "build_layout", "parse_heads",
           "read_head_file"]

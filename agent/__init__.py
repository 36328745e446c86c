"""qrmem's agent layer: the memory-aware chat loop built on `memory` and `store`."""

from .agent import (
    DEFAULT_ABSTAIN_BELOW,
    NO_MEMORY,
    Answer,
    MemoryAgent,
    UsedChunk,
    should_abstain,
)

__all__ = ["DEFAULT_ABSTAIN_BELOW", "NO_MEMORY", "Answer", "MemoryAgent", "UsedChunk", "should_abstain"]

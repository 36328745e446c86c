"""qrmem's agent layer: the memory-aware chat loop built on `memory` and `store`."""

from .agent import Answer, MemoryAgent, UsedChunk

__all__ = ["Answer", "MemoryAgent", "UsedChunk"]

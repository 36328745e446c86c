"""Chunking strategies: how the turns of a session become retrievable chunks.

Each chunker records exactly which turns (by position in the session) a chunk covers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from .errors import InputError
from .types import ChunkIn, TurnIn


def render_turn(turn: TurnIn) -> str:
    """The text of one turn as it is indexed and shown: `Speaker: text [shares caption]`."""
    text = f"{turn.speaker}: {turn.text.strip()}"
    if turn.image_caption:
        text += f" [shares {turn.image_caption.strip()}]"
    return text


class Chunker(ABC):
    """Turns of one session -> chunks. `spec` names the strategy and its options (stored per session)."""

    @property
    @abstractmethod
    def spec(self) -> str: ...

    @abstractmethod
    def chunk(self, turns: Sequence[TurnIn]) -> list[ChunkIn]: ...


class TurnChunker(Chunker):
    """One turn per chunk (default; LoCoMo evidence is annotated per turn)."""

    spec = "turn"

    def chunk(self, turns: Sequence[TurnIn]) -> list[ChunkIn]:
        return [ChunkIn(render_turn(t), (i,)) for i, t in enumerate(turns)]


class WindowChunker(Chunker):
    """A sliding window of `size` turns that advances by `size - overlap` turns."""

    def __init__(self, size: int = 4, overlap: int = 1) -> None:
        if size < 1:
            raise InputError(f"window size must be >= 1, got {size}")
        if not 0 <= overlap < size:
            raise InputError(f"window overlap must be in [0, size), got {overlap} for size {size}")
        self.size, self.overlap = size, overlap

    @property
    def spec(self) -> str:
        return f"window:{self.size}:{self.overlap}"

    def chunk(self, turns: Sequence[TurnIn]) -> list[ChunkIn]:
        step = self.size - self.overlap
        out = []
        for start in range(0, len(turns), step):
            idx = tuple(range(start, min(start + self.size, len(turns))))
            out.append(ChunkIn("\n".join(render_turn(turns[i]) for i in idx), idx))
            if idx[-1] == len(turns) - 1:
                break
        return out


CHUNKERS: dict[str, type[Chunker]] = {"turn": TurnChunker, "window": WindowChunker}


def make_chunker(spec: str = "turn") -> Chunker:
    """`turn`, `window` (4 turns, overlap 1) or `window:SIZE:OVERLAP`."""
    if not isinstance(spec, str):
        raise InputError(f"a chunker is named by a string such as 'turn' or 'window:4:1', got {spec!r}")
    name, sep, rest = spec.partition(":")
    if name not in CHUNKERS:
        raise InputError(f"unknown chunker {spec!r}; choose one of {sorted(CHUNKERS)}")
    if sep and not rest:
        raise InputError(f"bad chunker {spec!r}: nothing after the colon; write {name!r} for the defaults")
    if name == "turn":
        if rest:
            raise InputError("the turn chunker takes no options")
        return TurnChunker()
    try:
        args = [int(x) for x in rest.split(":")] if rest else []
    except ValueError:
        raise InputError(f"bad window chunker {spec!r}; use window:SIZE:OVERLAP") from None
    if len(args) > 2:
        raise InputError(f"bad window chunker {spec!r}; use window:SIZE:OVERLAP")
    return WindowChunker(*args)

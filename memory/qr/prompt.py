"""The QRRanker prompt and where its parts sit in token space (from the tokenizer's offset mapping).

Body (as on the QRRanker card):

    Here are some retrieved chunks:\\n\\n
    [Summary of the conversation so far: {summary}\\n\\n]          (memory-aware, optional)
    [1] {context}: {chunk text}\\n\\n   ...                          (context: session date or summary)
    Use the retrieved chunks to answer the user's query.\\n\\nQuery: {query}

wrapped in the model's chat template (the user turn is left open: nothing after the query can
change the query tokens' attention in a causal model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from store.errors import InputError

HEADER = "Here are some retrieved chunks:\n\n"
FOOTER = "Use the retrieved chunks to answer the user's query.\n\nQuery: "
NULL_QUERY = "N/A"
_SENTINEL = "\u0000QRMEM\u0000"


@dataclass(frozen=True)
class PromptLayout:
    """Token ids of one prompt and the token spans of its chunks and query."""

    input_ids: tuple[int, ...]
    chunk_spans: tuple[tuple[int, int], ...]  # [start, end) of each chunk's text tokens
    query_span: tuple[int, int]  # [start, end) of the query tokens; everything before is the prefix
    # (T, 2) character [start, end) of each token in the prompt text, and where each chunk's text
    # starts in it (both for evidence spans; empty for layouts built by hand)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), compare=False, repr=False)
    chunk_chars: tuple[int, ...] = ()

    @property
    def prefix_len(self) -> int:
        return self.query_span[0]

    def chunk_offsets(self, i: int, length: int) -> np.ndarray:
        """(n_i, 2) character spans of chunk i's tokens within its own text of `length` characters,
        clipped to it (a first token may start before the text, e.g. on the space before a word)."""
        a, b = self.chunk_spans[i]
        return np.clip(self.offsets[a:b] - self.chunk_chars[i], 0, length)

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_opening(tokenizer) -> str:
    """Text the chat template puts before a user message ('' for models without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    return text.split(_SENTINEL)[0]


def _token_spans(offsets: np.ndarray, char_spans: np.ndarray) -> np.ndarray:
    """(N, 2) token spans [first, last + 1) of the non-empty tokens overlapping each character range
    [start, end) of `char_spans` (N, 2), from the tokenizer's (T, 2) offsets; one array operation."""
    s, e = offsets[None, :, 0], offsets[None, :, 1]  # (1, T)
    hit = (e > char_spans[:, :1]) & (s < char_spans[:, 1:]) & (e > s)  # (N, T)
    if not hit.any(axis=1).all():
        raise InputError("a candidate or the query produced no tokens")
    first = hit.argmax(axis=1)
    last = hit.shape[1] - hit[:, ::-1].argmax(axis=1)
    return np.stack([first, last], axis=1)


def build_layout(tokenizer, opening: str, query: str, docs: Sequence[str],
                 contexts: Sequence[str | None] | None = None, summary: str | None = None) -> PromptLayout:
    parts = [opening, HEADER]
    if summary:
        parts.append(f"Summary of the conversation so far: {summary.strip()}\n\n")
    text = "".join(parts)
    char_spans = []
    for i, doc in enumerate(docs):
        ctx = contexts[i] if contexts is not None else None
        text += f"[{i + 1}] " + (f"{ctx.strip()}: " if ctx and ctx.strip() else "")
        char_spans.append((len(text), len(text) + len(doc)))
        text += doc + "\n\n"
    text += FOOTER
    q_start = len(text)
    text += query
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (T, 2)
    found = _token_spans(offsets, np.asarray([*char_spans, (q_start, len(text))], dtype=np.int64))
    spans = tuple((int(a), int(b)) for a, b in found[:-1])
    q_span = (int(found[-1, 0]), len(offsets))
    assert all(e <= q_span[0] for _, e in spans), "chunks must end before the query starts"
    return PromptLayout(tuple(enc["input_ids"]), spans, q_span, offsets,
                        tuple(int(a) for a, _ in char_spans))

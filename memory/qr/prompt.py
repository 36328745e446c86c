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
from dataclasses import dataclass

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

    @property
    def prefix_len(self) -> int:
        return self.query_span[0]

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_opening(tokenizer) -> str:
    """Text the chat template puts before a user message ('' for models without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    return text.split(_SENTINEL)[0]


def _token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Tokens overlapping the character range [start, end)."""
    idx = [i for i, (s, e) in enumerate(offsets) if e > start and s < end and e > s]
    if not idx:
        raise InputError("a candidate or the query produced no tokens")
    return idx[0], idx[-1] + 1


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
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = tuple(_token_span(offsets, s, e) for s, e in char_spans)
    q_span = _token_span(offsets, q_start, len(text))
    q_span = (q_span[0], len(offsets))
    assert all(e <= q_span[0] for _, e in spans), "chunks must end before the query starts"
    return PromptLayout(tuple(enc["input_ids"]), spans, q_span)

"""Inputs for `qrmem rank`: candidate lists, and QRRanker-card records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.errors import InputError, MalformedJSONError
from store.jsonio import jsonl_lines, parse_json, parse_json_lines, read_text


@dataclass(frozen=True)
class RankJob:
    id: str | None
    query: str
    texts: list[str]
    contexts: list[str | None] | None
    summary: str | None = None


def _candidate(item: Any, source: str, i: int) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        ctx = item.get("context", item.get("title"))
        return item["text"], ctx if isinstance(ctx, str) else None
    raise InputError(f"{source}: candidate {i}: expected a string or an object with 'text'")


def read_rank_input(path: str | Path, query: str | None) -> list[RankJob]:
    source = str(path)
    text = read_text(path)
    try:
        data = parse_json(text, source)
    except MalformedJSONError:
        # Lines split on "\n" only: a candidate may hold U+2028 and other line-like characters.
        lines = [ln.strip() for _, ln in jsonl_lines(text) if ln.strip()]
        if lines and all(ln.startswith("{") for ln in lines):  # JSONL records
            data = parse_json_lines(text, source)
        else:
            data = lines  # plain text, one candidate per line
    records = data if isinstance(data, list) else [data]
    if records and all(isinstance(r, dict) and "paragraphs" in r for r in records):
        if query is not None:
            raise InputError("--query is not used with records: each record has its own question")
        from .data import parse_records

        # Same records and validation as detection and training; an id is optional here.
        parsed = parse_records([{"id": n, **r} for n, r in enumerate(records)], source)
        return [RankJob(r.id, r.question, r.texts, r.titles, r.summary) for r in parsed]
    if query is None or not query.strip():
        raise InputError("pass --query: the file holds candidates, not records with questions")
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: expected a non-empty list of candidates")
    pairs = [_candidate(item, source, i) for i, item in enumerate(data)]
    contexts = [c for _, c in pairs]
    return [RankJob(None, query, [t for t, _ in pairs], contexts if any(contexts) else None)]

"""Inputs for `qrmem rank`: candidate lists, and QRRanker-card records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.errors import InputError


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


def record_job(rec: Any, source: str, n: int) -> RankJob:
    """A card-format record: `{id?, question, paragraphs: [{paragraph_text, title?}], summary?}`."""
    if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
        raise InputError(f"{source}: record {n}: expected an object with a 'question' string")
    paras = rec.get("paragraphs")
    if not isinstance(paras, list) or not paras:
        raise InputError(f"{source}: record {n}: 'paragraphs' must be a non-empty list")
    texts, titles = [], []
    for j, p in enumerate(paras):
        if not isinstance(p, dict) or not isinstance(p.get("paragraph_text"), str):
            raise InputError(f"{source}: record {n}: paragraphs[{j}].paragraph_text: missing or not a string")
        texts.append(p["paragraph_text"])
        titles.append(p.get("title") if isinstance(p.get("title"), str) else None)
    summary = rec.get("summary") if isinstance(rec.get("summary"), str) else None
    return RankJob(str(rec.get("id", n)), rec["question"], texts,
                   titles if any(titles) else None, summary)


def read_rank_input(path: str | Path, query: str | None) -> list[RankJob]:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines and all(ln.startswith("{") for ln in lines):  # JSONL records
            try:
                data = [json.loads(ln) for ln in lines]
            except json.JSONDecodeError as exc:
                raise InputError(f"{source}: malformed JSONL: {exc.msg}") from None
        else:
            data = lines  # plain text, one candidate per line
    records = data if isinstance(data, list) else [data]
    if records and all(isinstance(r, dict) and "paragraphs" in r for r in records):
        if query is not None:
            raise InputError("--query is not used with records: each record has its own question")
        return [record_job(r, source, n) for n, r in enumerate(records)]
    if query is None or not query.strip():
        raise InputError("pass --query: the file holds candidates, not records with questions")
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: expected a non-empty list of candidates")
    pairs = [_candidate(item, source, i) for i, item in enumerate(data)]
    contexts = [c for _, c in pairs]
    return [RankJob(None, query, [t for t, _ in pairs], contexts if any(contexts) else None)]

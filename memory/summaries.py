"""Rolling contextual summaries: one per session, and a conversation summary rolled forward from the
previous one plus the new session's summary (never re-reading the whole history)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from store import Store, TurnRecord
from store.errors import QrmemError

from .generators import Generator

log = logging.getLogger(__name__)

SESSION_PROMPT = (
    "Summarize this conversation session in 2-3 sentences. Keep names, dates, places, plans and "
    "facts about the people; no commentary.\n\nSession date: {date}\n\n{dialogue}"
)
ROLL_PROMPT = (
    "Update the running summary of a long conversation with its newest session. Keep every lasting "
    "fact about the people (names, relations, events with dates, plans, preferences) in at most 6 "
    "sentences.\n\nRunning summary so far:\n{previous}\n\nNewest session ({date}):\n{session}"
)


class Summarizer:
    """Writes session and conversation summaries with a `Generator`."""

    def __init__(self, generator: Generator, *, max_new_tokens: int = 120, max_turn_chars: int = 400) -> None:
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.max_turn_chars = max_turn_chars

    def summarize_session(self, turns: Sequence[TurnRecord], date: str | None) -> str:
        dialogue = "\n".join(f"{t.speaker}: {t.text[: self.max_turn_chars]}" for t in turns)
        prompt = SESSION_PROMPT.format(date=date or "unknown", dialogue=dialogue)
        return self._ask(prompt)

    def roll(self, previous: str | None, session_summary: str, date: str | None) -> str:
        if not previous:
            return session_summary
        return self._ask(ROLL_PROMPT.format(previous=previous, date=date or "date unknown",
                                            session=session_summary))

    def _ask(self, prompt: str) -> str:
        text = self.generator.complete([{"role": "user", "content": prompt}],
                                       max_new_tokens=self.max_new_tokens)
        if not text:
            raise QrmemError(f"generator {self.generator.name} returned an empty summary")
        return text


STORED = "stored"  # roll forward from the latest stored conversation summary


def summarize_session(store: Store, summarizer: Summarizer, user_id: str, session_id: str,
                      previous: str | None = STORED) -> tuple[str, str]:
    """Write the session's summary, then roll the conversation summary forward from `previous`
    (default: the latest stored one; None starts afresh). Returns (session, conversation) text."""
    info = {s.session_id: s for s in store.sessions(user_id)}[session_id]
    session_text = summarizer.summarize_session(store.turns(user_id, session_id), info.date)
    store.add_summary(user_id, "session", session_text, session_id=session_id,
                      model=summarizer.generator.name, meta={"date": info.date})
    if previous == STORED:
        previous = next((s.text for s in store.summaries(user_id) if s.kind == "conversation"), None)
    conv = summarizer.roll(previous, session_text, info.date)
    store.add_summary(user_id, "conversation", conv, model=summarizer.generator.name,
                      meta={"through_session": session_id})
    return session_text, conv


def pending_sessions(store: Store, user_id: str) -> list[str]:
    """Sessions of a user (in order) that have no session summary yet."""
    done = {s.session_id for s in store.summaries(user_id) if s.kind == "session"}
    return [s.session_id for s in store.sessions(user_id) if s.session_id not in done]

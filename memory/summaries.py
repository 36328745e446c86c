"""Rolling contextual summaries: one per session, and a conversation summary rolled forward from the
previous one plus the new session's summary (never re-reading the whole history)."""

from __future__ import annotations

from collections.abc import Sequence

from store import Store, TurnRecord
from store.errors import ConcurrentUpdateError, QrmemError
from store.redact import get_logger

from .generators import Generator

log = get_logger(__name__)

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


def catch_up(store: Store, summarizer: Summarizer, user_id: str, *, redo: bool = False,
             attempts: int = 3) -> int:
    """Bring a user's summaries up to date, in conversation order: write the missing session
    summaries, and roll the conversation summary forward over every session after the one it was
    last rolled through (all of them with `redo`, or when that session is gone). Each summary is
    stored as soon as it is written, so an interruption keeps what was done; a process rolling the
    same conversation at the same time makes this one start over from what that one wrote.
    Returns the number of session summaries written."""
    written = [0]
    for attempt in range(attempts):
        try:
            _catch_up_once(store, summarizer, user_id, redo=redo and attempt == 0, written=written)
            break
        except ConcurrentUpdateError:
            if attempt == attempts - 1:
                raise
    return written[0]


def _catch_up_once(store: Store, summarizer: Summarizer, user_id: str, *, redo: bool,
                   written: list[int]) -> None:
    # Summaries first, then sessions: a session rolled in by another process in between is then
    # in `sessions`, never missing from it.
    version = store.conversation_version(user_id)
    latest = {(s.kind, s.session_id): s for s in store.summaries(user_id)}
    sessions = store.sessions(user_id)
    stored_conv = latest.get(("conversation", None))
    conv = None if redo else stored_conv
    through = (conv.meta or {}).get("through_session") if conv is not None else None
    order = [s.session_id for s in sessions]
    start = order.index(through) + 1 if through in order else 0
    previous = conv.text if conv is not None and through in order else None
    for i, info in enumerate(sessions):
        stored = None if redo else latest.get(("session", info.session_id))
        if stored is None:
            text = summarizer.summarize_session(store.turns(user_id, info.session_id), info.date)
            store.add_summary(user_id, "session", text, session_id=info.session_id,
                              model=summarizer.generator.name, meta={"date": info.date})
            written[0] += 1
        else:
            text = stored.text
        if i >= start:
            previous = summarizer.roll(previous, text, info.date)
            version = store.add_summary(user_id, "conversation", previous, model=summarizer.generator.name,
                                        meta={"through_session": info.session_id}, if_version=version).version

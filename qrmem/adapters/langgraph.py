"""LangGraph: a `BaseStore` backed by qrmem, so LangGraph agents and LangMem's memory tools keep their
long-term memory in qrmem and recall it with qrmem's first stage (and QRRanker when asked).

Mapping of LangGraph's store onto qrmem:

- an item's namespace `(user, *path)`: the first label is the qrmem user, so users stay isolated
  exactly as in qrmem (`("alice", "memories")` is user `alice`); `user_label=1` takes the second
  label instead, for namespaces shaped like LangMem's default `("memories", "{user_id}")`;
- an item (`path`, `key`) is one qrmem session of that user, whose session id is the JSON list
  `[*path, key]` and whose one turn holds the value as JSON text (so `get` returns it exactly);
- `search(prefix, query=...)` runs qrmem's hybrid first stage (QRRanker on top with `rerank=True`) over
  that user's items under the prefix; without a query it lists them, newest first. `filter` matches
  value fields (`{"kind": "note"}`, or `$eq/$ne/$gt/$gte/$lt/$lte`);
- qrmem indexes the whole value (as JSON text): `index=[fields]` is accepted and the value is indexed
  whole; `index=False` stores an item that `get` and listing return but a query never finds. TTLs are
  not supported (`supports_ttl` is False).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ._deps import require

require("langgraph.store.base", "langgraph")

from langgraph.store.base import (  # noqa: E402
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from memory import Memory  # noqa: E402
from store import NotFoundError  # noqa: E402
from store.errors import InputError  # noqa: E402

SPEAKER = "value"  # the speaker of an item's one turn
UNINDEXED = "value-unindexed"  # put(..., index=False): found by get and listing, never by a query
_OPS = {"$eq": lambda a, b: a == b, "$ne": lambda a, b: a != b, "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


class QrmemStore(BaseStore):
    """A LangGraph store on a qrmem `Memory` (see the module docstring for the mapping)."""

    supports_ttl = False

    def __init__(self, memory: Memory, *, rerank: bool = False, user_label: int = 0) -> None:
        if user_label not in (0, 1):
            raise InputError("user_label must be 0 (the first namespace label) or 1 (the second)")
        self.memory, self.rerank, self.user_label = memory, rerank, user_label

    # -- the mapping -------------------------------------------------------------------------------

    def _split(self, namespace: tuple[str, ...]) -> tuple[str, list[str]]:
        """(qrmem user, the other labels) of a namespace."""
        if not isinstance(namespace, tuple) or len(namespace) <= self.user_label:
            raise InputError(f"namespace {namespace!r} must be a tuple with the user at label {self.user_label}")
        for label in namespace:
            if not isinstance(label, str) or not label or "." in label:
                raise InputError(f"namespace labels must be non-empty strings without '.', got {namespace!r}")
        labels = list(namespace)
        return labels.pop(self.user_label), labels

    def _join(self, user: str, path: list[str]) -> tuple[str, ...]:
        labels = list(path)
        labels.insert(self.user_label, user)
        return tuple(labels)

    @staticmethod
    def _session_id(path: list[str], key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InputError(f"an item key must be a non-empty string, got {key!r}")
        return json.dumps([*path, key], ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def _decode(session_id: str) -> tuple[list[str], str] | None:
        """(path, key) of a session written by this adapter, else None (other qrmem sessions)."""
        if not session_id.startswith("["):
            return None
        try:
            parts = json.loads(session_id)
        except json.JSONDecodeError:
            return None
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
            return None
        return parts[:-1], parts[-1]

    def _items(self, user: str, path: list[str]) -> list[tuple[list[str], str, Any]]:
        """(path, key, SessionInfo) of the user's items under `path`."""
        try:
            sessions = self.memory.sessions(user)
        except NotFoundError:
            return []
        out = []
        for info in sessions:
            decoded = self._decode(info.session_id)
            if decoded is not None and decoded[0][:len(path)] == path:
                out.append((decoded[0], decoded[1], info))
        return out

    def _item(self, user: str, path: list[str], key: str, info: Any, cls: type = Item, **extra: Any) -> Any:
        turns = self.memory.store.turns(user, info.session_id)
        value = json.loads(turns[0].text)
        updated = info.created_at if info.created_at.tzinfo else info.created_at.replace(tzinfo=UTC)
        created = datetime.fromisoformat(info.date) if info.date else updated
        return cls(namespace=self._join(user, path), key=key, value=value, created_at=created,
                   updated_at=updated, **extra)

    # -- operations --------------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return await asyncio.to_thread(self.batch, ops)  # model work stays off the event loop

    def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return self._get(op)
        if isinstance(op, PutOp):
            return self._put(op)
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise InputError(f"unknown store operation {type(op).__name__}")

    def _get(self, op: GetOp) -> Item | None:
        user, path = self._split(op.namespace)
        sid = self._session_id(path, op.key)
        for p, key, info in self._items(user, path):
            if info.session_id == sid:
                return self._item(user, p, key, info)
        return None

    def _put(self, op: PutOp) -> None:
        user, path = self._split(op.namespace)
        sid = self._session_id(path, op.key)
        if op.ttl is not None:
            raise InputError("QrmemStore does not support TTLs; pass ttl=None")
        if op.value is None:
            try:
                self.memory.delete_session(user, sid)
            except NotFoundError:
                pass
            return
        if not isinstance(op.value, Mapping):
            raise InputError(f"an item value must be a dict, got {type(op.value).__name__}")
        try:
            text = json.dumps(dict(op.value), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"an item value must be JSON-serialisable: {exc}") from None
        old = next((info for _, _, info in self._items(user, path) if info.session_id == sid), None)
        created = old.date if old is not None and old.date else datetime.now(UTC).isoformat()
        speaker = UNINDEXED if op.index is False else SPEAKER
        self.memory.add_session(user, [{"speaker": speaker, "text": text}], session_id=sid, date=created,
                                replace=True)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.limit < 1 or op.offset < 0:
            raise InputError(f"limit must be >= 1 and offset >= 0, got {op.limit} and {op.offset}")
        prefix = tuple(op.namespace_prefix)
        if len(prefix) > self.user_label:
            user, path = self._split(prefix)
            users = [(user, path)]
        else:  # no user named: every user's items (each user's memory is searched on its own)
            users = [(u.user_id, []) for u in self.memory.users()]
        found: list[SearchItem] = []
        for user, path in users:
            items = {info.session_id: (p, key, info) for p, key, info in self._items(user, path)}
            if not items:
                continue
            if op.query is None:
                ordered = sorted(items.values(), key=lambda t: t[2].created_at, reverse=True)
                found += [self._item(user, p, key, info, SearchItem) for p, key, info in ordered]
                continue
            want = len(items) if op.filter else op.limit + op.offset
            hits = self.memory.search(user, op.query, k=max(1, want), rerank=self.rerank,
                                      session_ids=list(items))
            for hit in hits:
                p, key, info = items[hit.session_id]
                if not hit.text.startswith(f"{UNINDEXED}: "):
                    found.append(self._item(user, p, key, info, SearchItem, score=hit.score))
        if op.query is not None and len(users) > 1:
            found.sort(key=lambda item: -(item.score or 0.0))
        if op.filter:
            found = [item for item in found if _matches(item.value, op.filter)]
        return found[op.offset: op.offset + op.limit]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces = set()
        for user in self.memory.users():
            for path, _, _ in self._items(user.user_id, []):
                ns = self._join(user.user_id, path)
                if all(_condition(ns, c) for c in op.match_conditions or ()):
                    spaces.add(ns[: op.max_depth] if op.max_depth is not None else ns)
        return sorted(spaces)[op.offset: op.offset + op.limit]


def _condition(ns: tuple[str, ...], cond: Any) -> bool:
    path = tuple(cond.path)
    if len(path) > len(ns):
        return False
    part = ns[: len(path)] if cond.match_type == "prefix" else ns[len(ns) - len(path):]
    return all(p == "*" or p == n for p, n in zip(path, part, strict=True))


def _matches(value: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
    for field, want in flt.items():
        have = value.get(field)
        conditions = want.items() if isinstance(want, Mapping) and want and all(k in _OPS for k in want) \
            else [("$eq", want)]
        for op, operand in conditions:
            try:
                if not _OPS[op](have, operand):
                    return False
            except TypeError:  # e.g. None > 3: not a match
                return False
    return True

"""QR head lists: `"layer-head"` strings (0-based), head files, and the shipped defaults."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from store.errors import InputError
from store.jsonio import parse_json, read_text

_HEAD = re.compile(r"\s*(\d+)\s*[-:]\s*(\d+)\s*")
DEFAULT_HEADS_FILE = "smollm2-135m-instruct.heads.json"


@dataclass(frozen=True, order=True)
class Head:
    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}-{self.head}"


HeadSpec = str | Iterable[str | Head | tuple[int, int] | Sequence[int]]


def parse_heads(spec: HeadSpec) -> tuple[Head, ...]:
    """Heads from `"20-15,21-11"`, a list of such strings, (layer, head) pairs or `Head`s; order kept."""
    if not isinstance(spec, (str, Iterable)) or isinstance(spec, (bytes, dict)):
        raise InputError(f"bad head list {spec!r}: write heads as LAYER-HEAD,..., e.g. 20-15,21-11")
    items: Iterable[Any] = spec.split(",") if isinstance(spec, str) else spec
    out: list[Head] = []
    for item in items:
        if isinstance(item, Head):
            head = item
        elif isinstance(item, str):
            m = _HEAD.fullmatch(item)
            if not m:
                raise InputError(f"bad head {item!r}: write heads as LAYER-HEAD, e.g. 20-15")
            head = Head(int(m.group(1)), int(m.group(2)))
        elif (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in item)):
            head = Head(int(item[0]), int(item[1]))
        else:
            raise InputError(f"bad head {item!r}: write heads as LAYER-HEAD, e.g. 20-15")
        if head not in out:
            out.append(head)
    if not out:
        raise InputError("the head list is empty")
    return tuple(out)


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, model: str) -> None:
    for h in heads:
        if not (0 <= h.layer < n_layers and 0 <= h.head < n_heads):
            raise InputError(f"head {h} is outside {model}: it has {n_layers} layers x {n_heads} "
                             "heads (0-based LAYER-HEAD)")


def check_budget(heads: Sequence[Head], max_layer: int | None) -> None:
    """Refuse heads above a layer budget (`max_layer`, 0-based, inclusive)."""
    if max_layer is None:
        return
    over = [str(h) for h in heads if h.layer > max_layer]
    if over:
        raise InputError(f"heads {', '.join(over)} lie above the layer budget {max_layer}; use heads in "
                         f"layers 0-{max_layer} (`qrmem heads detect --max-layer {max_layer}` finds them)")


def read_head_file(path: str | Path) -> dict[str, Any]:
    """A head file: JSON with `"heads": ["layer-head", ...]` best first, plus whatever produced it."""
    data = parse_json(read_text(path, "head file"), str(path))
    if not isinstance(data, dict) or "heads" not in data:
        raise InputError(f"{path}: a head file is a JSON object with a 'heads' list")
    data["heads"] = [str(h) for h in parse_heads(data["heads"])]
    return data


def default_head_file() -> Path:
    return Path(str(resources.files("memory.qr") / "data" / DEFAULT_HEADS_FILE))

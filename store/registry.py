"""One small typed registry of named factories, filled by the built-ins and by plug-in packages.

A pluggable part (chunker, embedder, reranker, generator) is chosen by a spec `NAME[:ARG]`. Each
registry maps NAME to a factory that takes ARG (the text after the first colon, or None) plus keyword
options and returns the object. Plug-in packages add names without editing qrmem, through a Python
entry point in the registry's group, e.g. in the plug-in's `pyproject.toml`:

    [project.entry-points."qrmem.embedders"]
    my-model = "my_package:make_embedder"      # make_embedder(arg: str | None, **options) -> Embedder

Entry points are read once, on the first lookup, so importing qrmem stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import InputError
from .redact import get_logger

log = get_logger(__name__)

T = TypeVar("T")
Factory = Callable[..., T]
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class Registry(Generic[T]):
    """Named factories for one kind of pluggable part; `create("NAME:ARG")` builds one."""

    def __init__(self, kind: str, group: str, *, fallback: Factory[T] | None = None) -> None:
        self.kind = kind  # "embedder", ... (used in messages)
        self.group = group  # entry-point group, e.g. "qrmem.embedders"
        self.fallback = fallback  # called with the whole spec when NAME is not registered
        self._factories: dict[str, Factory[T]] = {}
        self._plugins_loaded = False

    def register(self, name: str, factory: Factory[T]) -> Factory[T]:
        """Add `name`; a name is registered once (a plug-in cannot silently replace a built-in)."""
        if not _NAME.fullmatch(name):
            raise InputError(f"{self.kind} name {name!r} must be lower-case letters, digits, '-', '_' or '.'")
        if name in self._factories:
            raise InputError(f"{self.kind} {name!r} is registered twice; uninstall one of the plug-ins")
        self._factories[name] = factory
        return factory

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._factories:
                log.warning("ignoring plug-in %s %r (%s): the name is taken", self.kind, ep.name, ep.value)
                continue
            self._factories[ep.name] = _lazy(ep)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def create(self, spec: str, **options: Any) -> T:
        """The object for `NAME[:ARG]`; an unknown NAME goes to the fallback (if any) with the whole spec."""
        if not isinstance(spec, str) or not spec:
            raise InputError(f"a {self.kind} is named by a non-empty string NAME[:ARG], got {spec!r}")
        self._load_plugins()
        name, sep, arg = spec.partition(":")
        factory = self._factories.get(name)
        if factory is not None and sep and not arg:
            raise InputError(f"bad {self.kind} {spec!r}: nothing after the colon; write {name!r} for the defaults")
        if factory is None:
            if self.fallback is not None:
                return self.fallback(spec, **options)
            raise InputError(f"unknown {self.kind} {spec!r}; choose one of {self.names()} "
                             f"(plug-ins add more through the {self.group!r} entry point group)")
        try:
            return factory(arg or None, **options)
        except ValueError as exc:
            raise InputError(f"bad {self.kind} {spec!r}: {exc}") from None


def _lazy(ep: Any) -> Factory[Any]:
    """A factory that imports the plug-in only when its name is used."""

    def factory(arg: str | None, **options: Any) -> Any:
        try:
            target = ep.load()
        except (ImportError, AttributeError) as exc:  # a broken plug-in must not look like a qrmem bug
            raise InputError(f"plug-in {ep.name!r} ({ep.value}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from None
        return target(arg, **options)

    return factory

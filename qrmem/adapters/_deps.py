"""The one place adapters turn a missing framework into an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from memory.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingDependencyError(f"this adapter needs {module.split('.')[0]}: "
                                     f"pip install 'qrmem[{extra}]'") from None

"""Errors about models: loading them, their optional dependencies, and generating with them."""

from __future__ import annotations

from store.errors import QrmemError


class ModelLoadError(QrmemError):
    """A model could not be found or loaded."""


class MissingDependencyError(QrmemError, ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


class GenerationError(QrmemError):
    """The generator failed (server unreachable after retries, bad response, model error)."""

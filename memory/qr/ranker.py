"""QRRanker: listwise reranking by the attention of query-focused retrieval (QR) heads.

All candidates and the query go into one prompt. The model runs once over the shared prefix (the
candidates) with a KV cache, then over the query tokens, where the selected layers also report the
attention of the query rows; for calibration the cache is cut back to the prefix and the null query
("N/A") runs the same way. Only layers up to the last selected head's layer exist in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from store.errors import InputError
from store.redact import get_logger

from ..ranking import Reranker, validate
from .checkpoints import apply_trained
from .heads import (
    Head,
    HeadSpec,
    check_heads,
    default_head_file,
    parse_heads,
    read_head_file,
)
from .prompt import NULL_QUERY, PromptLayout, build_layout, chat_opening

log = get_logger(__name__)


class QRConfig(BaseModel):
    """How a QRRanker scores. Everything but the model itself."""

    model_config = ConfigDict(extra="forbid")

    heads: list[str] = Field(min_length=1)  # "layer-head", 0-based
    calibrate: bool = True  # subtract the null-query ("N/A") attention
    null_query: str = NULL_QUERY
    mask_outliers: bool = False  # zero chunk tokens below mean - 2 std (per head) before summing
    outlier_std: float = 2.0
    max_tokens: int | None = None  # window size in tokens (default: the model's context length)


@dataclass(frozen=True)
class HeadScores:
    """Per-head chunk scores of one query: arrays of shape (L, H, N) for `layers` in order."""

    layers: tuple[int, ...]
    raw: np.ndarray  # attention mass of the query tokens on each chunk
    calibrated: np.ndarray  # raw minus null-query mass (== raw when calibration is off)
    windows: int = 1

    def select(self, heads: Sequence[Head], calibrated: bool = True) -> np.ndarray:
        """(len(heads), N) rows for the given heads."""
        src = self.calibrated if calibrated else self.raw
        row = {layer: i for i, layer in enumerate(self.layers)}
        return np.stack([src[row[h.layer], h.head] for h in heads])


class QRRanker(Reranker):
    """Reranks candidates with the summed, calibrated attention of a few QR heads of a causal LM."""

    def __init__(self, model: Any, tokenizer: Any, config: QRConfig, *, name: str = "qr",
                 n_model_layers: int | None = None) -> None:
        self.model = model  # the decoder stack, cut after the last needed layer
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.heads = parse_heads(config.heads)
        self.trained_layers: list[int] = []  # decoder layers whose weights training changed
        mcfg = model.config
        self.n_heads = mcfg.num_attention_heads
        self.n_layers = len(model.layers)  # layers actually present
        self.n_model_layers = n_model_layers or self.n_layers
        check_heads(self.heads, self.n_layers, self.n_heads, name)
        self.layers = tuple(sorted({h.layer for h in self.heads}))
        limit = getattr(mcfg, "max_position_embeddings", None) or 8192
        self.max_tokens = min(config.max_tokens or limit, limit)
        self._opening = chat_opening(tokenizer)

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] | None = None, *, heads: HeadSpec | None = None,
             device: str | None = None, dtype: str = "auto", attn_implementation: str = "auto",
             trust_remote_code: bool = False, all_layers: bool = False, **options: Any) -> QRRanker:
        """A QRRanker from the embedded SmolLM2 (None), a local directory, a .gguf file or a hub id.

        `QRRanker.load()` is the embedded default: the trained SmolLM2 reranker shipped in
        `memory/qr/data/` when present, else SmolLM2 with the shipped detected heads.
        Heads come from `heads` (a list or `"20-15,21-11"`, or a head-file path), else from the model
        directory's `qrmem_heads.json`, else from the config's `qr_head_list` (the QRRanker
        checkpoint), else the shipped SmolLM2 list for the embedded model (so `load(heads=...)` on
        the embedded model is untrained). `all_layers` keeps every layer (for head detection).
        Other keyword options go to `QRConfig`.
        """
        from .. import models
        from . import loading

        if trust_remote_code:
            log.warning("trust_remote_code=True: code shipped with %s will run on this machine",
                        name_or_path)
        if name_or_path is None and heads is None and not all_layers:
            shipped = loading.shipped_trained()  # the trained SmolLM2 reranker, when one is shipped
            if shipped is not None:
                return cls._load_trained(shipped, loading.trained_manifest(shipped), heads=None,
                                         device=device, dtype=dtype, attn_implementation=attn_implementation,
                                         **options)
        source = models.resolve(name_or_path)
        trained = loading.trained_manifest(source)
        if trained is not None:
            return cls._load_trained(source, trained, heads=heads, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code, **options)
        config = loading.load_config(source, trust_remote_code)
        loading.check_decoder_only(config, source.label)
        head_list, scoring = _resolve_heads(heads, source, config, name_or_path is None)
        text_cfg = loading.text_config(config)
        n_model_layers = text_cfg.num_hidden_layers
        if head_list is None and not all_layers:
            raise InputError(f"no head list for {source.label}: pass heads=... (or --heads), or "
                             "detect them with `qrmem heads detect`")
        parsed = parse_heads(head_list) if head_list else (Head(n_model_layers - 1, 0),)
        check_heads(parsed, n_model_layers, text_cfg.num_attention_heads, source.label)
        n_layers = n_model_layers if all_layers else max(h.layer for h in parsed) + 1
        dev = models.pick_device(device)
        model, tokenizer = loading.load_base(
            source, config, n_layers=n_layers, device=dev, dtype=models.pick_dtype(dtype, dev),
            attn=models.pick_attention(attn_implementation, dev), trust_remote_code=trust_remote_code)
        cfg = QRConfig(heads=[str(h) for h in parsed], **{**scoring, **options})
        return cls(model, tokenizer, cfg, name=source.label, n_model_layers=n_model_layers)

    @classmethod
    def _load_trained(cls, source: Any, manifest: dict[str, Any], *, heads: HeadSpec | None,
                      **kwargs: Any) -> QRRanker:
        """A directory written by `qrmem train`: its base model, its heads, its trained weights."""
        from pathlib import Path

        heads = heads if heads is not None else manifest["heads"]
        kwargs = {**manifest.get("scoring", {}), **kwargs}
        ranker = cls.load(manifest.get("base"), heads=heads, **kwargs)
        apply_trained(ranker.model, Path(source.path), manifest)
        ranker.trained_layers = list(manifest.get("trained_layers", []))
        ranker.name = source.label
        return ranker

    # -- scoring --------------------------------------------------------------------------------------

    def score(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
              summary: str | None = None) -> list[float]:
        hs = self.head_scores(query, docs, contexts=contexts, summary=summary, layers=self.layers)
        return hs.select(self.heads, calibrated=self.config.calibrate).sum(0).tolist()

    def head_scores(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
                    summary: str | None = None, layers: Sequence[int] | None = None) -> HeadScores:
        """Per-head scores of every candidate for every head of `layers` (default: all present)."""
        import torch

        validate(query, docs, contexts)
        layers = tuple(sorted(set(layers if layers is not None else range(self.n_layers))))
        if layers and not 0 <= layers[-1] < self.n_layers:
            raise InputError(f"layer {layers[-1]} is not loaded ({self.n_layers} layers present)")
        windows = self._windows(query, docs, contexts, summary)
        raw = np.zeros((len(layers), self.n_heads, len(docs)), dtype=np.float32)
        cal = np.zeros_like(raw)
        with torch.inference_mode():
            for idx in windows:
                sub_ctx = [contexts[i] for i in idx] if contexts is not None else None
                r, c = self._score_window(query, [docs[i] for i in idx], sub_ctx, summary, layers)
                if len(windows) > 1:
                    from .scoring import normalise_per_window

                    r, c = normalise_per_window(r, r), normalise_per_window(c, r)
                raw[:, :, idx] = r.cpu().numpy()
                cal[:, :, idx] = c.cpu().numpy()
        return HeadScores(layers, raw, cal, len(windows))

    def layout(self, query: str, docs: Sequence[str], contexts: Sequence[str | None] | None = None,
               summary: str | None = None) -> PromptLayout:
        """The prompt's token ids with each candidate's and the query's token span (one window)."""
        return build_layout(self.tokenizer, self._opening, query, docs, contexts, summary)

    def _windows(self, query: str, docs: Sequence[str], contexts: Sequence[str | None] | None,
                 summary: str | None) -> list[list[int]]:
        """Split candidates into the fewest near-equal groups whose prompts fit `max_tokens`."""
        n = len(docs)
        extra = self._null_extra(query)
        for k in range(1, n + 1):
            size = math.ceil(n / k)
            groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
            lengths = [len(self.layout(query, [docs[i] for i in g],
                                        [contexts[i] for i in g] if contexts is not None else None,
                                        summary)) + extra for g in groups]
            if max(lengths) <= self.max_tokens:
                return groups
            if size == 1:
                worst = groups[int(np.argmax(lengths))][0]
                raise InputError(f"candidate {worst} does not fit the window: its prompt needs "
                                 f"{max(lengths)} tokens, the window is {self.max_tokens}; shorten it "
                                 "or chunk it smaller")
        raise AssertionError("unreachable")

    def _null_extra(self, query: str) -> int:
        """Extra tokens the null query may need beyond the real one (it reuses the same prefix)."""
        if not self.config.calibrate:
            return 0
        return max(0, len(self.tokenizer(self.config.null_query, add_special_tokens=False)["input_ids"])
                   - len(self.tokenizer(query, add_special_tokens=False)["input_ids"]))

    def _score_window(self, query: str, docs: Sequence[str], contexts: Sequence[str | None] | None,
                      summary: str | None, layers: tuple[int, ...]):
        """(raw, calibrated) tensors of shape (L, H, N) for one prompt."""

        from .scoring import chunk_mass, mask_outlier_tokens, span_index

        layout = self.layout(query, docs, contexts, summary)
        device = next(self.model.parameters()).device
        prefix = layout.prefix_len
        raw_tok, cache = self._query_attention(layout, layers, device)  # (L, H, P)
        index = span_index(layout.chunk_spans, prefix, device)
        in_chunk = index < len(docs)
        cal_tok = raw_tok
        if self.config.calibrate:
            null = self.layout(self.config.null_query, docs, contexts, summary)
            if null.input_ids[: null.prefix_len] == layout.input_ids[:prefix] and null.prefix_len == prefix:
                null_tok, _ = self._query_attention(null, layers, device, cache=cache)
            else:  # the tokenizer merged across the boundary: run the null prompt in full
                null_tok, _ = self._query_attention(null, layers, device)
            cal_tok = raw_tok - null_tok
        if self.config.mask_outliers:
            cal_tok = mask_outlier_tokens(cal_tok, in_chunk, self.config.outlier_std)
        n = len(docs)
        return chunk_mass(raw_tok, index, n), chunk_mass(cal_tok, index, n)

    def _query_attention(self, layout: PromptLayout, layers: tuple[int, ...], device: Any,
                         cache: Any = None) -> tuple[Any, Any]:
        """(L, H, P) mean attention of the query tokens on each prefix position, and the KV cache.

        Runs the prefix into a new cache, then the query tokens on top of it. Given the `cache` of
        an earlier call with the same prefix, cuts it back to the prefix and reuses it instead.
        """
        import torch
        from transformers import DynamicCache

        from .capture import capturing

        prefix = layout.prefix_len
        ids = torch.tensor([layout.input_ids], device=device)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=ids[:, :prefix], past_key_values=cache, use_cache=True)
        elif cache.get_seq_length() > prefix:
            cache.crop(prefix - cache.get_seq_length())  # negative: number of tokens to drop
        q_rows = slice(0, layout.query_span[1] - prefix)
        with capturing(frozenset(layers), q_rows) as cap:
            self.model(input_ids=ids[:, prefix:], past_key_values=cache, use_cache=True)
        return torch.stack([cap.out[layer][:, :prefix] for layer in layers]), cache


def full_pass_head_scores(ranker: QRRanker, layout: PromptLayout, cap: Any) -> Any:
    """(L, H, N) raw per-head chunk scores from one pass over the whole prompt, no cache and no
    inference mode: the differentiable path used by training (same capture and scoring code).

    Call it inside `capturing(layers, slice(*layout.query_span))` and keep that context open
    through `backward()`, so that gradient checkpointing recomputes the same operations.
    """
    import torch

    from .scoring import chunk_mass, span_index

    device = next(ranker.model.parameters()).device
    ids = torch.tensor([layout.input_ids], device=device)
    ranker.model(input_ids=ids, use_cache=False)
    prefix = layout.prefix_len
    tok = torch.stack([cap.out[layer][:, :prefix] for layer in sorted(cap.layers)])  # (L, H, P)
    return chunk_mass(tok, span_index(layout.chunk_spans, prefix, device), len(layout.chunk_spans))


def _resolve_heads(heads: HeadSpec | None, source: Any, config: Any,
                   embedded: bool) -> tuple[list[str] | None, dict[str, Any]]:
    """The head list and the scoring options it was chosen with (a head file's `scoring`)."""
    from . import loading

    def from_file(path: Any) -> tuple[list[str], dict[str, Any]]:
        data = read_head_file(path)
        return data["heads"], dict(data.get("scoring") or {})

    if heads is not None:
        if isinstance(heads, (str, os.PathLike)) and str(heads).endswith(".json"):
            return from_file(heads)
        return [str(h) for h in parse_heads(heads)], {}
    beside = loading.heads_beside(source)
    if beside is not None:
        return from_file(beside)
    qr_list = getattr(loading.text_config(config), "qr_head_list", None) or getattr(config, "qr_head_list", None)
    if qr_list:
        return [str(h) for h in parse_heads(qr_list)], {}
    if embedded:
        return from_file(default_head_file())
    return None, {}

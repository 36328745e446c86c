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

from ..ranking import Evidence, RankedResults, Reranker, ranked, validate
from .checkpoints import apply_trained
from .heads import (
    Head,
    HeadSpec,
    check_budget,
    check_heads,
    default_head_file,
    parse_heads,
    read_head_file,
)
from .prompt import NULL_QUERY, PromptLayout, build_layout, chat_opening
from .quantize import check_quantize, quantize_linear

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
    evidence_tokens: int = Field(8, ge=1)  # tokens per evidence window (widened to whole words)


@dataclass(frozen=True)
class HeadScores:
    """Per-head chunk scores of one query: arrays of shape (L, H, N) for `layers` in order."""

    layers: tuple[int, ...]
    raw: np.ndarray  # attention mass of the query tokens on each chunk
    calibrated: np.ndarray  # raw minus null-query mass (== raw when calibration is off)
    windows: int = 1
    evidence: tuple[tuple[Evidence, ...], ...] = ()  # per candidate, when asked for (`rank(evidence=True)`)

    def select(self, heads: Sequence[Head], calibrated: bool = True) -> np.ndarray:
        """(len(heads), N) rows for the given heads."""
        src = self.calibrated if calibrated else self.raw
        rows = np.searchsorted(self.layers, [h.layer for h in heads])
        return src[rows, [h.head for h in heads]]


class QRRanker(Reranker):
    """Reranks candidates with the summed, calibrated attention of a few QR heads of a causal LM."""

    score_is_mass = True
    fusion_weight = 0.3  # chosen by conversation-level cross-validation on LoCoMo (README: quality)

    def __init__(self, model: Any, tokenizer: Any, config: QRConfig, *, name: str = "qr",
                 n_model_layers: int | None = None) -> None:
        self.model = model  # the decoder stack, cut after the last needed layer
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.heads = parse_heads(config.heads)
        self.trained_layers: list[int] = []  # decoder layers whose weights training changed
        self.quantize: str | None = None  # "int8" when the linear layers are quantised
        mcfg = model.config
        self.n_heads = mcfg.num_attention_heads
        self.n_layers = len(model.layers)  # layers actually present
        self.n_model_layers = n_model_layers or self.n_layers
        check_heads(self.heads, self.n_layers, self.n_heads, name)
        self.layers = tuple(sorted({h.layer for h in self.heads}))
        limit = getattr(mcfg, "max_position_embeddings", None) or 8192
        self.max_tokens = min(config.max_tokens or limit, limit)
        self._opening = chat_opening(tokenizer)
        self._null_tokens: dict[str, int] = {}  # null query -> its token count

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] | None = None, *, heads: HeadSpec | None = None,
             device: str | None = None, dtype: str = "auto", attn_implementation: str = "auto",
             trust_remote_code: bool = False, all_layers: bool = False, max_layer: int | None = None,
             quantize: str | None = None, **options: Any) -> QRRanker:
        """A QRRanker from the embedded SmolLM2 (None), a local directory, a .gguf file or a hub id.

        `QRRanker.load()` is the embedded default: the trained SmolLM2 reranker shipped in
        `memory/qr/data/` when present, else SmolLM2 with the shipped detected heads.
        Heads come from `heads` (a list or `"20-15,21-11"`, or a head-file path), else from the model
        directory's `qrmem_heads.json`, else from the config's `qr_head_list` (the QRRanker
        checkpoint), else the shipped SmolLM2 list for the embedded model (so `load(heads=...)` on
        the embedded model is untrained). `all_layers` keeps every layer (for head detection);
        `max_layer` is a layer budget: no layer above it is loaded, and a head above it is an error.
        `quantize="int8"` (CPU, float32) quantises the linear layers to int8 after loading (and
        after merging trained weights). Other keyword options go to `QRConfig`.
        """
        from .. import models
        from . import loading

        if trust_remote_code:
            log.warning("trust_remote_code=True: code shipped with %s will run on this machine",
                        name_or_path)
        if max_layer is not None and (isinstance(max_layer, bool) or not isinstance(max_layer, int)
                                      or max_layer < 0):
            raise InputError(f"max_layer must be a layer number (0 or more), got {max_layer!r}")
        if quantize is not None:  # refused before anything loads
            require = models.pick_device(device)
            check_quantize(quantize, require, models.pick_dtype(dtype, require))
        if dtype == "auto":  # resolved here once: int8 starts from fp32, inference may use native bf16
            dtype = str(models.pick_dtype(dtype, models.pick_device(device),
                                          cpu_bf16=quantize is None)).removeprefix("torch.")
        if name_or_path is None and heads is None and not all_layers:
            shipped = loading.shipped_trained()  # the trained SmolLM2 reranker, when one is shipped
            if shipped is not None:
                return cls._load_trained(shipped, loading.trained_manifest(shipped), heads=None,
                                         device=device, dtype=dtype, attn_implementation=attn_implementation,
                                         max_layer=max_layer, quantize=quantize, **options)
        source = models.resolve(name_or_path)
        trained = loading.trained_manifest(source)
        if trained is not None:
            return cls._load_trained(source, trained, heads=heads, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code, max_layer=max_layer,
                                     quantize=quantize, **options)
        config = loading.load_config(source, trust_remote_code)
        loading.check_decoder_only(config, source.label)
        head_list, scoring = _resolve_heads(heads, source, config, name_or_path is None)
        text_cfg = loading.text_config(config)
        n_model_layers = text_cfg.num_hidden_layers
        if head_list is None and not all_layers:
            raise InputError(f"no head list for {source.label}: pass heads=... (or --heads), or "
                             "detect them with `qrmem heads detect`")
        top = n_model_layers - 1 if max_layer is None else min(max_layer, n_model_layers - 1)
        parsed = parse_heads(head_list) if head_list else (Head(top, 0),)
        if all_layers and heads is None:  # the model's own list is only a default here: keep what fits
            parsed = tuple(h for h in parsed if h.layer <= top) or (Head(top, 0),)
        check_heads(parsed, n_model_layers, text_cfg.num_attention_heads, source.label)
        check_budget(parsed, max_layer)
        n_layers = top + 1 if all_layers else max(h.layer for h in parsed) + 1
        dev = models.pick_device(device)
        model, tokenizer = loading.load_base(
            source, config, n_layers=n_layers, device=dev, dtype=models.pick_dtype(dtype, dev),
            attn=models.pick_attention(attn_implementation, dev), trust_remote_code=trust_remote_code)
        if quantize is not None:
            quantize_linear(model, quantize)
        cfg = QRConfig(heads=[str(h) for h in parsed], **{**scoring, **options})
        ranker = cls(model, tokenizer, cfg, name=source.label, n_model_layers=n_model_layers)
        ranker.quantize = quantize
        return ranker

    @classmethod
    def _load_trained(cls, source: Any, manifest: dict[str, Any], *, heads: HeadSpec | None,
                      **kwargs: Any) -> QRRanker:
        """A directory written by `qrmem train`: its base model, its heads, its trained weights."""
        from pathlib import Path

        heads = heads if heads is not None else manifest["heads"]
        kwargs = {**manifest.get("scoring", {}), **kwargs}
        quantize = kwargs.pop("quantize", None)
        want = kwargs.get("dtype", "auto")
        half_on_cpu = want in ("bfloat16", "float16") and _device_is_cpu(kwargs.get("device"))
        if half_on_cpu:  # merge the trained weights in fp32, then cast: no bf16 rounding of the sum
            kwargs["dtype"] = "float32"
        ranker = cls.load(manifest.get("base"), heads=heads, **kwargs)
        apply_trained(ranker.model, Path(source.path), manifest)
        if half_on_cpu:
            import torch

            ranker.model.to(getattr(torch, want))
        if quantize is not None:  # after the trained weights are merged in
            quantize_linear(ranker.model, quantize)
            ranker.quantize = quantize
        ranker.trained_layers = list(manifest.get("trained_layers", []))
        ranker.name = source.label
        return ranker

    # -- scoring --------------------------------------------------------------------------------------

    def score(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
              summary: str | None = None) -> list[float]:
        hs = self.head_scores(query, docs, contexts=contexts, summary=summary, layers=self.layers)
        return hs.select(self.heads, calibrated=self.config.calibrate).sum(0).tolist()

    def rank(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
             summary: str | None = None, evidence: bool = False) -> RankedResults:
        """Docs sorted by score, best first. With `evidence`, each result also carries the spans of
        its text the QR heads attended to most (from the same forward pass; see `memory.qr.evidence`)."""
        hs = self.head_scores(query, docs, contexts=contexts, summary=summary, layers=self.layers,
                              evidence=evidence)
        scores = hs.select(self.heads, calibrated=self.config.calibrate).sum(0).tolist()
        return ranked(query, docs, scores, hs.evidence if evidence else None)

    def head_scores(self, query: str, docs: Sequence[str], *, contexts: Sequence[str | None] | None = None,
                    summary: str | None = None, layers: Sequence[int] | None = None,
                    evidence: bool = False) -> HeadScores:
        """Per-head scores of every candidate for every head of `layers` (default: all present);
        with `evidence`, each candidate's evidence spans from the ranker's own heads too."""
        import torch

        validate(query, docs, contexts)
        layers = self._check_layers(layers)
        windows = self._windows(query, docs, contexts, summary)
        raw = np.zeros((len(layers), self.n_heads, len(docs)), dtype=np.float32)
        cal = np.zeros_like(raw)
        spans: list[tuple[Evidence, ...]] = [()] * len(docs)
        with torch.inference_mode():
            for idx, layout in windows:
                sub_ctx = [contexts[i] for i in idx] if contexts is not None else None
                sub_docs = [docs[i] for i in idx]
                raw_tok, cal_tok = self._window_attention(layout, sub_docs, sub_ctx, summary, layers)
                r, c = self._chunk_scores(layout, len(idx), raw_tok, cal_tok)
                if len(windows) > 1:
                    from .scoring import normalise_per_window

                    r, c = normalise_per_window(r, r), normalise_per_window(c, r)
                raw[:, :, idx] = r.cpu().numpy()
                cal[:, :, idx] = c.cpu().numpy()
                if evidence:
                    for i, ev in zip(idx, self._evidence(layout, sub_docs, raw_tok, cal_tok, layers), strict=True):
                        spans[i] = ev
        return HeadScores(layers, raw, cal, len(windows), tuple(spans) if evidence else ())

    def score_many(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]], *,
                   contexts: Sequence[Sequence[str | None] | None] | None = None,
                   summaries: Sequence[str | None] | None = None, batch_size: int = 16) -> list[list[float]]:
        """`score` for several queries, `batch_size` prompts per forward pass (right-padded).

        Equal to `score` per query (to float rounding); with calibration the null prompts run as a
        second padded batch instead of on a reused KV prefix."""
        hs = self.head_scores_many(queries, candidate_lists, contexts=contexts, summaries=summaries,
                                   layers=self.layers, batch_size=batch_size)
        return [h.select(self.heads, calibrated=self.config.calibrate).sum(0).tolist() for h in hs]

    def rank_many(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]],
                  contexts: Sequence[Sequence[str | None] | None] | None = None, *,
                  summaries: Sequence[str | None] | None = None, batch_size: int = 16,
                  evidence: bool = False) -> list[RankedResults]:
        """`rank` for several queries at once: one `RankedResults` per query, in order; the prompts
        run `batch_size` at a time in one padded forward pass (see `score_many`). `evidence` as in
        `rank` (equal to its spans, up to ties of float rounding)."""
        hs = self.head_scores_many(queries, candidate_lists, contexts=contexts, summaries=summaries,
                                   layers=self.layers, batch_size=batch_size, evidence=evidence)
        return [ranked(q, docs, h.select(self.heads, calibrated=self.config.calibrate).sum(0).tolist(),
                       h.evidence if evidence else None)
                for q, docs, h in zip(queries, candidate_lists, hs, strict=True)]

    def head_scores_many(self, queries: Sequence[str], candidate_lists: Sequence[Sequence[str]], *,
                         contexts: Sequence[Sequence[str | None] | None] | None = None,
                         summaries: Sequence[str | None] | None = None, layers: Sequence[int] | None = None,
                         batch_size: int = 16, evidence: bool = False) -> list[HeadScores]:
        """`head_scores` for several queries; every window of every query is one prompt, and the
        prompts run `batch_size` at a time."""
        import torch

        from .scoring import normalise_per_window

        n = len(queries) if isinstance(queries, Sequence) and not isinstance(queries, str) else -1
        if n < 1:
            raise InputError("rank_many needs a non-empty list of queries")
        if isinstance(candidate_lists, str) or len(candidate_lists) != n:
            raise InputError(f"rank_many needs one candidate list per query: got {len(candidate_lists)} "
                             f"lists for {n} queries")
        for name, per in (("contexts", contexts), ("summaries", summaries)):
            if per is not None and (isinstance(per, str) or len(per) != n):
                raise InputError(f"rank_many needs one entry of {name} per query (or none), got {len(per)} for {n}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        ctxs = list(contexts) if contexts is not None else [None] * n
        sums = list(summaries) if summaries is not None else [None] * n
        for q, docs, ctx in zip(queries, candidate_lists, ctxs, strict=True):
            validate(q, docs, ctx)
        layers = self._check_layers(layers)
        jobs = []  # (query number, candidate indices, layout, docs, contexts)
        for j, (q, docs, ctx, summ) in enumerate(zip(queries, candidate_lists, ctxs, sums, strict=True)):
            for idx, layout in self._windows(q, docs, ctx, summ):
                sub_ctx = [ctx[i] for i in idx] if ctx is not None else None
                jobs.append((j, idx, layout, [docs[i] for i in idx], sub_ctx))
        raw = [np.zeros((len(layers), self.n_heads, len(d)), dtype=np.float32) for d in candidate_lists]
        cal = [np.zeros_like(r) for r in raw]
        spans: list[list[tuple[Evidence, ...]]] = [[()] * len(d) for d in candidate_lists]
        n_windows = [0] * n
        for j, *_ in jobs:
            n_windows[j] += 1
        with torch.inference_mode():
            for b in range(0, len(jobs), batch_size):
                part = jobs[b: b + batch_size]
                toks = self._batch_attention([job[2] for job in part], layers)
                if self.config.calibrate:
                    nulls = [self.layout(self.config.null_query, job[3], job[4], sums[job[0]]) for job in part]
                    null_toks = self._batch_attention(nulls, layers)
                    cal_toks = [t - _aligned(nt, nl, job[2])
                                for t, nt, nl, job in zip(toks, null_toks, nulls, part, strict=True)]
                else:
                    cal_toks = toks
                for (j, idx, layout, docs, _), tok, cal_tok in zip(part, toks, cal_toks, strict=True):
                    r, c = self._chunk_scores(layout, len(docs), tok, cal_tok)
                    if n_windows[j] > 1:
                        r, c = normalise_per_window(r, r), normalise_per_window(c, r)
                    raw[j][:, :, idx] = r.cpu().numpy()
                    cal[j][:, :, idx] = c.cpu().numpy()
                    if evidence:
                        for i, ev in zip(idx, self._evidence(layout, docs, tok, cal_tok, layers), strict=True):
                            spans[j][i] = ev
        return [HeadScores(layers, r, c, w, tuple(ev) if evidence else ())
                for r, c, w, ev in zip(raw, cal, n_windows, spans, strict=True)]

    def layout(self, query: str, docs: Sequence[str], contexts: Sequence[str | None] | None = None,
               summary: str | None = None) -> PromptLayout:
        """The prompt's token ids with each candidate's and the query's token span (one window)."""
        return build_layout(self.tokenizer, self._opening, query, docs, contexts, summary)

    def _check_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        layers = tuple(sorted(set(layers if layers is not None else range(self.n_layers))))
        if layers and not 0 <= layers[-1] < self.n_layers:
            raise InputError(f"layer {layers[-1]} is not loaded ({self.n_layers} layers present)")
        return layers

    def _windows(self, query: str, docs: Sequence[str], contexts: Sequence[str | None] | None,
                 summary: str | None) -> list[tuple[list[int], PromptLayout]]:
        """Split candidates into the fewest near-equal groups whose prompts fit `max_tokens`; each
        group with its prompt layout (one tokenisation when everything fits one window)."""
        n = len(docs)
        extra = self._null_extra(query)
        for k in range(1, n + 1):
            size = math.ceil(n / k)
            groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
            layouts = [self.layout(query, [docs[i] for i in g],
                                   [contexts[i] for i in g] if contexts is not None else None, summary)
                       for g in groups]
            lengths = [len(lay) + extra for lay in layouts]
            if max(lengths) <= self.max_tokens:
                return list(zip(groups, layouts, strict=True))
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
        null = self.config.null_query
        if null not in self._null_tokens:
            self._null_tokens[null] = len(self.tokenizer(null, add_special_tokens=False)["input_ids"])
        return max(0, self._null_tokens[null] - len(self.tokenizer(query, add_special_tokens=False)["input_ids"]))

    def _window_attention(self, layout: PromptLayout, docs: Sequence[str], contexts: Sequence[str | None] | None,
                          summary: str | None, layers: tuple[int, ...]) -> tuple[Any, Any]:
        """(raw, calibrated) per-token attention of the query on the prefix, (L, H, P) each, for one
        prompt (calibrated is raw itself when calibration is off).

        Without calibration: one pass over the whole prompt, no KV cache. With it: the prefix runs
        once into a cache that the query and then the null query run on top of."""
        if not self.config.calibrate:
            (raw_tok,) = self._batch_attention([layout], layers)
            return raw_tok, raw_tok
        device = self._device()
        prefix = layout.prefix_len
        raw_tok, cache = self._query_attention(layout, layers, device)  # (L, H, P)
        null = self.layout(self.config.null_query, docs, contexts, summary)
        if null.input_ids[: null.prefix_len] == layout.input_ids[:prefix] and null.prefix_len == prefix:
            null_tok, _ = self._query_attention(null, layers, device, cache=cache)
        else:  # the tokenizer merged across the boundary: run the null prompt in full
            null_tok, _ = self._query_attention(null, layers, device)
        return raw_tok, raw_tok - _aligned(null_tok, null, layout)

    def _chunk_scores(self, layout: PromptLayout, n: int, raw_tok: Any, cal_tok: Any) -> tuple[Any, Any]:
        """(L, H, P) per-token attention of the query on the prefix -> (raw, calibrated) (L, H, N)."""
        from .scoring import chunk_mass, mask_outlier_tokens, span_index

        index = span_index(layout.chunk_spans, layout.prefix_len, raw_tok.device)
        if self.config.mask_outliers:
            cal_tok = mask_outlier_tokens(cal_tok, index < n, self.config.outlier_std)
        raw = chunk_mass(raw_tok, index, n)
        return raw, raw if cal_tok is raw_tok else chunk_mass(cal_tok, index, n)

    def _evidence(self, layout: PromptLayout, docs: Sequence[str], raw_tok: Any, cal_tok: Any,
                  layers: tuple[int, ...]) -> list[tuple[Evidence, ...]]:
        """Each doc's evidence spans from the (L, H, P) token attention of one prompt: the ranker's
        heads summed, on the tokens its scores are summed from (calibrated and masked as configured)."""
        from .evidence import chunk_evidence
        from .scoring import aggregate, mask_outlier_tokens, span_index

        if not set(self.layers) <= set(layers):
            raise InputError(f"evidence needs the ranker's layers {self.layers}, got {layers}")
        tok = cal_tok if self.config.calibrate else raw_tok
        if self.config.calibrate and self.config.mask_outliers:
            index = span_index(layout.chunk_spans, layout.prefix_len, tok.device)
            tok = mask_outlier_tokens(tok, index < len(docs), self.config.outlier_std)
        mass = aggregate(tok, layers, [(h.layer, h.head) for h in self.heads])  # (P,)
        return chunk_evidence(layout, docs, mass, self.config.evidence_tokens)

    def _device(self) -> Any:
        return next(self.model.parameters()).device

    def _batch_attention(self, layouts: Sequence[PromptLayout], layers: tuple[int, ...]) -> list[Any]:
        """One right-padded pass over whole prompts: per prompt, the (L, H, P) mean attention of its
        query tokens on each of its prefix positions. No padding mask is needed (see `Capture`)."""
        import torch

        from .capture import capturing

        width = max(len(lay) for lay in layouts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([list(lay.input_ids) + [pad] * (width - len(lay)) for lay in layouts],
                           device=self._device())
        rows = tuple(slice(*lay.query_span) for lay in layouts)
        with capturing(frozenset(layers), rows) as cap:
            self.model(input_ids=ids, use_cache=False)
        tok = torch.stack([cap.out[layer] for layer in layers], dim=1)  # (B, L, H, T)
        return [tok[b, :, :, : lay.prefix_len] for b, lay in enumerate(layouts)]

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


def _aligned(null_tok: Any, null: PromptLayout, layout: PromptLayout) -> Any:
    """The null prompt's (L, H, Pn) token attention on the real prompt's P prefix positions.

    Both prompts hold the same text up to the query, so every chunk token sits at the same position;
    only the last prefix token(s) before the query can differ, where the tokenizer merged a space
    into the query's first word. Those lie outside every chunk: cut or zero-fill them."""
    assert null.chunk_spans == layout.chunk_spans, "the null prompt's chunks must tokenise as the real ones"
    p, pn = layout.prefix_len, null.prefix_len
    if pn == p:
        return null_tok
    if pn > p:
        return null_tok[..., :p]
    return null_tok.new_zeros((*null_tok.shape[:-1], p)).index_copy_(-1, _arange(pn, null_tok), null_tok)


def _arange(n: int, like: Any) -> Any:
    import torch

    return torch.arange(n, device=like.device)


def _device_is_cpu(device: str | None) -> bool:
    from .. import models

    return models.pick_device(device).startswith("cpu")


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

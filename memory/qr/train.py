"""Listwise training of QR heads (the QRRanker objective).

For each query, the K candidates and the query go into one prompt; the QR score of a candidate is
the summed attention of the selected heads (as at inference), max-min normalised over the K
candidates, and a group-wise contrastive loss pushes the gold candidates above the rest:

    loss = -log( sum_{i in gold} exp(s_i / T) / sum_j exp(s_j / T) ),   s = (x - min x) / (max x - min x)

Continuous scores, so any data with gold passages works (no Likert labels). Only what is needed is
trained: layers above the last QR layer do not exist, layers below `layers_from` run without
gradients, and the trainable part is LoRA adapters (peft) or the attention projections themselves.
A run writes a model directory that `QRRanker.load(DIR)` accepts, with checkpoints to resume from.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from store.errors import InputError
from store.files import check_target
from store.redact import get_logger

from ..metrics import ndcg_from_scores, recall_from_scores
from .checkpoints import (
    ATTN_FILE,
    CHECKPOINT,
    TrainConfig,
    load_checkpoint,
    lora_config,
    save_checkpoint,
    save_model_dir,
)
from .data import Record
from .loading import RANKER_FILE

log = get_logger(__name__)

@dataclass
class EpochReport:
    epoch: int
    steps: int
    train_loss: float
    seconds_per_query: float
    val: dict[str, float]


@dataclass
class TrainReport:
    out: Path
    epochs: list[EpochReport] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def listwise_loss(scores: Any, gold: Any, temperature: float) -> Any:
    """Group-wise contrastive loss over max-min normalised scores: (N,), (N,) bool -> scalar."""
    span = (scores.max() - scores.min()).clamp_min(1e-8)
    s = (scores - scores.min()) / span
    logp = (s / temperature).log_softmax(-1)
    return -(logp[gold].logsumexp(-1))


def evaluate(ranker: Any, records: Sequence[Record], k: int = 5) -> dict[str, float]:
    """Recall@k and nDCG@10 of gold candidates under the ranker's inference scoring."""
    rec, nd = [], []
    for r in records:
        if not any(r.gold):
            continue
        scores = ranker.score(r.question, r.texts, contexts=r.titles, summary=r.summary)
        rec.append(recall_from_scores(scores, r.gold, k))
        nd.append(ndcg_from_scores(scores, r.gold, 10))
    return {f"recall@{k}": float(np.mean(rec)) if rec else float("nan"),
            "ndcg@10": float(np.mean(nd)) if nd else float("nan"), "queries": float(len(rec))}


def _trainable(ranker: Any, cfg: TrainConfig) -> list[Any]:
    """Make the chosen part trainable; return its parameters."""
    lowest = min(h.layer for h in ranker.heads)
    start = cfg.layers_from if cfg.layers_from is not None else max(0, lowest - 2)
    if not 0 <= start < len(ranker.model.layers):
        raise InputError(f"layers_from {start} is outside the {len(ranker.model.layers)} loaded layers")
    layers = list(range(start, len(ranker.model.layers)))
    for p in ranker.model.parameters():
        p.requires_grad_(False)
    if cfg.method == "lora":
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config(cfg, layers), ranker.model)
        params = [p for n, p in ranker.model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    else:
        params = []
        for i in layers:
            for name in cfg.target_modules:
                mod = getattr(ranker.model.layers[i].self_attn, name, None)
                if mod is None:
                    raise InputError(f"layer {i} has no attention module {name!r}")
                mod.weight.requires_grad_(True)
                params.append(mod.weight)
    if not params:
        raise InputError(f"nothing to train: no {cfg.target_modules} in layers {layers}")
    ranker.trained_layers = layers
    return params


def train(ranker: Any, train_records: Sequence[Record], val_records: Sequence[Record], out: str | Path,
          cfg: TrainConfig, *, base: str | None = None, resume: bool = False,
          progress: bool = False) -> TrainReport:
    """Train `ranker` in place; write `out/` (model directory, checkpoint, metrics)."""
    import torch
    from tqdm.auto import tqdm

    from .ranker import full_pass_head_scores

    out = Path(out)
    if out.is_dir():  # refuse a symlinked output file now, not after the training
        for name in (ATTN_FILE, RANKER_FILE):
            check_target(out / name, force=True, what="model")
    usable = [r for r in train_records if any(r.gold) and not all(r.gold)]
    if not usable:
        raise InputError("no training record has both gold and non-gold candidates")
    torch.manual_seed(cfg.seed)
    report = TrainReport(out)
    t_start = time.perf_counter()
    report.baseline = evaluate(ranker, val_records) if val_records else {}
    params = _trainable(ranker, cfg)
    if cfg.gradient_checkpointing:
        if hasattr(ranker.model, "activation_checkpointing_enable"):  # transformers >= 5.x
            ranker.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            ranker.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "position": 0, "step": 0, "history": []}
    if resume and (out / CHECKPOINT / "state.json").exists():
        state = load_checkpoint(ranker, opt, out)
        log.info("resumed at epoch %d, query %d, step %d", state["epoch"], state["position"], state["step"])
    layers = ranker.layers
    heads = [(layers.index(h.layer), h.head) for h in ranker.heads]
    li = torch.tensor([a for a, _ in heads])
    hi = torch.tensor([b for _, b in heads])
    total_steps = cfg.max_steps or math.ceil(len(usable) / cfg.grad_accum) * cfg.epochs
    from .capture import capturing

    for epoch in range(state["epoch"], cfg.epochs):
        order = list(range(len(usable)))
        random.Random(cfg.seed + epoch).shuffle(order)
        ranker.model.train()
        losses: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(total=len(order), initial=state["position"], desc=f"epoch {epoch + 1}",
                   unit="query", disable=not progress)
        for pos in range(state["position"], len(order)):
            rec = usable[order[pos]]
            layout = ranker.layout(rec.question, rec.texts, rec.titles, rec.summary)
            if len(layout) > ranker.max_tokens:
                raise InputError(f"record {rec.id} needs {len(layout)} tokens; training prompts must "
                                 f"fit one window of {ranker.max_tokens}")
            with capturing(frozenset(layers), slice(*layout.query_span)) as cap:
                per_head = full_pass_head_scores(ranker, layout, cap)  # (L, H, N), differentiable
                scores = per_head[li, hi].sum(0)  # (N,)
                gold = torch.tensor(rec.gold, device=scores.device)
                loss = listwise_loss(scores, gold, cfg.temperature)
                (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            state["position"] = pos + 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if (pos + 1) % cfg.grad_accum == 0 or pos + 1 == len(order):
                opt.step()
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
                save_checkpoint(ranker, cfg, opt, out, state)
                if state["step"] >= total_steps:
                    break
        bar.close()
        ranker.model.eval()
        finished = state["position"] == len(order)
        val = evaluate(ranker, val_records) if val_records else {}
        ep = EpochReport(epoch + 1, state["step"], float(np.mean(losses)) if losses else float("nan"),
                         (time.perf_counter() - t0) / max(1, len(losses)), val)
        report.epochs.append(ep)
        state["history"].append(ep.__dict__)
        if finished:  # else stopped at max_steps mid-epoch: resume from this position
            state.update(epoch=epoch + 1, position=0)
        save_checkpoint(ranker, cfg, opt, out, state)
        log.info("epoch %d: loss %.4f, validation %s", ep.epoch, ep.train_loss, val)
        if state["step"] >= total_steps:
            break
    report.seconds = time.perf_counter() - t_start
    save_model_dir(ranker, cfg, out, base, {
        "baseline": report.baseline, "epochs": [e.__dict__ for e in report.epochs],
        "train_queries": len(usable), "val_queries": len(val_records), "seconds": report.seconds})
    return report


def train_heads(train_records: Sequence[Record], val_records: Sequence[Record], out: str | Path,
                cfg: TrainConfig, *, model: str | None = None, heads: Any = None, resume: bool = False,
                device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                progress: bool = False, max_layer: int | None = None,
                quantize: str | None = None, calibrate: bool | None = None) -> TrainReport:
    """`qrmem train`: load `model` (None: the embedded SmolLM2) with `heads`, train, write `out/`.
    `max_layer` is a layer budget: a head above it is refused before the model loads. `calibrate`
    (None: as the head list was chosen) is the scoring the trained model keeps."""
    from .. import models
    from .heads import check_budget, parse_heads, read_head_file
    from .ranker import QRRanker

    if quantize is not None:
        raise InputError(f"a quantised model cannot be trained; leave out quantize={quantize!r} "
                         "(--quantize) and quantise the trained model when you load it")
    if max_layer is not None and heads is not None:  # refused now, not after loading the model
        spec = read_head_file(heads)["heads"] if str(heads).endswith(".json") else heads
        check_budget(parse_heads(spec), max_layer)
    if dtype == "auto" and models.pick_device(device).startswith("cpu"):
        dtype = "float32"  # gradients in fp32 on a CPU (inference may pick bf16 there; training does not)
    ranker = QRRanker.load(model, heads=heads, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           max_layer=max_layer, **({} if calibrate is None else {"calibrate": calibrate}))
    base = str(Path(model).resolve()) if model and Path(model).exists() else model
    return train(ranker, train_records, val_records, out, cfg, base=base, resume=resume, progress=progress)

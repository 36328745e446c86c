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

import json
import math
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from store.errors import InputError, OutputError
from store.files import check_target, write_private
from store.redact import get_logger

from .data import Record

log = get_logger(__name__)

RANKER_FILE = "qrmem_ranker.json"
ATTN_FILE = "attention_weights.safetensors"
CHECKPOINT = "checkpoint"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "attention"] = "lora"
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    layers_from: int | None = None  # lowest trained layer (default: 2 below the lowest QR layer)
    lora_r: int = 8
    lora_alpha: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    epochs: int = 1
    grad_accum: int = 8
    temperature: float = 0.1
    max_steps: int | None = None  # optimizer steps, across epochs
    seed: int = 0
    gradient_checkpointing: bool = False


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
    from memory.evaluation import ndcg_from_scores

    rec, nd = [], []
    for r in records:
        gold = r.gold
        if not any(gold):
            continue
        scores = ranker.score(r.question, r.texts, contexts=r.titles, summary=r.summary)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        rec.append(sum(gold[i] for i in order[:k]) / sum(gold))
        nd.append(ndcg_from_scores(scores, gold, 10))
    return {f"recall@{k}": float(np.mean(rec)) if rec else float("nan"),
            "ndcg@10": float(np.mean(nd)) if nd else float("nan"), "queries": float(len(rec))}


def _lora_config(cfg: TrainConfig, layers: Sequence[int]) -> Any:
    """LoRA on `cfg.target_modules` of the given decoder layers only (a regex over module names)."""
    from peft import LoraConfig

    pattern = (rf"(.*\.)?layers\.({'|'.join(map(str, layers))})\.self_attn\."
               rf"({'|'.join(cfg.target_modules)})")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=pattern, lora_dropout=0.0)


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

        inject_adapter_in_model(_lora_config(cfg, layers), ranker.model)
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


def _state_tensors(ranker: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The trained tensors, by parameter name (LoRA weights or attention projection weights)."""
    names = [n for n, p in ranker.model.named_parameters() if p.requires_grad]
    params = dict(ranker.model.named_parameters())
    return {n: params[n].detach().cpu().contiguous() for n in names}


def save_model_dir(ranker: Any, cfg: TrainConfig, out: Path, base: str | None,
                   metrics: dict[str, Any]) -> None:
    """A directory `QRRanker.load(out)` accepts: the trained tensors + a manifest + the heads.
    Each file is written to a new file renamed into place (never through a symlink)."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    write_private(out / ATTN_FILE, save(_state_tensors(ranker, cfg), metadata={"format": "pt"}),
                  force=True, mode=0o644, what="model")
    manifest = {"format": "qrmem.qr-ranker.v1", "base": base, "heads": [str(h) for h in ranker.heads],
                "scoring": {"calibrate": ranker.config.calibrate, "mask_outliers": ranker.config.mask_outliers},
                "n_layers": len(ranker.model.layers), "train": cfg.model_dump(),
                "trained_layers": getattr(ranker, "trained_layers", []), "metrics": metrics}
    write_private(out / RANKER_FILE, json.dumps(manifest, indent=1) + "\n", force=True, mode=0o644,
                  what="model")


def apply_trained(model: Any, directory: Path, manifest: dict[str, Any]) -> None:
    """Load trained tensors saved by `save_model_dir` into a freshly loaded base (merging LoRA)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(directory / ATTN_FILE))
    cfg = TrainConfig.model_validate(manifest["train"])
    if cfg.method == "lora":
        from peft import inject_adapter_in_model

        inject_adapter_in_model(_lora_config(cfg, manifest["trained_layers"]), model)
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise InputError(f"{directory}: trained tensors do not fit the base model: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))
    if cfg.method == "lora":
        _merge_lora(model)


def _merge_lora(model: Any) -> None:
    """Fold LoRA adapters into the base weights and restore plain Linear modules."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, module.get_base_layer())


def _save_checkpoint(ranker: Any, cfg: TrainConfig, opt: Any, out: Path, state: dict[str, Any]) -> None:
    """Trainable tensors, AdamW moments and loop state; safetensors + JSON, no pickle. Written into
    a new private directory, then swapped with the old checkpoint by renames (never through a
    symlink), so a crash leaves a whole checkpoint or none."""
    from safetensors.torch import save

    ck = out / CHECKPOINT
    if ck.is_symlink():
        raise OutputError(f"{ck} is a symbolic link; qrmem never writes through one (remove it)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{CHECKPOINT}-"))
    write_private(tmp / "params.safetensors", save(_state_tensors(ranker, cfg)))
    names = {id(p): n for n, p in ranker.model.named_parameters() if p.requires_grad}
    moments, steps = {}, {}
    for p, st in opt.state.items():
        n = names[id(p)]
        moments[f"{n}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        moments[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        steps[n] = float(st["step"])
    if moments:
        write_private(tmp / "optimizer.safetensors", save(moments))
    write_private(tmp / "state.json", json.dumps({**state, "adam_steps": steps}))
    old = out / f".{CHECKPOINT}-old-{secrets.token_hex(4)}"
    if ck.exists():
        os.rename(ck, old)
    os.rename(tmp, ck)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ranker: Any, opt: Any, out: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    ck = out / CHECKPOINT
    state = json.loads((ck / "state.json").read_text())
    params = dict(ranker.model.named_parameters())
    with torch.no_grad():
        for n, v in load_file(str(ck / "params.safetensors")).items():
            params[n].copy_(v)
    if (ck / "optimizer.safetensors").exists():
        moments = load_file(str(ck / "optimizer.safetensors"))
        for n, step in state["adam_steps"].items():
            p = params[n]
            opt.state[p] = {"step": torch.tensor(step), "exp_avg": moments[f"{n}::exp_avg"].to(p.device),
                            "exp_avg_sq": moments[f"{n}::exp_avg_sq"].to(p.device)}
    return state


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
        state = _load_checkpoint(ranker, opt, out)
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
            layout = ranker._layout(rec.question, rec.texts, rec.titles, rec.summary)
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
                _save_checkpoint(ranker, cfg, opt, out, state)
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
        _save_checkpoint(ranker, cfg, opt, out, state)
        log.info("epoch %d: loss %.4f, validation %s", ep.epoch, ep.train_loss, val)
        if state["step"] >= total_steps:
            break
    report.seconds = time.perf_counter() - t_start
    save_model_dir(ranker, cfg, out, base, {
        "baseline": report.baseline, "epochs": [e.__dict__ for e in report.epochs],
        "train_queries": len(usable), "val_queries": len(val_records), "seconds": report.seconds})
    return report

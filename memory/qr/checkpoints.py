"""Trained QR weights on disk: the model directory `qrmem train` writes (only the trained tensors, in
safetensors, and a JSON manifest), loading them into a fresh base model (LoRA merged on load), and the
training checkpoint (trainable tensors, AdamW moments, loop state) that `--resume` continues from.
No pickle anywhere. Both the loader (`QRRanker.load`) and the trainer use this module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store.errors import InputError, OutputError
from store.files import write_private

from .loading import RANKER_FILE

ATTN_FILE = "attention_weights.safetensors"
CHECKPOINT = "checkpoint"
MANIFEST_FORMAT = "qrmem.qr-ranker.v1"


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


def lora_config(cfg: TrainConfig, layers: Sequence[int]) -> Any:
    """LoRA on `cfg.target_modules` of the given decoder layers only (a regex over module names)."""
    from peft import LoraConfig

    pattern = (rf"(.*\.)?layers\.({'|'.join(map(str, layers))})\.self_attn\."
               rf"({'|'.join(cfg.target_modules)})")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=pattern, lora_dropout=0.0)


def state_tensors(ranker: Any, cfg: TrainConfig) -> dict[str, Any]:
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
    write_private(out / ATTN_FILE, save(state_tensors(ranker, cfg), metadata={"format": "pt"}),
                  force=True, mode=0o644, what="model")
    manifest = {"format": MANIFEST_FORMAT, "base": base, "heads": [str(h) for h in ranker.heads],
                "scoring": {"calibrate": ranker.config.calibrate, "mask_outliers": ranker.config.mask_outliers},
                "n_layers": len(ranker.model.layers), "train": cfg.model_dump(),
                "trained_layers": list(ranker.trained_layers), "metrics": metrics}
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

        inject_adapter_in_model(lora_config(cfg, manifest["trained_layers"]), model)
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


def save_checkpoint(ranker: Any, cfg: TrainConfig, opt: Any, out: Path, state: dict[str, Any]) -> None:
    """Trainable tensors, AdamW moments and loop state; safetensors + JSON, no pickle. Written into
    a new private directory, then swapped with the old checkpoint by renames (never through a
    symlink), so a crash leaves a whole checkpoint or none."""
    from safetensors.torch import save

    ck = out / CHECKPOINT
    if ck.is_symlink():
        raise OutputError(f"{ck} is a symbolic link; qrmem never writes through one (remove it)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{CHECKPOINT}-"))
    write_private(tmp / "params.safetensors", save(state_tensors(ranker, cfg)))
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


def load_checkpoint(ranker: Any, opt: Any, out: Path) -> dict[str, Any]:
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

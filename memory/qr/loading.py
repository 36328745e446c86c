"""Loading a causal LM for QR scoring: the model's source (see `memory.models`), cut after the last
layer that holds a selected head, with heads and trained weights found beside it."""

from __future__ import annotations

import json
from pathlib import Path

from store.errors import InputError
from store.redact import get_logger

from ..errors import ModelLoadError
from ..models import Source, quiet_loading, require_ml

log = get_logger(__name__)

HEADS_IN_DIR = "qrmem_heads.json"
RANKER_FILE = "qrmem_ranker.json"  # the manifest of a directory written by `qrmem train`


def heads_beside(source: Source) -> Path | None:
    """A head file stored in the model directory (not for trained QRRanker directories)."""
    path = Path(source.path)
    if not path.is_dir() or (path / RANKER_FILE).is_file():
        return None
    heads = path / HEADS_IN_DIR
    return heads if heads.is_file() else None


def load_config(source: Source, trust_remote_code: bool):
    require_ml("QRRanker")
    from transformers import AutoConfig

    try:
        with quiet_loading():
            return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(f"{source.label} ships custom code; pass trust_remote_code=True "
                                 "(--trust-remote-code) if you trust it") from None
        raise ModelLoadError(f"cannot load the config of {source.label}: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load {source.label}: {exc}. A hub id needs network access "
                             "or a warm HF cache; a local model needs a directory or a .gguf file") from None


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_decoder_only(config, label: str) -> None:
    cfg = text_config(config)
    if getattr(cfg, "is_encoder_decoder", False) or not hasattr(cfg, "num_hidden_layers") \
            or not hasattr(cfg, "num_attention_heads"):
        raise InputError(f"{label} is not a decoder-only causal LM; QRRanker needs one (Llama, Qwen2, Qwen3, ...)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise InputError(f"{label} ({cfg.model_type}) is not a decoder-only causal LM; QRRanker needs one")


def cut_config(config, n_layers: int):
    """The config with only the first `n_layers` decoder layers."""
    cfg = text_config(config)
    cfg.num_hidden_layers = n_layers
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:n_layers]
    return config


def load_base(source: Source, config, *, n_layers: int, device: str, dtype, attn: str,
              trust_remote_code: bool):
    """The decoder stack (no LM head, no final norm) with only its first `n_layers` layers."""
    from transformers import AutoModel, AutoTokenizer

    cut_config(config, n_layers)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(source.path, config=config, dtype=dtype,
                                              attn_implementation=attn, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load {source.label}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{source.label} has no fast tokenizer; QRRanker needs offset mappings")
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if layers is None or not all(getattr(layer, "self_attn", None) is not None for layer in layers):
        raise InputError(f"{source.label} is not a decoder-only causal LM with standard decoder layers "
                         "(.layers[i].self_attn); QRRanker needs one (Llama, Qwen2, Qwen3, ...)")
    if not all(getattr(layer.self_attn, "is_causal", True) for layer in layers):
        raise InputError(f"{source.label} is not a decoder-only (causal) model")
    prepare_stack(base, n_layers, attn)
    base.eval().to(device)
    return base, tokenizer


def prepare_stack(base, n_layers: int, attn: str) -> None:
    """Cut a decoder stack (`.layers`, `.norm`) to QR scoring: keep the first `n_layers` layers,
    drop the final norm, skip the last layer's unread output, capture through `attn`'s kernel."""
    import torch

    from .capture import register

    del base.layers[n_layers:]
    base.norm = torch.nn.Identity()  # nothing reads the final hidden states
    skip_unread_output(base.layers[-1])
    base.set_attn_implementation(register(attn))


def skip_unread_output(layer) -> None:
    """The last loaded layer's output is never read (only its keys and its query rows are): its
    attention kernel is skipped (see `capture`) and its MLP replaced by zeros."""
    import torch

    from .capture import OUTPUT_UNUSED

    class _Zeros(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    setattr(layer.self_attn, OUTPUT_UNUSED, True)
    if isinstance(getattr(layer, "mlp", None), torch.nn.Module):
        layer.mlp = _Zeros()


SHIPPED_TRAINED = "smollm2-135m-instruct.trained"


def shipped_trained() -> Source | None:
    """The trained SmolLM2 reranker shipped as package data (base: the embedded GGUF), if any."""
    from importlib import resources

    path = Path(str(resources.files("memory.qr") / "data" / SHIPPED_TRAINED))
    return Source(str(path), "SmolLM2-135M-Instruct (trained QR heads)") if (
        path / "qrmem_ranker.json").is_file() else None


def trained_manifest(source: Source) -> dict | None:
    """The manifest of a directory written by `qrmem train`, if `source` is one."""
    path = Path(source.path) / RANKER_FILE
    return json.loads(path.read_text()) if path.is_file() else None



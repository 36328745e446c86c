"""int8 dynamic quantisation of a loaded QR model's linear layers on CPU (torch's own
`quantize_dynamic`: weights stored as int8, activations quantised on the fly; no other runtime)."""

from __future__ import annotations

import warnings
from typing import Any

from store.errors import InputError

QUANTIZE_MODES = ("int8",)


def check_quantize(quantize: str | None, device: str, dtype: Any) -> None:
    """Refuse a quantisation that cannot run here, before the model loads."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise InputError(f"unknown quantisation {quantize!r}; use one of {list(QUANTIZE_MODES)} or leave it out")
    import torch

    if not str(device).startswith("cpu"):
        raise InputError(f"quantize={quantize!r} runs on the CPU only; on {device} use dtype bfloat16 instead")
    if dtype is not torch.float32:
        raise InputError(f"quantize={quantize!r} needs float32 weights to start from, got {dtype}; use dtype auto or float32")


def quantize_linear(model: Any, quantize: str) -> Any:
    """Replace every nn.Linear of `model` in place by its int8 dynamic counterpart; return it."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    assert quantize in QUANTIZE_MODES, quantize
    with warnings.catch_warnings():  # torch marks its quantised tensor types as deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

"""Where and how tensors run: device choice, autocast precision, memory format, versions."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import torch

from .errors import ConfigError

__all__ = [
    "autocast",
    "cpu_supports_bf16",
    "resolve_device",
    "resolve_precision",
    "run_precision",
    "versions",
]


#: ``ONEDNN_MAX_CPU_ISA`` values (and their prefixes) that keep oneDNN's bf16 instructions.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AMX", "AVX10", "ALL")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' (--device cuda) was asked for but no CUDA GPU is visible; use 'auto'"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device='mps' (--device mps) was asked for but MPS is not available; use 'auto'"
        )
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them, bf16 autocast on the CPU is emulated and usually slower than fp32. A
    limit on oneDNN's instruction set below AVX512-BF16 (``ONEDNN_MAX_CPU_ISA=AVX2``, as
    when a newer CPU stands in for an AVX2-only one) counts as not having them: the
    convolutions then run without bf16 instructions.
    """
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and not any(isa in limit for isa in _ONEDNN_BF16_ISAS):
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for plain fp32.

    ``auto`` uses bf16 on CUDA GPUs that support it and on CPUs with native bf16; fp32
    elsewhere (including MPS).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def run_precision(trained: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a finished run that was trained and tested in ``trained`` (its
    card's ``training.precision``), so that re-evaluating it reproduces its own numbers;
    fp32 where the device has no bf16."""
    if trained not in ("bfloat16", "bf16"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16 if device.type in ("cuda", "cpu") else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def versions() -> dict[str, Any]:
    """Versions of everything that changes numbers, for model cards and reports."""
    import numpy
    import sklearn
    import timm
    import torchvision

    from . import __version__

    return {
        "cxrlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }

"""Which device to run on: one check shared by every command, with errors that say what to do."""

from __future__ import annotations

import os
import warnings

import torch

# The autocast dtype of each precision name; None: no autocast (fp32).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """The device named ``name`` ("cpu", "cuda", "cuda:1", "mps" …), or CUDA when available and ``name`` is None.

    Raises:
        ValueError: the name is not a device, or the device is not available on this machine (one line
            naming the ``--device`` value and what exists here).
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine (this torch sees no GPU); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: unsupported device type {device.type!r} (expected cpu, cuda or mps)")
    return device


def has_amx() -> bool:
    """Whether this CPU has AMX tile units (Intel Sapphire Rapids and later): oneDNN then runs bf16
    convolutions and matrix products on them (docs/PERFORMANCE.md, "What runs by default on the CPU")."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def has_avx512_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively without AMX (AVX512_BF16: AMD Zen 4 and later, Intel
    Cooper Lake): oneDNN's bf16 kernels then beat fp32 too, though by less than with AMX."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def default_precision(device: torch.device) -> str:
    """The inference precision used when none is asked for: ``$SEGFORMER_DTYPE`` when set, else "bf16" where
    the hardware computes bf16 natively (a CUDA GPU that supports it, a CPU with AMX or AVX512_BF16), else "fp32"."""
    chosen = os.environ.get("SEGFORMER_DTYPE")
    if chosen:
        if chosen not in AUTOCAST_DTYPES:
            raise ValueError(f"SEGFORMER_DTYPE={chosen}: expected one of {', '.join(AUTOCAST_DTYPES)}")
        return chosen
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and (has_amx() or has_avx512_bf16()) else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` ("fp32", "bf16", "fp16") on ``device``; None means fp32.

    Where the device lacks it (bf16 on an older GPU, fp16 off CUDA), one warning and fp32.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(AUTOCAST_DTYPES)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn(f"{device} does not support bf16: running in fp32", stacklevel=2)
        return None
    if precision == "fp16" and device.type != "cuda":
        warnings.warn(f"fp16 mixed precision needs a CUDA device, not {device}: running in fp32", stacklevel=2)
        return None
    return AUTOCAST_DTYPES[precision]

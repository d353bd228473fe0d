"""Options and messages shared by the commands: ``--device``, ``--threads``, ``--quiet``, user-error lines."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: keeps `segformer --help` fast
    from segformer.inference import Segmenter

# Optional packages -> the pip command that installs them (for an ImportError turned into a one-line hint).
OPTIONAL_PACKAGES = {
    "transformers": "pip install transformers",
    "onnx": "pip install 'segformer[export]'",
    "onnxscript": "pip install 'segformer[export]'",
    "onnxruntime": "pip install 'segformer[export]'",
    "starlette": "pip install 'segformer[serve]'",
    "uvicorn": "pip install 'segformer[serve]'",
    "multipart": "pip install 'segformer[serve]'",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--model`` (the checkpoint an ``.onnx`` --weights file came from)."""
    parser.add_argument(
        "--engine",
        choices=["torch", "onnxruntime"],
        help="what runs the network (default: torch; $SEGFORMER_ENGINE overrides the default)",
    )
    parser.add_argument("--model", help="with an .onnx --weights file (e.g. int8): the checkpoint it was exported from")


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``: checked by ``segformer.device.resolve_device`` when the command runs."""
    fallback = default or "cuda when available, else cpu"
    parser.add_argument("--device", default=default, help=f"cpu, cuda, cuda:N or mps (default: {fallback})")


def add_fast_path_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--compile`` and ``--no-graphs``: how the network runs (``segformer.runner.NetworkRunner``)."""
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        help="network precision (default: bf16 on a CUDA GPU that supports it and on a CPU that computes bf16 "
        "natively (AMX or AVX512_BF16), else fp32; $SEGFORMER_DTYPE overrides the default)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network: one compile per input size, worth it for long runs at one size",
    )
    parser.add_argument(
        "--no-graphs", action="store_true", help="on CUDA, run eagerly instead of replaying CUDA graphs per size"
    )


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mode``, ``--scale``, ``--crop``, ``--stride`` and ``--aug``: changes to the weights' test protocol."""
    parser.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the weights' protocol)")
    parser.add_argument(
        "--scale", type=int, nargs=2, metavar=("LONG", "SHORT"), help="test scale (default: the weights' protocol)"
    )
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="slide window (default: the protocol's)")
    parser.add_argument(
        "--stride", type=int, nargs=2, metavar=("H", "W"), help="slide stride (default: the protocol's)"
    )
    parser.add_argument("--aug", action="store_true", help="multi-scale + flip test with the protocol's ratios")


def segmenter_options(args: argparse.Namespace) -> dict:
    """``Segmenter`` keyword arguments of ``add_protocol_arguments``' and ``add_fast_path_arguments``' flags."""
    overrides = {"mode": args.mode, "scale": args.scale, "crop": args.crop, "stride": args.stride}
    return {"aug": args.aug or None, **runner_options(args), **overrides}


def runner_options(args: argparse.Namespace) -> dict:
    """``NetworkRunner`` keyword arguments of ``add_fast_path_arguments``' flags."""
    return {"dtype": args.dtype, "compile": args.compile, "graphs": False if args.no_graphs else None}


def add_threads_argument(parser: argparse.ArgumentParser, default_text: str = "torch's") -> None:
    """``--threads N``: CPU threads of torch (applied by ``apply_threads``); ``default_text`` says what runs
    without it."""
    parser.add_argument("--threads", type=positive_int, metavar="N", help=f"CPU threads (default: {default_text})")


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given; keep torch's default otherwise."""
    if threads is not None:
        import torch  # here, not at module level: ``segformer --help`` must not import torch

        torch.set_num_threads(threads)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 label map"``, ``"3 label maps"``."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def describe_segmenter(segmenter: Segmenter) -> str:
    """Test protocol and engine in a few words, e.g. ``"slide 1024×1024 windows, stride 768×768, scale …; torch"``."""
    protocol = segmenter.protocol
    if protocol.mode == "slide":
        (ch, cw), (sh, sw) = protocol.crop, protocol.stride
        parts = [f"slide {ch}×{cw} windows, stride {sh}×{sw}"]
    else:
        parts = ["whole image"]
    parts.append(f"scale {protocol.scale[0]}×{protocol.scale[1]}" if protocol.scale else "original size")
    if protocol.size_divisor:
        parts.append(f"sides rounded up to multiples of {protocol.size_divisor}")
    if segmenter.aug:
        parts.append(f"multi-scale {', '.join(f'{r:g}' for r in protocol.aug_ratios)}" + (" + flip" * protocol.flip))
    if segmenter.engine is not None:
        return ", ".join(parts) + "; onnxruntime"
    return ", ".join(parts) + f"; torch {segmenter.precision}"


def missing_package_hint(error: ImportError) -> str | None:
    """One line naming a missing optional package and its pip command; None for any other ImportError."""
    if error.name is None and "pip install" in str(error):  # raised by the project with its hint already
        return str(error)
    name = (error.name or "").split(".")[0]
    if name not in OPTIONAL_PACKAGES:
        return None
    return f"this needs the optional package {name!r}, which is not installed: {OPTIONAL_PACKAGES[name]}"


def error_line(error: BaseException) -> str:
    """The user-facing text of an error: ``path: reason`` for OS errors from the system, else the message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)

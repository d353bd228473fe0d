"""Options and messages shared by the commands: ``--device``, ``--threads``, ``--quiet``, user-error lines."""

from __future__ import annotations

import argparse

# Optional packages -> the pip command that installs them (for an ImportError turned into a one-line hint).
OPTIONAL_PACKAGES = {
    "transformers": "pip install transformers",
    "onnx": "pip install 'segformer[export]'",
    "onnxscript": "pip install 'segformer[export]'",
    "onnxruntime": "pip install 'segformer[export]'",
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


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``: checked by ``segformer.device.resolve_device`` when the command runs."""
    fallback = default or "cuda when available, else cpu"
    parser.add_argument("--device", default=default, help=f"cpu, cuda, cuda:N or mps (default: {fallback})")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU threads of torch (applied by ``apply_threads``)."""
    parser.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (default: torch's)")


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


def describe_protocol(segmenter: object) -> str:
    """A short readable test protocol, e.g. ``"slide 1024×1024 windows, stride 768×768, scale 2048×1024"``."""
    # The protocol branch gives Segmenter a ``protocol`` (TestProtocol); until then it holds the fields itself.
    protocol = getattr(segmenter, "protocol", segmenter)
    scale = protocol.scale
    parts = [f"scale {scale[0]}×{scale[1]}" if scale else "original size"]
    if protocol.mode == "slide":
        parts.insert(
            0, f"slide {protocol.crop[0]}×{protocol.crop[1]} windows, stride {protocol.stride[0]}×{protocol.stride[1]}"
        )
    else:
        parts.insert(0, "whole image")
    ratios = getattr(protocol, "aug_ratios", None) or getattr(segmenter, "ratios", ())
    if getattr(segmenter, "aug", len(ratios) > 1):
        parts.append(f"multi-scale {', '.join(f'{r:g}' for r in ratios)} + flip")
    return ", ".join(parts)


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

"""Export a SegFormer to ONNX or to a ``torch.export`` program (``.pt2``) with dynamic batch, height and width.

Both go through ``torch.export`` (the ONNX file through ``torch.onnx.export(..., dynamo=True)``), so
every size in the graph, including the decoder's upsampling size, is computed from the input's
shape: the exported model runs at any batch size and any height and width >= ``EXPORT_MIN_SIZE`` (61).
Smaller inputs (down to the model's ``MIN_INPUT_SIZE``, 29) would make a stage map or a reduced
key/value map 1 pixel wide, a case ``torch.export`` specialises, so the exported graphs exclude it.
The model is exported in eval mode (BatchNorm folded into the fused decoder weights by the graph).
Input ``pixel_values`` (B×C×H×W, normalised), output ``logits`` (B×classes×ceil(H/4)×ceil(W/4)).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# torch is imported inside the functions: `segformer export --help` reads FORMATS and DEFAULT_OPSET without it.
if TYPE_CHECKING:
    import torch

    from segformer.model import SegFormer

FORMATS = ("onnx", "pt2")
DEFAULT_OPSET = 18
# Example batch of the trace: 2, because torch.export specialises dimensions whose example size is 1.
EXAMPLE_BATCH = 2
# Smallest height and width of the exported graphs: every stage map and reduced key/value map is >= 2×2.
EXPORT_MIN_SIZE = 61
# The exporters' lines that are no concern of the user's: torch.onnx logs, at each export, that it skips
# torchvision's operators (this project does not use torchvision), and torch.export warns of its own use of a
# deprecated pytree class (``LeafSpec``).
TORCHVISION_LOGGER = "torch.onnx._internal.exporter._registration"
TORCHVISION_MESSAGE = "torchvision is not installed"
LEAF_SPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with ``prefix``; every other record passes."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' torchvision and ``LeafSpec`` lines (and only those) inside the block."""
    logger = logging.getLogger(TORCHVISION_LOGGER)
    drop = _DropMessages(TORCHVISION_MESSAGE)
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LEAF_SPEC_WARNING, category=FutureWarning)
            yield
    finally:
        logger.removeFilter(drop)


def _example_input(model: SegFormer, height: int, width: int) -> torch.Tensor:
    import torch

    if min(height, width) < EXPORT_MIN_SIZE:
        raise ValueError(f"export size {height}×{width}: height and width must be >= {EXPORT_MIN_SIZE}")
    weight = model.backbone.patch_embed1.proj.weight
    return torch.randn(EXAMPLE_BATCH, model.backbone.in_channels, height, width, device=weight.device)


def _dynamic_shapes() -> dict:
    import torch

    dim = torch.export.Dim
    return {
        "x": {
            0: dim("batch", min=1),
            2: dim("height", min=EXPORT_MIN_SIZE),
            3: dim("width", min=EXPORT_MIN_SIZE),
        }
    }


def export_program(model: SegFormer, height: int = 512, width: int = 512) -> torch.export.ExportedProgram:
    """``torch.export`` the model in eval mode, traced at ``height``×``width`` with dynamic batch, height and width."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with quiet_exporter():
            example = (_example_input(model, height, width),)
            return torch.export.export(model, example, dynamic_shapes=_dynamic_shapes())
    finally:
        model.train(was_training)


def export_pt2(model: SegFormer, path: str | Path, height: int = 512, width: int = 512) -> Path:
    """Write a ``torch.export`` program (load with ``torch.export.load(path).module()``)."""
    import torch

    from segformer.fileio import atomic_write

    path = Path(path)
    program = export_program(model, height, width)
    atomic_write(path, lambda tmp: torch.export.save(program, tmp))
    return path


def export_onnx(
    model: SegFormer, path: str | Path, height: int = 512, width: int = 512, opset: int = DEFAULT_OPSET
) -> Path:
    """Write an ONNX model with dynamic batch, height and width (input ``pixel_values``, output ``logits``).

    Args:
        model: the model (exported in eval mode; its mode is restored afterwards).
        path: output ``.onnx`` file.
        height, width: the example size of the trace (any size runs afterwards).
        opset: ONNX opset (>= 18, the dynamo exporter's minimum).

    Raises:
        ValueError: opset below 18 or an example size below ``EXPORT_MIN_SIZE``.
        ImportError: onnx or onnxscript is missing (``pip install 'segformer[export]'``).
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter needs opset >= {DEFAULT_OPSET}")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail early with a clear message)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'segformer[export]'") from None
    import torch

    from segformer.fileio import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, height, width)
    with quiet_exporter():
        onnx_program = torch.onnx.export(
            program,
            input_names=["pixel_values"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    atomic_write(path, lambda tmp: onnx_program.save(tmp))
    return path


def onnx_max_abs_diff(model: SegFormer, path: str | Path, sizes: Iterable[tuple[int, int, int]]) -> float:
    """Largest |onnxruntime − PyTorch| of the logits over random inputs of the given (batch, height, width) sizes."""
    import onnxruntime  # optional dependency (segformer[export]), needed only for this check
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    try:
        for batch, height, width in sizes:
            x = torch.randn(batch, model.backbone.in_channels, height, width, generator=generator)
            with torch.inference_mode():
                expected = model(x.to(model.backbone.patch_embed1.proj.weight.device)).float().cpu()
            (got,) = session.run(["logits"], {"pixel_values": x.numpy()})
            if got.shape != tuple(expected.shape):
                raise ValueError(f"{path}: ONNX logits have shape {got.shape}, expected {tuple(expected.shape)}")
            worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    finally:
        model.train(was_training)
    return worst

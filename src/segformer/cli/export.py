"""``segformer export --weights SRC --format onnx OUT.onnx``: ONNX or torch.export with dynamic batch and size.

``--quantize int8 --calibrate DATASET --data-root DIR`` also writes ``OUT.int8.onnx``, statically
quantised with ONNX Runtime and calibrated on real images of the dataset.
"""

from __future__ import annotations

# The library's models and torch are imported inside the functions below (segformer.export imports torch only
# inside its functions): `segformer --help` and `segformer export --help` stay fast.
import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from segformer.export import DEFAULT_OPSET, FORMATS

if TYPE_CHECKING:
    from segformer.config import TestProtocol
    from segformer.model import SegFormer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="file to write (.onnx or .pt2)")
    parser.add_argument("--weights", required=True, help="checkpoint file, directory or hub id, any layout")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx or pt2 (torch.export)")
    parser.add_argument("--height", type=int, default=512, help="example height of the trace and the check")
    parser.add_argument("--width", type=int, default=512, help="example width of the trace and the check")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--quantize", choices=["int8"], help="also write OUT.int8.onnx (static int8, QDQ)")
    parser.add_argument("--calibrate", metavar="DATASET", help="dataset of the calibration images (e.g. ade20k)")
    parser.add_argument("--data-root", help="folder of the calibration dataset")
    parser.add_argument("--split", default="train", help="split the calibration images come from (default: train)")
    parser.add_argument("--calibration-images", type=int, default=64, help="number of calibration images")


def int8_path(output: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.int8.onnx")


def check_onnx_tools(quantize: bool) -> None:
    """ValueError with the install hint when the ONNX export (or quantisation) packages are missing."""
    try:
        import onnx  # noqa: F401  (optional dependencies, checked before the model is loaded)
        import onnxscript  # noqa: F401

        if quantize:
            import onnxruntime  # noqa: F401
    except ImportError as e:
        needs = "onnx, onnxscript and onnxruntime" if quantize else "onnx and onnxscript"
        raise ValueError(f"ONNX export needs {needs} ({e}): pip install 'segformer[export]'") from None


def check_arguments(args: argparse.Namespace) -> None:
    if args.quantize and args.format != "onnx":
        raise ValueError("--quantize needs --format onnx")
    if args.quantize and not (args.calibrate and args.data_root):
        raise ValueError("--quantize int8 needs --calibrate DATASET and --data-root DIR (real images to calibrate on)")
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")


def quantize(args: argparse.Namespace, model: SegFormer, protocol: TestProtocol) -> Path:
    """Write the int8 model calibrated on the first ``--calibration-images`` images of the dataset, each resized
    and normalised by the model's test ``protocol``. It quantises the ONNX Runtime engine's own export of the model
    (``export_for_engine``), not the plain file written beside it."""
    from segformer.data import build_dataset
    from segformer.engines import export_for_engine
    from segformer.onnx_passes import quantize_int8

    dataset = build_dataset(args.calibrate, args.data_root, args.split)
    count = min(args.calibration_images, len(dataset))
    if count == 0:
        raise ValueError(f"{args.data_root}: no {args.split} images to calibrate on")
    images = (dataset.load(i)[0] for i in range(count))
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "engine.onnx"
        export_for_engine(model, source)
        target = quantize_int8(source, int8_path(args.output), images, protocol)
    print(f"wrote {target} (int8 QDQ, calibrated on {count} {args.calibrate} {args.split} images)")
    return target


def run(args: argparse.Namespace) -> int:
    from segformer import from_pretrained
    from segformer.export import export_onnx, export_pt2, onnx_max_abs_diff

    check_arguments(args)
    if args.format == "onnx":
        check_onnx_tools(bool(args.quantize))
    model = from_pretrained(args.weights).eval()
    name = f"SegFormer-{model.config.variant} ({model.config.num_classes} classes)"
    if args.format == "pt2":
        export_pt2(model, args.output, args.height, args.width)
        print(f"wrote {name} to {args.output} (torch.export; load with torch.export.load(path).module())")
        return 0
    export_onnx(model, args.output, args.height, args.width, opset=args.opset)
    print(f"wrote {name} to {args.output} (ONNX opset {args.opset}; dynamic batch, height and width)")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: the file was not checked")
        return 0
    other = (2, args.height + 37, args.width + 23)  # another batch and size than the trace's
    diff = onnx_max_abs_diff(model, args.output, [(1, args.height, args.width), other])
    print(f"checked with onnxruntime at 1×{args.height}×{args.width} and 2×{other[1]}×{other[2]}: max |Δ| {diff:.1e}")
    if diff > 1e-3:
        raise ValueError(f"{args.output}: onnxruntime differs from PyTorch by {diff:.1e} (> 1e-3)")
    if args.quantize:
        from segformer.config import TestProtocol

        protocol = model.config.protocol
        if protocol is None:
            protocol = TestProtocol()
            print("the weights record no test protocol: calibrating at the legacy default (whole, scale 2048×512)")
        quantize(args, model, protocol)
    return 0

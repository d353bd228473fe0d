"""``segformer export --weights SRC --format onnx OUT.onnx``: ONNX or torch.export with dynamic batch and size."""

from __future__ import annotations

import argparse

from segformer.export import DEFAULT_OPSET, FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="file to write (.onnx or .pt2)")
    parser.add_argument("--weights", required=True, help="checkpoint file, directory or hub id, any layout")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx or pt2 (torch.export)")
    parser.add_argument("--height", type=int, default=512, help="example height of the trace (default: 512)")
    parser.add_argument("--width", type=int, default=512, help="example width of the trace (default: 512)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")


def run(args: argparse.Namespace) -> int:
    from segformer import from_pretrained
    from segformer.export import export_onnx, export_pt2, onnx_max_abs_diff

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
    return 0

"""``segformer convert SRC DST``: rewrite any readable checkpoint in our layout or transformers'."""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint file, directory or hub id, in any supported layout")
    parser.add_argument("dst", help="output directory (model.safetensors + config.json)")
    parser.add_argument("--layout", choices=["ours", "hf"], default="ours", help="layout to write (default: ours)")
    parser.add_argument("--variant", help="b0 … b5 (default: read from the weights)")
    parser.add_argument("--num-classes", type=int, help="classes (backbone-only sources need it)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segformer import from_pretrained  # here, not at the top: keeps `segformer --help` fast

    if Path(args.dst).exists() and not Path(args.dst).is_dir():
        raise FileExistsError(f"{args.dst}: exists and is not a folder; DST is the output folder")
    model = from_pretrained(args.src, variant=args.variant, num_classes=args.num_classes)
    model.save_pretrained(args.dst, layout=args.layout)
    cfg = model.config
    print(f"wrote SegFormer-{cfg.variant} ({cfg.num_classes} classes) to {args.dst} in the {args.layout} layout")
    return 0

"""``segformer predict INPUT... --out DIR``: label PNGs and overlays with a legend for images."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_WEIGHTS = "nvidia/segformer-b0-finetuned-ade-512-512"
# Largest image read without Pillow's decompression-bomb error (it warns above this, refuses above twice this).
MAX_IMAGE_PIXELS = 1 << 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively), globs")
    parser.add_argument("--out", required=True, help="output folder for <stem>_label.png and <stem>_overlay.png")
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help=f"checkpoint file, folder or hub id (default: {DEFAULT_WEIGHTS}, NVIDIA non-commercial licence)",
    )
    parser.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the model's protocol)")
    parser.add_argument(
        "--scale", type=int, nargs=2, metavar=("LONG", "SHORT"), help="test scale (default: the model's protocol)"
    )
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="slide window (default: the protocol's)")
    parser.add_argument(
        "--stride", type=int, nargs=2, metavar=("H", "W"), help="slide stride (default: the protocol's)"
    )
    parser.add_argument("--aug", action="store_true", help="multi-scale + flip with the protocol's ratios")
    parser.add_argument("--batch-size", type=int, default=1, help="images per step; equal sizes share a forward pass")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight in 0..1 (default: 0.5)")
    parser.add_argument(
        "--overlay-format", choices=["png", "jpg"], default="png", help="overlay file type (default: png)"
    )


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named, images under folders (recursively) and files matching glob patterns, without repeats."""
    from segformer.data.datasets import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no file matches it as a pattern")
            files += expand_inputs([str(m) for m in matches])
    return list(dict.fromkeys(files))


def output_stems(files: list[Path]) -> list[str]:
    """File stems, with "-2", "-3" … appended to repeated ones so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for file in files:
        seen[file.stem] = seen.get(file.stem, 0) + 1
        stems.append(file.stem if seen[file.stem] == 1 else f"{file.stem}-{seen[file.stem]}")
    return stems


def model_palette(class_names: list[str]) -> np.ndarray:
    """The palette of the dataset whose classes the model predicts, else distinct generated colours."""
    import numpy as np

    from segformer.data import DATASETS, default_palette

    for info in DATASETS.values():
        if info.classes and list(info.classes) == list(class_names):
            return np.array(info.palette, dtype=np.uint8)
    return default_palette(len(class_names))


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from segformer import from_pretrained
    from segformer.data import read_image
    from segformer.inference import Segmenter
    from segformer.visualize import overlay, save_label_png

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError(f"no images found in {' '.join(args.inputs)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(args.weights, map_location=device)
    segmenter = Segmenter(model, aug=args.aug, mode=args.mode, scale=args.scale, crop=args.crop, stride=args.stride)
    names, palette = model.class_names, model_palette(model.class_names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    failed = 0
    jobs = list(zip(files, output_stems(files), strict=True))
    bar = tqdm(total=len(jobs), unit="image", desc="predict", disable=len(jobs) < 2)
    for start in range(0, len(jobs), args.batch_size):
        batch = []
        for file, stem in jobs[start : start + args.batch_size]:
            try:
                batch.append((read_image(file), stem))
            except (OSError, ValueError) as e:
                failed += 1
                tqdm.write(f"segformer predict: error: {e}", file=sys.stderr)
                bar.update()
        labels = segmenter.predict_batch([image for image, _ in batch])
        for (image, stem), label in zip(batch, labels, strict=True):
            save_label_png(label, out / f"{stem}_label.png", palette)
            overlay(image, label, palette, names, alpha=args.alpha).save(out / f"{stem}_overlay.{args.overlay_format}")
            bar.update()
    bar.close()
    print(f"wrote {len(jobs) - failed} label maps and overlays to {out} ({segmenter})")
    if failed:
        print(f"segformer predict: {failed} of {len(jobs)} images could not be read", file=sys.stderr)
    return 1 if failed else 0

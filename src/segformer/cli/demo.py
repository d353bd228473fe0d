"""``segformer demo``: train a SegFormer-B0 from scratch on synthetic shapes, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

NUM_TRAIN, NUM_VAL, SIZE = 400, 40, 96  # synthetic scenes (the recipe's crop and scales match SIZE)
NUM_OVERLAYS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="segformer-demo", help="output folder (default: segformer-demo)")
    parser.add_argument("--iters", type=int, help="training iterations (default: the demo recipe's)")
    parser.add_argument("--device", help="cpu, cuda … (default: cuda when available)")


def idle_threads() -> int:
    """CPU threads for the demo: the cores the load average leaves idle (at least 1, at most torch's default).

    OpenMP threads that share busy cores wait on each other; on a loaded 2-core machine two threads
    made a training step about ten times slower than one.
    """
    import os

    import torch

    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    return max(1, min(torch.get_num_threads(), int(idle + 0.5)))


def enlarge(array: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour ×``factor`` upscaling of an image or label map, so small scenes are legible."""
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def side_by_side(pictures: list[Image.Image]) -> Image.Image:
    """Pictures next to each other on white, top-aligned, 8 px apart."""
    canvas = Image.new(
        "RGB", (sum(p.width for p in pictures) + 8 * (len(pictures) - 1), max(p.height for p in pictures)), "white"
    )
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + 8
    return canvas


def run(args: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    import torch

    from segformer.data import build_dataset
    from segformer.data.synthetic import write_synthetic
    from segformer.evaluate import evaluate
    from segformer.inference import Segmenter
    from segformer.metrics import format_table
    from segformer.pretrained import from_pretrained
    from segformer.recipe import load_recipe
    from segformer.train import train
    from segformer.visualize import overlay

    start = time.perf_counter()
    out = Path(args.out)
    run_dir = out / "run"
    if (run_dir / "last.pt").exists():
        raise ValueError(f"{out} already holds a demo run: pass another --out, or delete {out}")
    if args.iters is not None and args.iters < 1:
        raise ValueError(f"--iters must be >= 1, got {args.iters}")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(idle_threads())
    print(f"writing {NUM_TRAIN} training and {NUM_VAL} held-out synthetic {SIZE}×{SIZE} scenes to {out / 'data'}")
    data_root = write_synthetic(out / "data", NUM_TRAIN, NUM_VAL, size=(SIZE, SIZE), seed=0)
    recipe = load_recipe("demo", [f"schedule.iters={args.iters}"] if args.iters else [])
    recipe.data.root = str(data_root.resolve())
    train(recipe, run_dir, device=args.device)

    model = from_pretrained(run_dir / "best", map_location=args.device or "cpu")
    held_out = build_dataset("custom", data_root, "val")
    segmenter = Segmenter.for_dataset(model, "custom", scale=tuple(recipe.data.test_scale))
    metrics = evaluate(segmenter, held_out, progress=False)
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    for index in range(min(NUM_OVERLAYS, len(held_out))):
        image, truth = held_out[index]
        pictures = [
            overlay(enlarge(image), enlarge(label), held_out.palette, held_out.classes, alpha=0.6)
            for label in (truth, segmenter.predict(image))
        ]
        side_by_side(pictures).save(overlays / f"{index:05d}.png")
    print(format_table(metrics, held_out.classes))
    print(
        f"\nheld-out mIoU {metrics['mIoU']:.3f} on {len(held_out)} unseen images "
        f"({held_out.num_classes} classes) after {recipe.schedule.iters} iterations, "
        f"{time.perf_counter() - start:.0f} s in all\n"
        f"  curves:   {run_dir / 'curves.png'}\n"
        f"  overlays: {overlays} (held-out images: truth left, prediction right)\n"
        f"  weights:  {run_dir / 'best'} (segformer predict --weights {run_dir / 'best'} IMAGE)"
    )
    return 0

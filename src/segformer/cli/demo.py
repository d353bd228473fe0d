"""``segformer demo``: train a SegFormer-B0 from scratch on synthetic shapes, offline, in minutes on a CPU."""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse
import os
import shlex
import time
from pathlib import Path

import numpy as np

from segformer.cli.common import add_device_argument, add_quiet_argument, add_threads_argument, apply_threads
from segformer.cli.train import train_and_report
from segformer.cores import idle_threads

NUM_TRAIN, NUM_VAL, SIZE = 400, 40, 96  # synthetic scenes (the recipe's crop and scales match SIZE)
NUM_OVERLAYS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="segformer-demo", help="output folder (default: segformer-demo)")
    parser.add_argument("--iters", type=int, help="training iterations (default: the demo recipe's)")
    add_device_argument(parser)
    add_threads_argument(parser, "the cores idle when it starts; $OMP_NUM_THREADS overrides it")
    add_quiet_argument(parser)


def demo_threads(requested: int | None) -> int | None:
    """CPU threads for the demo: ``requested`` (``--threads``); None (torch's choice, which follows it) when
    ``$OMP_NUM_THREADS`` is set; else the cores idle right now (``segformer.cores.idle_threads``), at most torch's
    default. OpenMP threads that share busy cores wait on each other at every barrier."""
    if requested is not None or "OMP_NUM_THREADS" in os.environ:
        return requested
    import torch  # imported here: keeps `segformer --help` fast

    return idle_threads(most=torch.get_num_threads())


def enlarge(array: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour ×``factor`` upscaling of an image or label map, so small scenes are legible."""
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def write_overlays(weights: Path, data_root: Path, out: Path, protocol, device) -> None:
    """Truth | prediction panels of the first held-out images, predicted by ``weights`` with ``protocol``."""
    from segformer.data import build_dataset  # imported here: keeps `segformer --help` fast
    from segformer.inference import Segmenter
    from segformer.pretrained import from_pretrained
    from segformer.visualize import overlay, panels

    held_out = build_dataset("custom", data_root, "val")
    segmenter = Segmenter(from_pretrained(weights, map_location=device), protocol)
    out.mkdir(exist_ok=True)
    for index in range(min(NUM_OVERLAYS, len(held_out))):
        image, truth = held_out[index]
        pictures = [
            (caption, overlay(enlarge(image), enlarge(label), held_out.palette, held_out.classes, alpha=0.6))
            for caption, label in (("truth", truth), ("prediction", segmenter.predict(image)))
        ]
        panels(pictures).save(out / f"{index:05d}.png")


def run(args: argparse.Namespace) -> int:
    # imported here: keeps `segformer --help` fast
    from segformer.data import build_dataset
    from segformer.data.synthetic import write_synthetic
    from segformer.device import resolve_device
    from segformer.recipe import load_recipe
    from segformer.train import recipe_protocol

    start = time.perf_counter()
    out = Path(args.out)
    run_dir = out / "run"
    if (run_dir / "last.pt").exists():
        raise ValueError(f"{out} already holds a demo run: pass another --out, or delete {out}")
    if args.iters is not None and args.iters < 1:
        raise ValueError(f"--iters must be >= 1, got {args.iters}")
    device = resolve_device(args.device)  # before writing the data
    apply_threads(demo_threads(args.threads))
    print(f"writing {NUM_TRAIN} training and {NUM_VAL} held-out synthetic {SIZE}×{SIZE} scenes to {out / 'data'}")
    data_root = write_synthetic(out / "data", NUM_TRAIN, NUM_VAL, size=(SIZE, SIZE), seed=0)
    recipe = load_recipe("demo", [f"schedule.iters={args.iters}"] if args.iters else [])
    recipe.data.root = str(data_root.resolve())
    status, summary = train_and_report("demo", recipe, run_dir, device=str(device), quiet=args.quiet)
    if status:
        return status

    protocol = recipe_protocol(recipe, build_dataset("custom", data_root, "train"))
    write_overlays(run_dir / "best", data_root, out / "overlays", protocol, device)
    weights, quote = run_dir / "best", lambda path: shlex.quote(str(path))
    print(
        f"\nheld-out mIoU {summary['best_miou']:.3f} on {NUM_VAL} unseen images (best, at iteration "
        f"{summary['best_iteration']} of {summary['iterations']}), {time.perf_counter() - start:.0f} s in all\n"
        f"  curves:   {run_dir / 'curves.png'}\n"
        f"  overlays: {out / 'overlays'} (held-out images: truth | prediction)\n"
        f"  weights:  {weights} (they carry their test protocol, class names and palette)\n"
        f"next:\n"
        f"  segformer eval --weights {quote(weights)} --dataset custom --data-root {quote(data_root)}\n"
        f"  segformer predict {quote(data_root / 'images' / 'val')} --weights {quote(weights)} "
        f"--out {quote(out / 'predictions')}"
    )
    return 0

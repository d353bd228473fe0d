"""``segformer demo``: train a SegFormer-B0 from scratch on synthetic shapes, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse

NUM_TRAIN, NUM_VAL, SIZE = 400, 40, 64  # synthetic scenes (the recipe's crop and scales match SIZE)
NUM_OVERLAYS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="segformer-demo", help="output folder (default: segformer-demo)")
    parser.add_argument("--iters", type=int, help="training iterations (default: the demo recipe's)")
    parser.add_argument("--device", help="cpu, cuda … (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

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
        image, _ = held_out[index]
        picture = overlay(image, segmenter.predict(image), held_out.palette, held_out.classes, alpha=0.6)
        picture.save(overlays / f"{index:05d}.png")
    print(format_table(metrics, held_out.classes))
    print(
        f"\nheld-out mIoU {metrics['mIoU']:.3f} on {len(held_out)} unseen images "
        f"({held_out.num_classes} classes) after {recipe.schedule.iters} iterations, "
        f"{time.perf_counter() - start:.0f} s in all\n"
        f"  curves:   {run_dir / 'curves.png'}\n"
        f"  overlays: {overlays} (predictions on held-out images)\n"
        f"  weights:  {run_dir / 'best'} (segformer predict --weights {run_dir / 'best'} IMAGE)"
    )
    return 0

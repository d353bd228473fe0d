"""``Segmenter.predict`` with labels from the small logits (``segformer.score_resize.resized_argmax``) against the dense
resize + argmax, on synthetic scenes, with the weights' own model; and the default precision against fp32.

For each size: milliseconds per image of both label paths (same process, alternating, median), whether their
labels are equal, and the share of pixels where the default precision (bf16 on an AMX CPU) gives the fp32 label.

python benchmarks/predict_labels.py --weights RUN/best                     # e.g. the demo's weights
python benchmarks/predict_labels.py --weights RUN/best --sizes 512x512 683x512 --scale 2048 512 --size-divisor 32
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings

import numpy as np
import torch
from _run import median_ms

import segformer
from segformer import score_resize
from segformer.data import SyntheticDataset
from segformer.inference import Segmenter


def labels_ms(segmenter: Segmenter, images: list[np.ndarray], dense: bool, rounds: int) -> tuple[float, list]:
    """Median ms per image of ``predict`` over ``rounds`` passes (dense: the full-resolution resize), and the labels."""
    share = score_resize.DENSE_SHARE
    score_resize.DENSE_SHARE = 0.0 if dense else share
    try:
        labels = [segmenter.predict(image) for image in images]
        ms = median_ms(lambda: segmenter.predict(images[0]), rounds)
    finally:
        score_resize.DENSE_SHARE = share
    return ms, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint file or folder")
    parser.add_argument("--sizes", nargs="+", default=["512x512"], help="scene sizes HxW")
    parser.add_argument("--scale", nargs=2, type=int, metavar=("LONG", "SHORT"), help="test scale (default: none)")
    parser.add_argument("--size-divisor", type=int, help="AlignedResize divisor (default: none)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    os.environ.pop("SEGFORMER_DTYPE", None)
    model = segformer.from_pretrained(args.weights)
    protocol = dataclasses.replace(
        model.config.protocol, scale=tuple(args.scale) if args.scale else None, size_divisor=args.size_divisor
    )
    default, fp32 = Segmenter(model, protocol), Segmenter(model, protocol, dtype="fp32")
    print(f"{model.config.variant}, {model.num_classes} classes, {args.threads} threads; {default}")
    for size in args.sizes:
        height, width = (int(side) for side in size.split("x"))
        scenes = SyntheticDataset(num=args.images, size=(height, width), split="val")
        images = [scenes[i][0] for i in range(len(scenes))]
        for _ in range(2):  # alternate the two paths; the second pass is printed
            dense_ms, dense = labels_ms(default, images, True, args.rounds)
            small_ms, small = labels_ms(default, images, False, args.rounds)
        equal = all(np.array_equal(a, b) for a, b in zip(dense, small, strict=True))
        agree = np.mean([(a == fp32.predict(image)).mean() for a, image in zip(small, images, strict=True)])
        print(
            f"{size}: dense resize {dense_ms:6.1f} ms, labels from small logits {small_ms:6.1f} ms "
            f"({dense_ms / small_ms:.2f}×), labels equal: {equal}; {default.precision} vs fp32 labels: {agree:.4%}"
        )


if __name__ == "__main__":
    main()

"""Label agreement of a precision with fp32 over a dataset split: what the default precision rule is checked with.

Runs ``Segmenter`` twice over every image of the split, in fp32 and in ``--dtype`` (bf16 by default), with the
weights' own protocol, and prints the share of pixels whose labels agree, both mIoUs and the time per image of each.
The default CPU precision is bf16 only where this agreement is at least 99.9% on the demo's held-out set. With
``--device cuda`` the second run is the CUDA default path (CUDA graphs) and the fp32 run is eager (no graphs).

    PYTHONPATH=src python benchmarks/precision_agreement.py --weights segformer-demo/run/best \
        --dataset custom --data-root segformer-demo/data [--dtype bf16] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segformer.data import build_dataset
from segformer.device import has_amx, has_avx512_bf16
from segformer.inference import Segmenter
from segformer.metrics import ConfusionMatrix
from segformer.pretrained import from_pretrained


def run(args: argparse.Namespace) -> dict:
    """Print and return the agreement, both mIoUs and the milliseconds per image of each precision."""
    torch.set_num_threads(args.threads)
    model = from_pretrained(args.weights)
    dataset = build_dataset(args.dataset, args.data_root, args.split)
    device = getattr(args, "device", None)
    segmenters = {
        name: Segmenter(model, dtype=name, device=device, graphs=False if name == "fp32" else None)
        for name in ("fp32", args.dtype)
    }
    matrices = {name: ConfusionMatrix(model.num_classes) for name in segmenters}
    seconds = dict.fromkeys(segmenters, 0.0)
    agree = total = 0
    for index in range(len(dataset)):
        image, mask = dataset[index]
        labels = {}
        for name, segmenter in segmenters.items():
            start = time.perf_counter()
            labels[name] = segmenter.predict(image)
            seconds[name] += time.perf_counter() - start
            matrices[name].update(
                torch.from_numpy(labels[name].astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
            )
        agree += int((labels["fp32"] == labels[args.dtype]).sum())
        total += labels["fp32"].size
    print(f"CPU: AMX {has_amx()}, AVX512_BF16 {has_avx512_bf16()}; torch {torch.__version__}, {args.threads} threads")
    print(f"{len(dataset)} images, {total} pixels: {args.dtype} labels equal to fp32 on {agree / total:.4%}")
    figures = {"images": len(dataset), "pixels": total, "agreement": agree / total}
    for name, matrix in matrices.items():
        ms, miou = 1e3 * seconds[name] / len(dataset), float(matrix.compute()["mIoU"])
        print(f"  {name} ({segmenters[name].runner.describe()}): mIoU {100 * miou:.2f}, {ms:.1f} ms per image")
        figures |= {f"miou_{name}": miou, f"ms_per_image_{name}": ms}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", default="custom")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", help="where both runs go (default: the CPU)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()

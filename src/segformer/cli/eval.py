"""``segformer eval --weights SRC --dataset NAME --data-root DIR``: mIoU of a model on a dataset split.

Runs on one process or under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA); each rank
predicts every N-th image and only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import math
import os
import time

SUMMARY = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall", "fwIoU")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint file, folder or hub id")
    parser.add_argument("--dataset", required=True, help="ade20k, cityscapes, voc, coco-stuff or custom")
    parser.add_argument("--data-root", required=True, help="dataset folder")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the dataset's protocol)")
    parser.add_argument(
        "--scale", type=int, nargs=2, metavar=("LONG", "SHORT"), help="test scale (default: the dataset's protocol)"
    )
    parser.add_argument("--aug", action="store_true", help="multi-scale + flip test with the dataset's ratios")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", help="write the per-class and summary metrics to this JSON file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def results_json(results: dict, class_names: list[str], info: dict) -> dict:
    """JSON-ready metrics: ``info``, a summary and one entry per class (NaN written as null)."""
    per_class = [
        {"class": name, **{key: _number(results[key][k]) for key in ("IoU", "Acc", "Dice", "Precision", "Recall")}}
        for k, name in enumerate(class_names)
    ]
    summary = {key: _number(results[key]) for key in SUMMARY if key in results}
    return {**info, "summary": summary, "per_class": per_class}


def _setup_distributed(device: str):
    """Join the torchrun process group when WORLD_SIZE > 1; return (device, whether we initialised it)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return torch.device(device), False
    if torch.device(device).type == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
        return local, True
    dist.init_process_group("gloo")
    return torch.device(device), True


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from torch.utils.data import Subset

    from segformer import from_pretrained
    from segformer.data import build_dataset
    from segformer.evaluate import evaluate
    from segformer.fileio import atomic_write_json
    from segformer.inference import Segmenter
    from segformer.metrics import format_table

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    device, initialised = _setup_distributed(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        main_rank = not dist.is_initialized() or dist.get_rank() == 0
        dataset = build_dataset(args.dataset, args.data_root, args.split)
        model = from_pretrained(args.weights, map_location=device)
        if model.num_classes != dataset.num_classes:
            raise ValueError(
                f"{args.weights} predicts {model.num_classes} classes but {dataset.name} has {dataset.num_classes}"
            )
        overrides = {key: value for key, value in (("mode", args.mode), ("scale", args.scale)) if value is not None}
        segmenter = Segmenter.for_dataset(model, dataset.info.name, aug=args.aug, **overrides)
        subset = Subset(dataset, range(min(args.limit, len(dataset)))) if args.limit else dataset
        start = time.perf_counter()
        results = evaluate(segmenter, subset, progress=main_rank)
        seconds = time.perf_counter() - start
        if main_rank:
            print(format_table(results, dataset.classes))
            print(f"{len(subset)} images of {dataset.name} {args.split} in {seconds:.1f} s with {segmenter}")
            if args.out:
                info = {
                    "weights": str(args.weights),
                    "dataset": dataset.name,
                    "split": args.split,
                    "num_images": len(subset),
                    "protocol": repr(segmenter),
                }
                atomic_write_json(args.out, results_json(results, dataset.classes, info))
                print(f"wrote {args.out}")
    finally:
        if initialised:
            dist.destroy_process_group()
    return 0

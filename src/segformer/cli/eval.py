"""``segformer eval --weights SRC --dataset NAME --data-root DIR``: mIoU of a model on a dataset split.

Runs on one process or under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA); each rank
predicts every N-th image and only rank 0 prints and writes.
"""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

from segformer.cli.common import (
    add_device_argument,
    add_engine_arguments,
    add_fast_path_arguments,
    add_protocol_arguments,
    add_quiet_argument,
    add_threads_argument,
    apply_threads,
    describe_segmenter,
    plural,
    segmenter_options,
)

SUMMARY = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall", "fwIoU")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint file, folder or hub id")
    parser.add_argument("--dataset", required=True, help="ade20k, cityscapes, voc, coco-stuff or custom")
    parser.add_argument("--data-root", required=True, help="dataset folder")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    add_protocol_arguments(parser)
    add_engine_arguments(parser)
    add_fast_path_arguments(parser)
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--out", help="write the per-class and summary metrics to this JSON file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument(
        "--show-dir", metavar="DIR", help="write DIR/<image>.png: truth and prediction overlays side by side"
    )
    add_quiet_argument(parser)


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


def overlay_writer(dataset, show_dir: Path) -> Callable:
    """An ``evaluate`` callback writing ``show_dir/<image stem>.png``: truth and prediction overlays, captioned."""
    from segformer.visualize import overlay, panels, save_image

    def write(index: int, image, mask, prediction) -> None:
        pictures = [(title, overlay(image, label, dataset.palette, dataset.classes)) for title, label in
                    (("truth", mask), ("prediction", prediction))]  # fmt: skip
        save_image(panels(pictures), show_dir / f"{dataset.image_path(index).stem}.png")

    return write


def build_segmenter(args: argparse.Namespace, dataset, device):
    """The model of ``--weights`` and its Segmenter: the weights' own test protocol, else the dataset's official one."""
    from segformer.engines import load_for_inference
    from segformer.inference import Segmenter

    model, engine, _ = load_for_inference(args.weights, device, args.engine, args.model)
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{args.weights} predicts {model.num_classes} classes but {dataset.name} has {dataset.num_classes}"
        )
    protocol = model.config.protocol
    if protocol is None:
        protocol = dataset.info.protocol
        print(f"{args.weights} records no test protocol: using the official {dataset.name} protocol")
    return Segmenter(model, protocol, engine=engine, **segmenter_options(args))


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from segformer.data import build_dataset
    from segformer.distributed import close_distributed, init_distributed
    from segformer.evaluation import evaluate
    from segformer.fileio import atomic_write_json
    from segformer.metrics import format_table

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    for path, flag in ((args.out, "--out"), (args.show_dir, "--show-dir")):
        if path and Path(path).exists() and Path(path).is_dir() != (flag == "--show-dir"):
            raise FileExistsError(f"{flag} {path}: exists and is not a {'folder' if flag == '--show-dir' else 'file'}")
    apply_threads(args.threads)
    processes = init_distributed(args.device)
    try:
        main_rank = processes.is_main
        dataset = build_dataset(args.dataset, args.data_root, args.split)
        segmenter = build_segmenter(args, dataset, processes.device)
        subset = Subset(dataset, range(min(args.limit, len(dataset)))) if args.limit else dataset  # same indices
        show = overlay_writer(dataset, Path(args.show_dir)) if args.show_dir else None
        start = time.perf_counter()
        results = evaluate(segmenter, subset, progress=main_rank and not args.quiet, on_prediction=show)
        seconds = time.perf_counter() - start
        if main_rank:
            print(format_table(results, dataset.classes))
            images = plural(len(subset), "image")
            print(f"{images} of {dataset.name} {args.split} in {seconds:.1f} s ({describe_segmenter(segmenter)})")
            if args.show_dir:
                print(f"wrote truth/prediction overlays to {args.show_dir}")
            if args.out:
                info = {
                    "weights": str(args.weights),
                    "dataset": dataset.name,
                    "split": args.split,
                    "num_images": len(subset),
                    "protocol": {**segmenter.protocol.to_dict(), "aug": segmenter.aug},
                }
                atomic_write_json(args.out, results_json(results, dataset.classes, info))
                print(f"wrote {args.out}")
    finally:
        close_distributed()
    return 0

"""``segformer check-data --dataset NAME --data-root DIR``: every problem of a dataset, before training.

Reads every image/mask pair of the splits (masks in full, images cheaply, see ``segformer.data.check``),
prints a table of the classes (pixel share, number of images) and every problem with its file, and exits
with 1 when there is any problem.
"""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse

from segformer.cli.common import add_quiet_argument, add_threads_argument, apply_threads, plural


def option(text: str) -> tuple[str, object]:
    """argparse type of ``--options KEY=VALUE``: true/false → bool, a comma-separated list → list of str."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. reduce_zero_label=true), got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "false", "no", "0"):
        return key, lowered in ("true", "yes", "1")
    return key, [item.strip() for item in value.split(",")] if "," in value else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="ade20k, cityscapes, voc, coco-stuff or custom")
    parser.add_argument("--data-root", required=True, help="dataset folder")
    parser.add_argument("--split", nargs="+", default=["train", "val"], help="splits to check (default: train val)")
    parser.add_argument(
        "--options",
        nargs="+",
        type=option,
        default=[],
        metavar="KEY=VALUE",
        help="dataset options, e.g. reduce_zero_label=true, binary=true, classes=bg,fg (custom), aug=true (voc)",
    )
    parser.add_argument("--fast", action="store_true", help="read only the image headers (sizes), not their pixels")
    add_threads_argument(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from segformer.data import build_dataset
    from segformer.data.check import check_dataset

    apply_threads(args.threads)
    options = dict(args.options)
    problems = 0
    for split in args.split:
        try:
            dataset = build_dataset(args.dataset, args.data_root, split, **options)
        except (ValueError, OSError) as e:  # a split that cannot even be listed is one problem, not the end
            print(f"{args.dataset} {split}: cannot list the dataset: {e}\n")
            problems += 1
            continue
        report = check_dataset(dataset, progress=not args.quiet, fast=args.fast, workers=args.threads)
        report.name = f"{dataset.name} {split}"
        print(report.format() + "\n")
        problems += len(report.problems)
    print(f"{plural(problems, 'problem')} found" if problems else "the dataset is ready for training")
    return 1 if problems else 0

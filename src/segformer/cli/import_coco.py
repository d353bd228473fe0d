"""``segformer import-coco JSON --images DIR --out DATASET``: COCO annotations to a ``custom`` dataset.

Instances (polygons, RLE) or panoptic (PNG + JSON) annotations become class-id masks by the rules of
``segformer.data.coco``; ``segformer.data.coco_import`` writes the folder.
"""

from __future__ import annotations

# The library (torch, pycocotools) is imported inside ``run``: `segformer import-coco --help` stays fast.
import argparse

from segformer.cli.common import add_quiet_argument, plural


def fraction(text: str) -> float:
    """argparse type: a number between 0 and 1 (exclusive)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {value:g}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", metavar="JSON", help="COCO instances or panoptic JSON file")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder the JSON's file_name paths start in")
    parser.add_argument(
        "--out", required=True, metavar="DATASET", help="custom dataset folder to write (an existing one gets a split)"
    )
    splits = parser.add_mutually_exclusive_group()
    splits.add_argument("--split", default="train", help="split folder for all images (default: train)")
    splits.add_argument(
        "--val-fraction",
        type=fraction,
        metavar="F",
        help="put this share of the images in val (chosen by a hash of the file name), the rest in train",
    )
    parser.add_argument(
        "--panoptic-masks",
        metavar="DIR",
        help="folder of a panoptic file's PNGs (default: the JSON's path without .json)",
    )
    parser.add_argument(
        "--unlabeled",
        choices=["background", "ignore"],
        help="pixels no annotation covers: a background class 0, or 255 = ignored in training "
        "(default: background for instances, ignore for panoptic files)",
    )
    parser.add_argument(
        "--background-name",
        default="background",
        metavar="NAME",
        help="name of the background class (default: background)",
    )
    parser.add_argument(
        "--crowd",
        choices=["label", "ignore"],
        default="label",
        help="iscrowd regions: their category (default) or 255 = ignored in training",
    )
    parser.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from segformer.data.coco_import import import_coco

    summary = import_coco(
        args.annotations,
        args.images,
        args.out,
        split=args.split,
        val_fraction=args.val_fraction,
        panoptic_masks=args.panoptic_masks,
        unlabeled=args.unlabeled,
        background_name=args.background_name,
        crowd=args.crowd,
        link=args.link,
        progress=not args.quiet,
    )
    splits = ", ".join(f"{split} {count}" for split, count in summary.split_sizes.items())
    what = "panoptic segment" if summary.panoptic else "annotation"
    crowd = f", {summary.crowd} of them crowd ({'ignored' if args.crowd == 'ignore' else 'as their category'})"
    skipped = f"; {plural(summary.skipped, 'annotation')} without a segmentation skipped" if summary.skipped else ""
    unlabeled = f"class 0 {summary.classes[0]!r}" if summary.unlabeled == 0 else "255 (ignored)"
    print(
        f"{summary.out}: {plural(sum(summary.split_sizes.values()), 'image')} ({splits}), "
        f"{plural(summary.annotations, what)}{crowd if summary.crowd else ''}{skipped}; "
        f"{plural(len(summary.classes), 'class', 'classes')} in classes.txt, unlabeled pixels {unlabeled}"
    )
    print(f"next: segformer check-data --dataset custom --data-root {summary.out}")
    return 0

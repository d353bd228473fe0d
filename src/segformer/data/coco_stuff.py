"""COCO-Stuff 164k: 171 classes, read from ``*_labelTrainIds.png`` or mapped from the raw ``*.png`` ids
(as mmseg's ``tools/convert_datasets/coco_stuff164k.py`` maps them).

Test protocol: mmseg 0.x ``configs/_base_/datasets/coco-stuff164k.py`` (keep-ratio resize within 2048×512, whole image).
mmseg's COCO-Stuff palette repeats colours, so a distinct generated one is used instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segformer.data.base import (
    DatasetInfo,
    Samples,
    as_palette,
    lookup_table,
    matching_files,
    pair_with_masks,
    require_folder,
    split_folder,
)
from segformer.data.classes import COCO_STUFF_CLASSES, COCO_STUFF_ID_TO_TRAIN_ID, default_palette

INFO = DatasetInfo("coco-stuff", COCO_STUFF_CLASSES, as_palette(default_palette(len(COCO_STUFF_CLASSES))))


def find_samples(root: Path, split: str) -> tuple[Samples, DatasetInfo, np.ndarray | None]:
    """``images/{train2017,val2017}/*.jpg`` with ``annotations/…/<stem>_labelTrainIds.png`` or ``<stem>.png``."""
    folder = split_folder(split, {"train": "train2017", "val": "val2017"}, "coco-stuff")
    images = require_folder(root / "images" / folder, f"COCO-Stuff images/{folder}")
    masks = require_folder(root / "annotations" / folder, f"COCO-Stuff annotations/{folder}")
    train_ids = any(masks.glob("*_labelTrainIds.png"))
    suffix = "_labelTrainIds.png" if train_ids else ".png"
    samples = pair_with_masks(matching_files(images, "*.jpg"), lambda image: masks / f"{image.stem}{suffix}")
    return samples, INFO, None if train_ids else lookup_table(COCO_STUFF_ID_TO_TRAIN_ID)

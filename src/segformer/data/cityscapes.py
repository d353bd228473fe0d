"""Cityscapes (fine annotations): 19 train ids, read from ``*_labelTrainIds.png`` or mapped from ``*_labelIds.png``.

Test protocol of the official configs (NVlabs/SegFormer ``local_configs/_base_/datasets/cityscapes_1024x1024_repeat.py``
with ``local_configs/segformer/B*/*.py``): resize to 2048×1024, sliding 1024×1024 windows with stride 768.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segformer.config import TestProtocol
from segformer.data.base import (
    DatasetInfo,
    Samples,
    lookup_table,
    matching_files,
    pair_with_masks,
    require_folder,
    split_folder,
)
from segformer.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, CITYSCAPES_PALETTE

INFO = DatasetInfo(
    "cityscapes",
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    TestProtocol(mode="slide", scale=(2048, 1024), crop=(1024, 1024), stride=(768, 768)),
)


def find_samples(root: Path, split: str) -> tuple[Samples, DatasetInfo, np.ndarray | None]:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_label*Ids.png``."""
    split = split_folder(split, {"train": "train", "val": "val", "test": "test"}, "cityscapes")
    images = require_folder(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
    labels = require_folder(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
    train_ids = any(labels.glob("*/*_gtFine_labelTrainIds.png"))
    suffix = "_gtFine_labelTrainIds.png" if train_ids else "_gtFine_labelIds.png"

    def mask_for(image: Path) -> Path:
        return labels / image.parent.name / (image.name.removesuffix("_leftImg8bit.png") + suffix)

    samples = pair_with_masks(matching_files(images, "*/*_leftImg8bit.png"), mask_for)
    return samples, INFO, None if train_ids else lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)

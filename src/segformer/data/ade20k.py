"""ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes, stored label 0 is "other".

Test protocol of the official config (NVlabs/SegFormer ``local_configs/_base_/datasets/ade20k_repeat.py``):
keep-ratio resize within 2048×512, then ``AlignedResize`` rounds both sides to multiples of 32; whole image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segformer.config import TestProtocol
from segformer.data.base import (
    REDUCE_ZERO_LABEL,
    DatasetInfo,
    Samples,
    matching_files,
    pair_with_masks,
    require_folder,
    split_folder,
)
from segformer.data.classes import ADE20K_CLASSES, ADE20K_PALETTE

INFO = DatasetInfo("ade20k", ADE20K_CLASSES, ADE20K_PALETTE, TestProtocol(size_divisor=32, reduce_zero_label=True))


def find_samples(root: Path, split: str) -> tuple[Samples, DatasetInfo, np.ndarray]:
    """``[ADEChallengeData2016/]images/{training,validation}/*.jpg`` with ``annotations/…/<stem>.png``."""
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    folder = split_folder(split, {"train": "training", "val": "validation"}, "ade20k")
    images = require_folder(base / "images" / folder, "ADE20K images/" + folder)
    masks = require_folder(base / "annotations" / folder, "ADE20K annotations/" + folder)
    samples = pair_with_masks(matching_files(images, "*.jpg"), lambda image: masks / f"{image.stem}.png")
    return samples, INFO, REDUCE_ZERO_LABEL

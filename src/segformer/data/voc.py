"""Pascal VOC 2012: 21 classes including background, split lists in ``ImageSets/Segmentation``.

``aug=True`` reads the SBD-augmented train set (``SegmentationClassAug`` and ``aug.txt``, as mmseg's
``tools/convert_datasets/voc_aug.py`` writes it). Test protocol: mmseg 0.x ``configs/_base_/datasets/pascal_voc12.py``
(keep-ratio resize within 2048×512, whole image), the default ``TestProtocol``.
"""

from __future__ import annotations

from pathlib import Path

from segformer.data.base import DatasetInfo, Samples, as_palette, pair_with_masks, require_folder
from segformer.data.classes import VOC_CLASSES, default_palette

INFO = DatasetInfo("voc", VOC_CLASSES, as_palette(default_palette(len(VOC_CLASSES))))


def find_samples(root: Path, split: str, *, aug: bool = False) -> tuple[Samples, DatasetInfo, None]:
    """``[VOCdevkit/]VOC2012/JPEGImages/<id>.jpg`` with ``SegmentationClass[Aug]/<id>.png`` for the listed ids."""
    candidates = [root / "VOC2012", root / "VOCdevkit" / "VOC2012", root]
    base = next((c for c in candidates if (c / "JPEGImages").is_dir()), None)
    if base is None:
        raise FileNotFoundError(
            f"{root}: no Pascal VOC 2012 JPEGImages folder in any of {[str(c) for c in candidates]}"
        )
    if aug and split != "train":
        raise ValueError(f"voc: aug=True selects the SBD-augmented train set; it does not apply to split {split!r}")
    list_file = base / "ImageSets" / "Segmentation" / ("aug.txt" if aug else f"{split}.txt")
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: Pascal VOC split list not found (split {split!r}, aug={aug})")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{list_file}: empty split list")
    masks = require_folder(base / ("SegmentationClassAug" if aug else "SegmentationClass"), "Pascal VOC mask")
    images = []
    for name in ids:
        image = base / "JPEGImages" / f"{name}.jpg"
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image listed in {list_file} not found")
        images.append(image)
    return pair_with_masks(images, lambda image: masks / f"{image.stem}.png"), INFO, None

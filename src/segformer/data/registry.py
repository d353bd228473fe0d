"""The supported datasets by name: ``DATASETS`` (classes, palette, official test protocol), ``canonical_name`` and
``build_dataset``, which finds a dataset's (image, mask) pairs with its family's reader.

A new format is a module beside ``ade20k.py`` … ``custom.py`` (an ``INFO`` and a ``find_samples``) and one line
in each table below. The test protocols are those of the official configs: NVlabs/SegFormer
``local_configs/_base_/datasets/ade20k_repeat.py`` and ``cityscapes_1024x1024_repeat.py`` with
``local_configs/segformer/B*/*.py``; mmseg 0.x ``configs/_base_/datasets/pascal_voc12.py`` and ``coco-stuff164k.py``.
The multi-scale ratios are the ``img_ratios`` these configs carry (commented out).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import segformer.data.ade20k as ade20k
import segformer.data.cityscapes as cityscapes
import segformer.data.coco_stuff as coco_stuff
import segformer.data.custom as custom
import segformer.data.cvat as cvat
import segformer.data.voc as voc
from segformer.data.base import DatasetInfo, SegmentationDataset

DATASETS: dict[str, DatasetInfo] = {
    "ade20k": ade20k.INFO,
    "cityscapes": cityscapes.INFO,
    "voc": voc.INFO,
    "coco-stuff": coco_stuff.INFO,
    "custom": custom.INFO,
    "cvat": cvat.INFO,
}

_READERS = {
    "ade20k": ade20k.find_samples,
    "cityscapes": cityscapes.find_samples,
    "voc": voc.find_samples,
    "coco-stuff": coco_stuff.find_samples,
    "custom": custom.find_samples,
    "cvat": cvat.find_samples,
}

_ALIASES = {
    "ade": "ade20k",
    "ade-20k": "ade20k",
    "adechallengedata2016": "ade20k",
    "city": "cityscapes",
    "pascal-voc": "voc",
    "voc2012": "voc",
    "pascal-voc12": "voc",
    "pascal-voc2012": "voc",
    "cocostuff": "coco-stuff",
    "coco-stuff164k": "coco-stuff",
    "coco-stuff-164k": "coco-stuff",
    "folder": "custom",
}


def canonical_name(name: str) -> str:
    """The ``DATASETS`` key of a dataset name: case-insensitive, "_"/" " read as "-", aliases resolved."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def build_dataset(
    name: str, root: str | Path, split: str = "val", transform: Callable | None = None, **options
) -> SegmentationDataset:
    """Find the (image, mask) pairs of a dataset as distributed.

    Args:
        name: "ade20k", "cityscapes", "voc", "coco-stuff", "custom" or "cvat" (case-insensitive, aliases accepted).
        root: the dataset folder (see the README's "Datasets" section for each layout).
        split: "train" or "val" (Cityscapes also "test"; VOC any ``ImageSets/Segmentation/<split>.txt``;
            custom any sub-folder of ``images/``; cvat any subset of ``ImageSets/Segmentation``).
        transform: callable ``(image, mask) -> anything`` applied by ``__getitem__``.
        **options: voc: ``aug``; custom: ``binary``, ``reduce_zero_label``, ``classes``.

    Raises:
        ValueError: unknown dataset, split or option, empty dataset.
        FileNotFoundError: missing root or expected sub-folder, image without mask; the message names the path.
    """
    key = canonical_name(name)
    reader = _READERS[key]
    accepted = [p.name for p in inspect.signature(reader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown}; accepted: {accepted or 'none'}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {key} dataset root not found")
    samples, info, label_map = reader(root, split, **options)
    return SegmentationDataset(samples, info, label_map, transform)

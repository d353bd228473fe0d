"""Datasets: readers for ADE20K, Cityscapes, Pascal VOC, COCO-Stuff and custom folders, plus a synthetic set.

One module per dataset family (``ade20k``, ``cityscapes``, ``voc``, ``coco_stuff``, ``custom``) on a shared
``base`` (``DatasetInfo``, the dataset classes, pair finding) and ``reading`` (image and mask files);
``registry`` names them (``DATASETS``, ``build_dataset``).
"""

from segformer.data.base import BaseSegmentationDataset, DatasetInfo, SegmentationDataset
from segformer.data.classes import default_palette
from segformer.data.reading import IMAGE_SUFFIXES, read_image, read_mask
from segformer.data.registry import DATASETS, build_dataset, canonical_name
from segformer.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset, generate_scene, write_synthetic

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "SYNTHETIC_CLASSES",
    "BaseSegmentationDataset",
    "DatasetInfo",
    "SegmentationDataset",
    "SyntheticDataset",
    "build_dataset",
    "canonical_name",
    "default_palette",
    "generate_scene",
    "read_image",
    "read_mask",
    "write_synthetic",
]

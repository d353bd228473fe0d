"""Datasets: readers for ADE20K, Cityscapes, Pascal VOC, COCO-Stuff and custom folders, plus a synthetic set."""

from segformer.data.classes import default_palette
from segformer.data.datasets import (
    DATASETS,
    BaseSegmentationDataset,
    DatasetInfo,
    SegmentationDataset,
    build_dataset,
    canonical_name,
    read_image,
    read_mask,
)
from segformer.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset, generate_scene, write_synthetic

__all__ = [
    "DATASETS",
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

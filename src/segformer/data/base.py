"""What every dataset reader shares: the ``DatasetInfo`` table type, label lookup tables, the dataset classes and
the helpers that find (image, mask) file pairs.

Every dataset is a list of (image, mask) file pairs plus a 256-entry lookup table that maps the stored mask
values to train ids (255 = ignore); each family's module (``ade20k``, ``cityscapes``, ``voc``, ``coco_stuff``,
``custom``) finds its pairs and ``segformer.data.registry`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.data.mask_coding import MaskCoding, read_coded_mask
from segformer.data.reading import read_image

Palette = tuple[tuple[int, int, int], ...]
Samples = list[tuple[Path, Path]]  # (image file, mask file) pairs


@dataclass(frozen=True)
class DatasetInfo:
    """Classes, palette and official test protocol of one dataset.

    Attributes:
        name: canonical dataset name.
        classes: class names; empty for "custom" (read from the folder's ``classes.txt``).
        palette: one (r, g, b) per class; empty for "custom".
        protocol: the official test protocol (see ``docs/PROTOCOL.md``); its ``reduce_zero_label`` says
            whether stored label 0 is "other" (-> 255) and every other id shifts down by one.
        masks: how the mask files hold class ids (``mask_coding.MaskCoding``: colour or index masks, set by
            the custom dataset from its folder); None: as stored (``read_mask``).
    """

    name: str
    classes: tuple[str, ...]
    palette: Palette
    protocol: TestProtocol = TestProtocol()
    masks: MaskCoding | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def as_palette(array: np.ndarray) -> Palette:
    """A K×3 array of colours as a ``Palette`` of (r, g, b) tuples."""
    return tuple((int(r), int(g), int(b)) for r, g, b in array)


def lookup_table(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry uint8 table sending each stored value in ``mapping`` to its train id, others to ``default``."""
    table = np.full(256, default, dtype=np.uint8)
    for stored, train_id in mapping.items():
        table[stored] = train_id
    return table


# 0 ("other") -> 255, k -> k - 1, 255 stays 255 (mmseg's reduce_zero_label, without uint8 wrap-around).
REDUCE_ZERO_LABEL = lookup_table({k: k - 1 for k in range(1, 255)})
# Binary masks: 0/1 or 0/255 -> 0/1; any value > 127 counts as foreground.
BINARY = lookup_table({0: 0, 1: 1} | {k: 1 for k in range(128, 256)}, default=0)


# ----------------------------------------------------------------------------------------------------- dataset


class BaseSegmentationDataset(Dataset):
    """What every dataset offers: ``info``, ``name``, ``classes``, ``palette`` (K×3 uint8), ``num_classes``,
    ``ignore_index``, ``load(i)`` and ``image_path(i)``.

    ``dataset[i]`` returns ``transform(image, mask)`` when a transform is given, otherwise the ``H × W × 3``
    uint8 RGB image and the ``H × W`` uint8 mask of class ids (255 = ignore).

    Args:
        info: the dataset's classes, palette and test protocol.
        transform: callable ``(image, mask) -> anything``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, info: DatasetInfo, transform: Callable | None = None) -> None:
        if len(info.palette) != len(info.classes):
            raise ValueError(f"{info.name}: {len(info.classes)} classes but {len(info.palette)} palette colours")
        self.info = info
        self.name = info.name
        self.classes = list(info.classes)
        self.palette = np.array(info.palette, dtype=np.uint8).reshape(-1, 3)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, index: int) -> Path:
        """The file of sample ``index`` (a virtual path for data held in memory)."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed image and mask of sample ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


class SegmentationDataset(BaseSegmentationDataset):
    """(image, mask) file pairs read with ``read_image`` / ``read_mask`` (or ``info.masks``) and mapped to train ids.

    Args:
        samples: (image path, mask path) pairs.
        info: the dataset's classes, palette and test protocol.
        label_map: 256-entry uint8 table applied to the stored mask values; None keeps them.
        transform: callable ``(image, mask) -> anything``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        info: DatasetInfo,
        label_map: np.ndarray | None = None,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(info, transform)
        self.samples = [(Path(image), Path(mask)) for image, mask in samples]
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index][0]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed image and mapped mask of sample ``index``."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = read_coded_mask(mask_path, self.info.masks)
        if self.label_map is not None:
            mask = self.label_map[mask]
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}×{image.shape[0]}; expected the same size"
            )
        invalid = (mask >= self.num_classes) & (mask != self.ignore_index)
        if invalid.any():
            values = np.unique(mask[invalid]).tolist()
            raise ValueError(
                f"{mask_path}: label values {values} (after the {self.name} label mapping) are not class ids "
                f"0..{self.num_classes - 1} nor the ignore value {self.ignore_index}"
            )
        return image, mask


# --------------------------------------------------------------------------------------------- finding pairs


def require_folder(path: Path, what: str) -> Path:
    """``path`` itself; FileNotFoundError naming it (as ``what``) when it is not a folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found")
    return path


def split_folder(split: str, folders: dict[str, str], dataset: str) -> str:
    """The folder name of ``split`` (a key of ``folders``, or one of its values); ValueError for another."""
    if split in folders:
        return folders[split]
    if split in folders.values():
        return split
    raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(folders)}")


def matching_files(folder: Path, pattern: str, recursive: bool = False) -> list[Path]:
    """Sorted files matching ``pattern``; ValueError naming the folder when there are none."""
    files = sorted(p for p in (folder.rglob(pattern) if recursive else folder.glob(pattern)) if p.is_file())
    if not files:
        raise ValueError(f"{folder}: empty dataset folder, no files matching {pattern!r}")
    return files


def pair_with_masks(images: list[Path], mask_for: Callable[[Path], Path]) -> Samples:
    """(image, ``mask_for(image)``) for every image; FileNotFoundError naming the first image without its mask."""
    samples = []
    for image in images:
        mask = mask_for(image)
        if not mask.is_file():
            raise FileNotFoundError(f"{image}: image without mask; expected {mask}")
        samples.append((image, mask))
    return samples

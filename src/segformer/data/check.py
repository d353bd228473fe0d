"""Find every problem of a dataset before training: unreadable files, size mismatches, labels that are no class.

``check_dataset`` reads every (image, mask) pair of a ``SegmentationDataset`` the way training will, but
cheaply: masks are decoded (their values are what is checked and counted), images only as far as needed.
Full check: JPEGs are decoded at 1/8 scale (``Image.draft``, the DCT's own downscaling, which still reads
every byte of the file and fails on a truncated one), other formats fully. ``fast=True`` reads only the
image headers (size and EXIF orientation). Masks are read as the dataset reads them (a custom folder's RGB
colour masks through the colours of its ``classes.txt``, ``segformer.data.mask_coding``) and get the dataset's
label mapping (e.g. ADE20K's reduce_zero_label) before their values are checked against the class ids and the
ignore value 255.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segformer.constants import IGNORE_INDEX
from segformer.data.mask_coding import MaskCoding, read_coded_mask
from segformer.progress import progress_bar

EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
MAX_LISTED = 20  # problems listed by DataReport.format(); DataReport.problems keeps them all


@dataclass
class DataReport:
    """What ``check_dataset`` found.

    Attributes:
        name: dataset name (and split, when known).
        classes: class names.
        num_images: pairs checked.
        counts: labelled pixels per class (after the label mapping).
        images_per_class: number of masks in which each class appears.
        ignored: pixels with the ignore value 255.
        problems: one line per problem, each naming the file.
        masks: how the masks are read (``MaskCoding.describe()``), "" when the dataset does not say.
    """

    name: str
    classes: list[str]
    counts: np.ndarray
    images_per_class: np.ndarray
    num_images: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)
    masks: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_listed: int = MAX_LISTED) -> str:
        """A table of the classes (pixel share, images), then the problems, the first ``max_listed`` of them."""
        total = int(self.counts.sum()) + self.ignored
        width = max([5, *(len(name) for name in self.classes)])
        lines = [
            f"{self.name}: {self.num_images} image/mask pairs, {len(self.classes)} classes, "
            f"{_share(self.ignored, total)} of the pixels ignored (255)",
            *([f"masks: {self.masks}"] if self.masks else []),
            f"{'id':>4}  {'class':<{width}}  {'pixels':>8}  {'images':>7}",
        ]
        for k, name in enumerate(self.classes):
            lines.append(
                f"{k:>4}  {name:<{width}}  {_share(int(self.counts[k]), total):>8}  {int(self.images_per_class[k]):>7}"
            )
        absent = [name for k, name in enumerate(self.classes) if self.images_per_class[k] == 0]
        if absent and self.num_images:
            lines.append(f"classes in no mask: {', '.join(absent)}")
        if not self.problems:
            lines.append("no problems found")
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} problem(s):")
        lines += [f"  {problem}" for problem in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  … and {len(self.problems) - max_listed} more")
        return "\n".join(lines)

    def raise_if_broken(self) -> None:
        """Raise ValueError naming the first bad file and the number of problems, when there is any."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problem(s); run `segformer check-data` for the list)"
            raise ValueError(f"{self.name}: {self.problems[0]}{more if len(self.problems) > 1 else ''}")


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.2f}%" if total else "-"


def image_size(path: Path, decode: bool) -> tuple[int, int]:
    """(height, width) of an image as ``read_image`` returns it (EXIF orientation applied).

    Reads the header only, and with ``decode`` also the pixels (JPEG at 1/8 scale), to catch truncated files.
    """
    with Image.open(path) as image:
        width, height = image.size
        exif = image.getexif() if image.format != "PNG" else Image.Exif()  # a PNG's getexif decodes the image
        if image.format == "PNG" and "exif" in image.info:
            exif.load(image.info["exif"])
        if decode:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    if exif.get(EXIF_ORIENTATION) in _TRANSPOSED:
        height, width = width, height
    return height, width


def histogram(mask: np.ndarray) -> np.ndarray:
    """Pixels of each value 0..255 of a uint8 mask (int64), with OpenCV's histogram, 2x faster than np.bincount.

    OpenCV returns float32 counts, exact below 2**24; the mask is counted in blocks of fewer pixels.
    """
    rows = max(1, (1 << 23) // max(1, mask.shape[1]))
    counts = np.zeros(256, np.int64)
    for start in range(0, mask.shape[0], rows):
        block = np.ascontiguousarray(mask[start : start + rows])
        counts += cv2.calcHist([block], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


def check_pair(
    image_path: Path,
    mask_path: Path,
    label_map: np.ndarray | None,
    num_classes: int,
    decode: bool,
    coding: MaskCoding | None = None,
):
    """(pixel counts per stored value 0..255, problem line or None) of one image/mask pair, its mask read through
    ``coding`` (the dataset's ``info.masks``) when given."""
    try:
        height, width = image_size(image_path, decode)
    except FileNotFoundError:
        return None, f"{image_path}: image file not found"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"{image_path}: cannot read image file: corrupt or not an image ({e})"
    try:
        mask = read_coded_mask(mask_path, coding)
    except (OSError, ValueError) as e:
        return None, str(e)
    if label_map is not None:
        mask = label_map[mask]
    if mask.shape != (height, width):
        return (
            None,
            f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {image_path} is {width}×{height}",
        )
    counts = histogram(mask)
    bad = [v for v in np.flatnonzero(counts).tolist() if num_classes <= v != IGNORE_INDEX]
    if bad:
        return None, f"{mask_path}: label values {bad} are not class ids 0..{num_classes - 1} nor the ignore value 255"
    return counts, None


def check_dataset(dataset, *, progress: bool = True, fast: bool = False, workers: int | None = None) -> DataReport:
    """Check every (image, mask) pair of ``dataset``; return the report instead of stopping at the first problem.

    Args:
        dataset: a ``SegmentationDataset`` (``samples``, ``label_map``, ``classes``, ``info.masks``).
        progress: show a progress bar (``segformer.progress.progress_bar``).
        fast: read image headers only (sizes), not their pixels; masks are always read in full.
        workers: reading threads (default: the CPU count, at most 8); Pillow decodes without the GIL.
    """
    num_classes = len(dataset.classes)
    zeros = np.zeros(num_classes, np.int64)
    report = DataReport(getattr(dataset, "name", type(dataset).__name__), list(dataset.classes), zeros, zeros.copy())
    workers = workers or min(8, os.cpu_count() or 1)
    label_map = getattr(dataset, "label_map", None)
    coding = getattr(getattr(dataset, "info", None), "masks", None)
    report.masks = coding.describe() if coding is not None else ""
    jobs = [(Path(image), Path(mask), label_map, num_classes, not fast, coding) for image, mask in dataset.samples]
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda job: check_pair(*job), jobs)
        for counts, problem in progress_bar(
            results, total=len(jobs), desc=f"check {report.name}", unit="pair", disable=not progress
        ):
            report.num_images += 1
            if problem is not None:
                report.problems.append(problem)
                continue
            report.counts += counts[:num_classes]
            report.images_per_class += counts[:num_classes] > 0
            report.ignored += int(counts[IGNORE_INDEX])
    return report

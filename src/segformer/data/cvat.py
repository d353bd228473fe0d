"""CVAT's "Segmentation mask 1.1" export: read as the ``cvat`` dataset, or its ``labelmap.txt`` as a ``classes.txt``.

The export is datumaro's Pascal VOC layout (CVAT's ``cvat/apps/dataset_manager/formats/mask.py`` writes it with
datumaro's ``voc_format`` plugin): colour masks in ``SegmentationClass/`` and a ``labelmap.txt`` naming each
label's colour, as datumaro's ``write_label_map`` writes it::

    # label:color_rgb:parts:actions
    background:0,0,0::
    car:255,0,0::

``labelmap_classes`` reads the labels in file order (class id = line order, the first label 0, as datumaro's
``parse_label_map`` numbers them) and ``write_labelmap_classes`` writes them as ``name r g b`` lines, so the
colour masks read through the colours of ``classes.txt``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from segformer.data.base import DatasetInfo, Samples, as_palette, pair_with_masks, require_folder
from segformer.data.classes_writer import classes_file_text
from segformer.data.mask_coding import folder_coding
from segformer.data.reading import IMAGE_SUFFIXES
from segformer.fileio import atomic_write

LABELMAP_FORMAT = "expected 'name:r,g,b:parts:actions' lines (CVAT's labelmap.txt), '#' starting a comment line"


def labelmap_classes(path: str | Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The label names and colours of a CVAT ``labelmap.txt``, in file order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and line, for a line without a name or an ``r,g,b`` colour of three
            integers 0-255, a colour given to two labels, or a file without labels.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: CVAT labelmap file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); {LABELMAP_FORMAT}") from None
    names: list[str] = []
    colours: dict[tuple[int, int, int], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        name, channels = fields[0].strip(), fields[1].split(",") if len(fields) > 1 else []
        where = f"{path}:{number}"
        if not name:
            raise ValueError(f"{where}: no label name before ':'; {LABELMAP_FORMAT}")
        if len(channels) != 3 or not all(c.strip().isdigit() and int(c) <= 255 for c in channels):
            raise ValueError(f"{where}: label {name!r} has no colour r,g,b of integers 0-255; {LABELMAP_FORMAT}")
        colour = tuple(int(c) for c in channels)
        if colour in colours:
            raise ValueError(f"{where}: colour {colour} is also that of line {colours[colour]}; expected one per label")
        colours[colour] = number
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no labels; {LABELMAP_FORMAT}")
    return tuple(names), tuple(colours)


def write_labelmap_classes(labelmap: str | Path, classes_file: str | Path) -> tuple[str, ...]:
    """Write the labels of a CVAT ``labelmap.txt`` as a ``classes.txt`` (``name r g b`` lines), atomically.

    Returns:
        The class names, class id 0 first.

    Raises:
        ValueError: as ``labelmap_classes``, or naming the line of a label name ``classes.txt`` cannot hold
            (a word that is a plain number, a ``#``, a name given twice).
    """
    names, palette = labelmap_classes(labelmap)
    origins = [f"{labelmap}: label {name!r}" for name in names]
    text = classes_file_text(names, palette, origins)
    atomic_write(classes_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return names


# --------------------------------------------------------------------------------------------- the export as a dataset

INFO = DatasetInfo("cvat", (), ())  # classes and palette come from each export's labelmap.txt


def find_samples(root: Path, split: str) -> tuple[Samples, DatasetInfo, None]:
    """The (image, colour mask) pairs of a CVAT "Segmentation mask 1.1" export as it unpacks.

    ``root`` holds ``labelmap.txt``, ``ImageSets/Segmentation/<split>.txt`` (CVAT names its subsets, "default"
    without any), ``SegmentationClass/<id>.png`` colour masks and, when exported with images, ``JPEGImages/<id>.*``.
    The masks read through the labelmap's colours (``segformer.data.mask_coding``; class id = labelmap line order).
    """
    labelmap = root / "labelmap.txt"
    names, palette = labelmap_classes(labelmap)
    lists = require_folder(root / "ImageSets" / "Segmentation", "CVAT export split list")
    list_file = lists / f"{split}.txt"
    if not list_file.is_file():
        subsets = sorted(p.stem for p in lists.glob("*.txt"))
        raise FileNotFoundError(
            f"{list_file}: no CVAT subset {split!r}; this export has {', '.join(subsets) or 'none'}"
        )
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{list_file}: empty subset list")
    image_folder = require_folder(root / "JPEGImages", "CVAT export image (export with 'Save images')")
    images = []
    for name in ids:
        found = [
            image_folder / f"{name}{suffix}"
            for suffix in IMAGE_SUFFIXES
            if (image_folder / f"{name}{suffix}").is_file()
        ]
        if not found:
            raise FileNotFoundError(f"{image_folder / name}.*: image listed in {list_file} not found")
        images.append(found[0])
    masks = require_folder(root / "SegmentationClass", "CVAT export class mask")
    samples = pair_with_masks(images, lambda image: masks / f"{image.stem}.png")
    coding, names, palette = folder_coding([mask for _, mask in samples], names, palette, str(labelmap))
    info = dataclasses.replace(INFO, classes=names, palette=as_palette(np.asarray(palette, np.uint8)), masks=coding)
    return samples, info, None

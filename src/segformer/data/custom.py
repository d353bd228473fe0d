"""A custom folder: ``images/<split>/…`` and ``masks/<split>/….png`` paired by relative path and stem, with a
``classes.txt`` (``name [r g b]`` per line).

Masks hold class ids (palette or grayscale PNGs; ``binary=True``: 0/255 or 0/1 → 0/1; ``reduce_zero_label=True``:
0 → ignore, others − 1), or are RGB colour masks read through the colours of ``classes.txt`` (a line named
``ignore`` gives the ignored colour), as ``segformer.data.mask_coding`` describes; the first mask of the split
says which. Without a split folder, images directly in ``images/`` serve every split. The test protocol is the
default ``TestProtocol`` (keep-ratio resize within 2048×512, whole image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segformer.data.base import (
    BINARY,
    REDUCE_ZERO_LABEL,
    DatasetInfo,
    Palette,
    Samples,
    as_palette,
    pair_with_masks,
    require_folder,
)
from segformer.data.classes import default_palette, read_classes_file
from segformer.data.mask_coding import folder_coding
from segformer.data.reading import IMAGE_SUFFIXES

INFO = DatasetInfo("custom", (), ())  # classes and palette come from each folder's classes.txt


def find_samples(
    root: Path,
    split: str,
    *,
    binary: bool = False,
    reduce_zero_label: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[Samples, DatasetInfo, np.ndarray | None]:
    """The (image, mask) pairs of ``root/images[/<split>]``, their classes and the label mapping asked for."""
    if binary and reduce_zero_label:
        raise ValueError("custom: binary=True and reduce_zero_label=True cannot be combined")
    image_root = require_folder(root / "images", "custom dataset images")
    mask_root = require_folder(root / "masks", "custom dataset masks")
    if (image_root / split).is_dir():
        image_root, mask_root = image_root / split, require_folder(mask_root / split, f"custom dataset masks/{split}")
        candidates = image_root.rglob("*")
    elif any(p.suffix.lower() in IMAGE_SUFFIXES for p in image_root.iterdir() if p.is_file()):
        candidates = image_root.iterdir()  # images directly in ROOT/images serve every split
    else:
        raise FileNotFoundError(
            f"{image_root / split}: custom dataset split folder not found (and {image_root} holds no images)"
        )
    images = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{image_root}: empty dataset folder, no images ({' '.join(IMAGE_SUFFIXES)})")
    stems: dict[Path, Path] = {}
    for image in images:
        key = image.relative_to(image_root).with_suffix("")
        if key in stems:
            raise ValueError(f"{image} and {stems[key]}: two images with the same stem; expected one image per mask")
        stems[key] = image
    samples = pair_with_masks(images, lambda image: mask_root / image.relative_to(image_root).with_suffix(".png"))
    names, palette = _class_list(root, classes, binary)
    source = "the classes option" if classes is not None else str(root / "classes.txt")
    coding, names, palette = folder_coding([mask for _, mask in samples], names, palette, source)
    if coding.kind == "colour" and (binary or reduce_zero_label):
        raise ValueError(
            f"custom: {'binary' if binary else 'reduce_zero_label'}=True is for class-index masks, but "
            f"{coding.reference} is an RGB colour mask (read through the colours of {source}; a line named "
            "`ignore` gives the ignored colour)"
        )
    info = dataclasses.replace(
        INFO,
        classes=names,
        palette=palette or as_palette(default_palette(len(names))),
        protocol=INFO.protocol.replace(reduce_zero_label=reduce_zero_label),
        masks=coding,
    )
    label_map = BINARY if binary else REDUCE_ZERO_LABEL if reduce_zero_label else None
    return samples, info, label_map


def _class_list(root: Path, classes: Sequence[str] | None, binary: bool) -> tuple[tuple[str, ...], Palette | None]:
    """Class names (and palette, when ``classes.txt`` gives one): ``classes``, else ``classes.txt``, else binary's."""
    classes_file = root / "classes.txt"
    if classes is not None:
        return tuple(classes), None
    if classes_file.is_file():
        return read_classes_file(classes_file)
    if binary:
        return ("background", "foreground"), None
    raise FileNotFoundError(
        f"{classes_file}: class list not found; write one class name per line (optionally followed by r g b), "
        "or pass classes=[...] or binary=True"
    )

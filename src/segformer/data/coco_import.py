"""``import_coco``: a COCO instances or panoptic file and its images, written as a ``custom`` dataset.

Writes ``OUT/images/<split>/<file_name>`` (copied or hard-linked; names and sub-folders kept),
``OUT/masks/<split>/<file_name stem>.png`` (palette PNGs of class ids, 255 = ignore) and ``OUT/classes.txt``
(``name r g b`` lines), each file atomically; ``build_dataset("custom", OUT, split)`` reads the result. The
masks follow the rules of ``segformer.data.coco``. Before the first file is written, the JSON is checked in
full, every image (and panoptic PNG) must exist, and a ``classes.txt`` already in OUT must list the same
classes, so that a val file can be imported next to its train file; ``classes.txt`` is written last.
"""

from __future__ import annotations

import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.data.classes import read_classes_file
from segformer.data.classes_writer import classes_file_text
from segformer.data.coco import (
    CROWD_RULES,
    ClassTable,
    CocoFile,
    CocoImage,
    coco_classes,
    instance_mask,
    panoptic_mask,
    read_coco,
)
from segformer.fileio import atomic_write
from segformer.progress import progress_bar

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ImportSummary:
    """What ``import_coco`` wrote.

    Attributes:
        out: the dataset folder.
        panoptic: whether the file was a panoptic one.
        split_sizes: split -> number of images written to it.
        annotations: instance annotations painted, or panoptic segments listed.
        crowd: of those, the crowd ones.
        skipped: instance annotations without a segmentation, not painted.
        classes: the class names written to ``classes.txt``.
        unlabeled: the value of pixels no annotation covers, 0 (background) or 255 (ignored).
    """

    out: Path
    panoptic: bool
    split_sizes: dict[str, int]
    annotations: int
    crowd: int
    skipped: int
    classes: tuple[str, ...]
    unlabeled: int


def assign_splits(images: Sequence[CocoImage], split: str = "train", val_fraction: float | None = None) -> dict:
    """Image id -> split folder: all to ``split``, or with ``val_fraction`` that share (at least one image) to
    "val" and the rest to "train", chosen by the CRC-32 of the file name, so an image keeps its split when
    others are added to the file.

    Raises:
        ValueError: for a split that is not a plain folder name, a fraction outside (0, 1) or one that
            leaves no training image.
    """
    if val_fraction is None:
        if not _SPLIT_NAME.fullmatch(split) or split in (".", ".."):
            raise ValueError(f"split {split!r}: expected a plain folder name such as train or val")
        return {image.id: split for image in images}
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction {val_fraction}: expected a number between 0 and 1 (exclusive)")
    count = max(1, round(val_fraction * len(images)))
    if count >= len(images):
        raise ValueError(f"val fraction {val_fraction} of {len(images)} images leaves no image for training")
    ranked = sorted(images, key=lambda image: (zlib.crc32(image.file_name.encode()), image.file_name))
    val = {image.id for image in ranked[:count]}
    return {image.id: "val" if image.id in val else "train" for image in images}


def _sources(coco: CocoFile, images_dir: Path, panoptic_dir: Path | None) -> dict[int, tuple[Path, Path | None]]:
    """Image id -> (image file, panoptic PNG or None); FileNotFoundError naming the missing files otherwise."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: images folder not found")
    if panoptic_dir is not None and not panoptic_dir.is_dir():
        raise FileNotFoundError(
            f"{panoptic_dir}: folder of the panoptic PNGs not found (by default, the JSON's path without .json)"
        )
    sources, missing = {}, []
    for image in coco.images:
        source = images_dir / image.file_name
        annotation = coco.annotations[image.id]
        png = panoptic_dir / annotation[0]["file_name"] if panoptic_dir is not None and annotation else None
        missing += [
            f"{path} (image id {image.id})" for path in (source, png) if path is not None and not path.is_file()
        ]
        sources[image.id] = (source, png)
    if missing:
        shown = "; ".join(missing[:5]) + (f"; … ({len(missing)} in all)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{coco.path}: {len(missing)} of the files it names are not there: {shown}")
    return sources


def _check_size(path: Path, image: CocoImage, json_path: Path) -> None:
    """The image's size as ``read_image`` gives it (EXIF orientation applied) is the one the JSON gives."""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            if picture.getexif().get(0x0112, 1) in _TRANSPOSED:
                width, height = height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read the image file ({e})") from None
    if (width, height) != (image.width, image.height):
        raise ValueError(
            f"{path}: the image is {width}×{height} (after its EXIF orientation), but {json_path} gives "
            f"{image.width}×{image.height} for image id {image.id}; expected the same size"
        )


def _existing_classes_agree(path: Path, classes: ClassTable, json_path: Path) -> bool:
    """True when ``path`` exists and lists exactly ``classes``; ValueError when it lists other classes."""
    if not path.is_file():
        return False
    names, palette = read_classes_file(path)
    if names == classes.names and palette in (None, classes.palette):
        return True
    what = "colours" if names == classes.names else "classes"
    raise ValueError(
        f"{path}: lists other {what} ({_preview(names)}) than {json_path} gives ({_preview(classes.names)}); "
        "import into a new dataset folder"
    )


def _preview(names: Sequence[str], most: int = 4) -> str:
    return f"{len(names)}: " + ", ".join(names[:most]) + (", …" if len(names) > most else "")


def _place(source: Path, target: Path, link: bool) -> None:
    """Copy (or hard-link) ``source`` to ``target`` atomically; nothing to do when they are the same file."""
    if target.exists() and os.path.samefile(source, target):
        return
    if not link:
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OSError(e.errno, f"{target}: cannot hard-link {source} ({e.strerror}); copy instead (no --link)") from e


def _save_mask(label: np.ndarray, path: Path, palette: bytes) -> None:
    picture = Image.fromarray(label)
    picture.putpalette(palette)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _mask(coco: CocoFile, image: CocoImage, png: Path | None, classes: ClassTable, crowd: str) -> np.ndarray:
    annotations = coco.annotations[image.id]
    if not coco.panoptic:
        return instance_mask(image, annotations, classes, crowd)
    if annotations:
        return panoptic_mask(png, image, annotations[0], classes, crowd)
    return np.full((image.height, image.width), classes.unlabeled, dtype=np.uint8)  # no panoptic annotation


def _counts(coco: CocoFile) -> tuple[int, int]:
    """(instance annotations painted or panoptic segments listed, how many of them are crowds)."""
    entries = [entry for image in coco.images for entry in coco.annotations[image.id]]
    if coco.panoptic:
        entries = [segment for entry in entries for segment in entry["segments_info"]]
    return len(entries), sum(bool(entry.get("iscrowd", 0)) for entry in entries)


def import_coco(
    json_path: str | Path,
    images_dir: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    val_fraction: float | None = None,
    panoptic_masks: str | Path | None = None,
    unlabeled: str | None = None,
    background_name: str = "background",
    crowd: str = "label",
    link: bool = False,
    progress: bool = True,
) -> ImportSummary:
    """Write a COCO instances or panoptic file and its images as a ``custom`` dataset (module docstring).

    Args:
        json_path: the COCO JSON file.
        images_dir: the folder the images' ``file_name`` paths are relative to.
        out: the dataset folder (created; an existing one gets the split added).
        split: the split folder every image goes to, unless ``val_fraction`` is given.
        val_fraction: the share of the images that goes to "val" (the rest to "train").
        panoptic_masks: a panoptic file's PNG folder (default: the JSON's path without its suffix).
        unlabeled: "background" (class 0) or "ignore" (255) for pixels no annotation covers (default:
            "background" for instances, "ignore" for panoptic files).
        background_name: the name of the background class.
        crowd: "label" (crowd regions get their category) or "ignore" (255).
        link: hard-link the images instead of copying them.
        progress: show a progress bar.

    Raises:
        FileNotFoundError / ValueError: naming the file, key, annotation or image at fault (nothing is
            written for an error found before the first image; see the module docstring).
    """
    if crowd not in CROWD_RULES:
        raise ValueError(f"crowd must be one of {', '.join(CROWD_RULES)}, got {crowd!r}")
    coco = read_coco(json_path)
    classes = coco_classes(coco, unlabeled or ("ignore" if coco.panoptic else "background"), background_name)
    classes_text = classes_file_text(classes.names, classes.palette, classes.origins)
    splits = assign_splits(coco.images, split, val_fraction)
    out = Path(out)
    panoptic_dir = Path(panoptic_masks or coco.path.with_suffix("")) if coco.panoptic else None
    sources = _sources(coco, Path(images_dir), panoptic_dir)
    written_classes = _existing_classes_agree(out / "classes.txt", classes, coco.path)
    palette = np.zeros((256, 3), dtype=np.uint8)  # all 256 entries: a shorter palette lets PNG store fewer bits
    palette[: len(classes.palette)] = classes.palette
    for image in progress_bar(coco.images, desc="import-coco", unit="image", quiet=not progress):
        source, png = sources[image.id]
        _check_size(source, image, coco.path)
        label = _mask(coco, image, png, classes, crowd)
        _place(source, out / "images" / splits[image.id] / image.file_name, link)
        _save_mask(label, (out / "masks" / splits[image.id] / image.file_name).with_suffix(".png"), palette.tobytes())
    if not written_classes:
        atomic_write(out / "classes.txt", lambda tmp: Path(tmp).write_text(classes_text, encoding="utf-8"))
    painted, crowds = _counts(coco)
    sizes = dict(sorted(Counter(splits.values()).items()))
    return ImportSummary(out, coco.panoptic, sizes, painted, crowds, coco.skipped, classes.names, classes.unlabeled)

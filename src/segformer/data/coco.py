"""COCO annotation files (instances or panoptic): read, checked, and turned into semantic masks of class ids.

``read_coco`` checks a file's structure and every annotation before anything is written; an error names the
file, the key and the annotation (its ``id``, else its place in ``annotations``). The rules by which the
annotations of an image become one class id per pixel (the README's "Datasets" section repeats them):

* **Classes.** The categories, in increasing ``id`` order, get contiguous class ids: COCO's ids 1, 5, 90 become
  1, 2, 3 after a background class 0, or 0, 1, 2 without one. Every listed category becomes a class, annotated
  or not. Colours: ``default_palette`` (Pascal VOC's colour map), so a background class 0 is black.
* **Unlabeled pixels** (covered by no annotation; panoptic id 0, VOID) get class 0 "background"
  (``unlabeled="background"``, the default for instance files) or 255, ignored in training
  (``unlabeled="ignore"``, the default for panoptic files, whose segments are meant to cover the image;
  detectron2's ``datasets/prepare_panoptic_fpn.py`` leaves VOID at 255 too).
* **Instances** are rasterised with pycocotools exactly as ``COCO.annToRLE`` / ``annToMask`` do: polygons by
  ``frPyObjects`` and ``merge``, uncompressed RLE by ``frPyObjects``, compressed RLE as it is, then ``decode``.
* **Overlaps.** An image's annotations are painted in decreasing order of area (pixels of the decoded mask;
  equal areas in file order), so where instances overlap the smaller one wins: a cup on a table stays a cup,
  whatever the order of the file. (cocoapi's ``cocostuffhelper.cocoSegmentationToSegmentationMap`` paints in
  file order instead, the last annotation winning.)
* **Crowd** regions (``iscrowd: 1``) get their category like any instance (``crowd="label"``, as COCO panoptic
  keeps crowd segments in their category and detectron2's panoptic-to-semantic conversion labels them), or
  255 (``crowd="ignore"``); either way they take part in the area order like the others.
* **Panoptic** PNGs hold segment ids ``R + 256·G + 256²·B`` (COCO panoptic format); each segment listed in the
  image's ``segments_info`` gets its category's class, things and stuff alike (``isthing`` does not matter
  for semantic masks); a non-zero id that ``segments_info`` does not list is an error.
* Annotations without a segmentation (missing or empty: boxes only) are skipped and counted; an image
  without annotations gets a mask of unlabeled pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from segformer.constants import IGNORE_INDEX
from segformer.data import read_image
from segformer.data.classes import default_palette

try:
    from pycocotools import mask as coco_mask
except ImportError:  # an ImportError without a name: the CLI prints this hint as it is
    raise ImportError("reading COCO annotations needs pycocotools: pip install 'segformer[coco]'") from None

UNLABELED_RULES = ("background", "ignore")
CROWD_RULES = ("label", "ignore")
COCO_KEYS = "a COCO file is a JSON object with the lists 'images', 'annotations' and 'categories'"


@dataclass(frozen=True)
class CocoImage:
    """One entry of ``images``: its ``id``, ``file_name`` (a relative path, "/"-separated) and size."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class CocoFile:
    """A checked COCO file.

    Attributes:
        path: the JSON file.
        panoptic: True for a panoptic file (annotations with ``segments_info``), False for instances.
        images: the images in file order.
        categories: (id, name) in increasing id order.
        annotations: image id -> its annotations with a segmentation in file order (instances), or its one
            annotation (panoptic: ``file_name`` of the PNG, ``segments_info``); empty for an unannotated image.
        skipped: instance annotations without a segmentation (boxes only).
    """

    path: Path
    panoptic: bool
    images: tuple[CocoImage, ...]
    categories: tuple[tuple[int, str], ...]
    annotations: dict[int, list[dict]]
    skipped: int = 0


@dataclass(frozen=True)
class ClassTable:
    """The classes a COCO file's categories become (see the module docstring).

    Attributes:
        names: class names, class id 0 first.
        palette: one (r, g, b) per class.
        origins: where each name comes from, for error messages.
        class_of: category id -> class id.
        unlabeled: the value of pixels no annotation covers: 0 (background) or 255 (ignored).
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    origins: tuple[str, ...]
    class_of: dict[int, int]
    unlabeled: int


# ----------------------------------------------------------------------------------------------- field checks


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return _integer(value) and value >= 1


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _get(entry: object, key: str, check: Callable[[object], bool], expected: str, where: str):
    """``entry[key]`` when ``entry`` is a JSON object holding a ``key`` that passes ``check``; ValueError naming
    ``where`` and the key otherwise."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: no key {key!r} ({expected})")
    value = entry[key]
    if not check(value):
        raise ValueError(f"{where}: key {key!r} is {json.dumps(value)[:60]}; expected {expected}")
    return value


def _id_list(ids: Iterable[int], most: int = 10) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:most])) + (f" … ({len(ids)} in all)" if len(ids) > most else "")


# ---------------------------------------------------------------------------------------------------- reading


def read_coco(path: str | Path) -> CocoFile:
    """Read and check a COCO instances or panoptic JSON file (the kind is told by ``segments_info``).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file, the key and the image, category or annotation, for anything that is not
            COCO: a missing list, an annotation naming an unknown image or category, a polygon of fewer than 3
            points, an RLE whose size or counts do not fit its image, a repeated id or file name.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: COCO annotation file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e}); {COCO_KEYS}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the JSON holds a {type(data).__name__}; {COCO_KEYS}")
    for key in ("images", "annotations", "categories"):
        _get(data, key, lambda value: isinstance(value, list), f"a list; {COCO_KEYS}", str(path))
    images = _read_images(data["images"], path)
    categories = _read_categories(data["categories"], path)
    entries = data["annotations"]
    panoptic = any(isinstance(entry, dict) and "segments_info" in entry for entry in entries)
    reader = _read_panoptic if panoptic else _read_instances
    annotations, skipped = reader(entries, {image.id: image for image in images}, dict(categories), path)
    return CocoFile(path, panoptic, images, categories, annotations, skipped)


def _read_images(entries: list, path: Path) -> tuple[CocoImage, ...]:
    images: dict[int, CocoImage] = {}
    masks: dict[str, int] = {}  # mask path (file name without suffix) -> image id
    for index, entry in enumerate(entries):
        image_id = _get(entry, "id", _integer, "an integer image id", f"{path}: images[{index}]")
        where = f"{path}: image id {image_id}"
        file_name = _get(entry, "file_name", lambda v: isinstance(v, str) and v.strip(), "a file name", where)
        height = _get(entry, "height", _positive, "the height in pixels, a whole number ≥ 1", where)
        width = _get(entry, "width", _positive, "the width in pixels, a whole number ≥ 1", where)
        relative = PurePosixPath(file_name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{where}: file_name {file_name!r} is not a relative path inside the images folder")
        if image_id in images:
            raise ValueError(f"{where}: listed twice in 'images' (the second time at images[{index}])")
        stem = str(relative.with_suffix(""))
        if stem in masks:
            raise ValueError(
                f"{where}: file_name {file_name!r} and that of image id {masks[stem]} give the same mask "
                f"{stem}.png; expected one image per file name stem"
            )
        masks[stem] = image_id
        images[image_id] = CocoImage(image_id, str(relative), height, width)
    if not images:
        raise ValueError(f"{path}: 'images' is empty; expected at least one image")
    return tuple(images.values())


def _read_categories(entries: list, path: Path) -> tuple[tuple[int, str], ...]:
    names: dict[int, str] = {}
    for index, entry in enumerate(entries):
        category_id = _get(entry, "id", _integer, "an integer category id", f"{path}: categories[{index}]")
        where = f"{path}: category id {category_id}"
        names_it = _get(entry, "name", lambda v: isinstance(v, str), "the category's name", where)
        if category_id in names:
            raise ValueError(f"{where}: listed twice in 'categories' (the second time at categories[{index}])")
        names[category_id] = names_it
    if not names:
        raise ValueError(f"{path}: 'categories' is empty; expected at least one category")
    return tuple(sorted(names.items()))


def _check_reference(entry: dict, categories: dict, where: str) -> None:
    """The ``category_id`` (and ``iscrowd``) of an annotation or segment name a category (and are 0/1)."""
    category_id = _get(entry, "category_id", _integer, "an integer category id", where)
    if category_id not in categories:
        raise ValueError(
            f"{where}: key 'category_id' is {category_id}, which names no category in 'categories' "
            f"(ids {_id_list(categories)})"
        )
    if entry.get("iscrowd", 0) not in (0, 1):
        raise ValueError(f"{where}: key 'iscrowd' is {json.dumps(entry['iscrowd'])[:60]}; expected 0 or 1")


def _image_of(entry: object, images: dict, where: str) -> CocoImage:
    image_id = _get(entry, "image_id", _integer, "an integer image id", where)
    if image_id not in images:
        raise ValueError(f"{where}: key 'image_id' is {image_id}, which names no image in 'images'")
    return images[image_id]


def _read_instances(entries: list, images: dict, categories: dict, path: Path) -> tuple[dict, int]:
    annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
    skipped = 0
    for index, entry in enumerate(entries):
        named = isinstance(entry, dict) and "id" in entry
        where = (
            f"{path}: annotation id {entry['id']} (annotations[{index}])" if named else f"{path}: annotations[{index}]"
        )
        image = _image_of(entry, images, where)
        _check_reference(entry, categories, where)
        segmentation = entry.get("segmentation")
        if segmentation is None or segmentation == []:
            skipped += 1
            continue
        _check_segmentation(segmentation, image, where)
        annotations[image.id].append(entry)
    return annotations, skipped


def _check_segmentation(segmentation: object, image: CocoImage, where: str) -> None:
    """Polygons of at least 3 points, or an RLE (counts a list or COCO's compressed string) of the image's size."""
    if isinstance(segmentation, list):
        for part, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(_number(v) for v in polygon):
                raise ValueError(
                    f"{where}: key 'segmentation' part {part} is not a list of numbers; expected polygons "
                    "[[x1, y1, x2, y2, …], …] or an RLE {'size': [h, w], 'counts': …}"
                )
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(
                    f"{where}: key 'segmentation' part {part} has {len(polygon)} coordinates; expected a polygon "
                    "of at least 3 points (x, y pairs)"
                )
        return
    rle = f"{where}: key 'segmentation'"
    size = _get(segmentation, "size", lambda v: isinstance(v, list), "[height, width] of an RLE", rle)
    if size != [image.height, image.width]:
        raise ValueError(
            f"{rle}: RLE size {size}; expected the image's [height, width] [{image.height}, {image.width}]"
        )
    counts = _get(segmentation, "counts", lambda v: isinstance(v, list | str), "RLE counts (list or string)", rle)
    if isinstance(counts, str):
        runs = _compressed_counts(counts)
        if runs is None:
            raise ValueError(f"{rle}: 'counts' is not a compressed RLE string (as pycocotools.mask.encode writes)")
    else:
        if not all(_integer(run) and run >= 0 for run in counts):
            raise ValueError(f"{rle}: 'counts' holds values that are not whole numbers ≥ 0")
        runs = counts
    if sum(runs) != image.height * image.width:
        raise ValueError(
            f"{rle}: RLE 'counts' cover {sum(runs)} pixels; expected height × width = {image.height * image.width}"
        )


def _compressed_counts(text: str) -> list[int] | None:
    """The runs of a compressed RLE string, decoded as cocoapi's ``rleFrString`` (common/maskApi.c) does: 5 bits
    per character from "0" (48), 0x20 = more characters follow, 0x10 in the last = negative, runs after the
    second stored as the difference to the run two before. None for a string that is not one."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                return None
            char = ord(text[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position, shift = position + 1, shift + 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs


def _read_panoptic(entries: list, images: dict, categories: dict, path: Path) -> tuple[dict, int]:
    annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for index, entry in enumerate(entries):
        image = _image_of(entry, images, f"{path}: annotations[{index}]")
        where = f"{path}: annotation of image id {image.id} (annotations[{index}])"
        if annotations[image.id]:
            raise ValueError(f"{where}: a second annotation of this image; expected one per image")
        _get(entry, "file_name", lambda v: isinstance(v, str) and v.strip(), "the PNG's file name", where)
        segments = _get(entry, "segments_info", lambda v: isinstance(v, list), "a list of segments", where)
        seen: set[int] = set()
        for number, segment in enumerate(segments):
            segment_id = _get(segment, "id", _positive, "a segment id ≥ 1", f"{where}: segments_info[{number}]")
            _check_reference(segment, categories, f"{where}: segment id {segment_id}")
            if segment_id in seen:
                raise ValueError(f"{where}: segment id {segment_id} listed twice in 'segments_info'")
            seen.add(segment_id)
        annotations[image.id].append(entry)
    return annotations, 0


# ---------------------------------------------------------------------------------------------- classes, masks


def coco_classes(coco: CocoFile, unlabeled: str = "background", background_name: str = "background") -> ClassTable:
    """The classes of ``coco``'s categories (see the module docstring); with ``unlabeled="background"`` a class
    ``background_name`` comes first.

    Raises:
        ValueError: for an unknown ``unlabeled``, a category named like the background class, or more than 255
            classes (class ids are stored in 8 bits, 255 meaning ignore).
    """
    if unlabeled not in UNLABELED_RULES:
        raise ValueError(f"unlabeled must be one of {', '.join(UNLABELED_RULES)}, got {unlabeled!r}")
    names, origins = [], []
    if unlabeled == "background":
        for category_id, name in coco.categories:
            if " ".join(name.split()) == " ".join(background_name.split()):
                raise ValueError(
                    f"{coco.path}: category id {category_id} is named {name!r}, the name of the background class of "
                    "unlabeled pixels; give the background another name (--background-name) or leave unlabeled "
                    "pixels unclassified (--unlabeled ignore)"
                )
        names.append(background_name)
        origins.append("the background class")
    first = len(names)
    names += [" ".join(name.split()) for _, name in coco.categories]  # as classes.txt reads them back
    origins += [f"{coco.path}: category id {category_id}" for category_id, _ in coco.categories]
    if len(names) > IGNORE_INDEX:
        raise ValueError(
            f"{coco.path}: {len(names)} classes; at most {IGNORE_INDEX} fit class ids 0..254 (255 = ignore)"
        )
    palette = tuple((int(r), int(g), int(b)) for r, g, b in default_palette(len(names)))
    class_of = {category_id: first + k for k, (category_id, _) in enumerate(coco.categories)}
    return ClassTable(tuple(names), palette, tuple(origins), class_of, 0 if unlabeled == "background" else IGNORE_INDEX)


def _value(entry: dict, classes: ClassTable, crowd: str) -> int:
    """The class id an annotation or segment paints: its category's, or 255 for a crowd with ``crowd="ignore"``."""
    return IGNORE_INDEX if crowd == "ignore" and entry.get("iscrowd", 0) else classes.class_of[entry["category_id"]]


def annotation_rle(segmentation: list | dict, image: CocoImage) -> dict:
    """The RLE of a checked segmentation, as pycocotools' ``COCO.annToRLE`` makes it."""
    if isinstance(segmentation, list):
        return coco_mask.merge(coco_mask.frPyObjects(segmentation, image.height, image.width))
    if isinstance(segmentation["counts"], list):
        return coco_mask.frPyObjects(segmentation, image.height, image.width)
    return segmentation


def instance_mask(
    image: CocoImage, annotations: Sequence[dict], classes: ClassTable, crowd: str = "label"
) -> np.ndarray:
    """The ``H × W`` uint8 class-id mask of an image's checked instance annotations, larger areas painted first."""
    rles = [annotation_rle(entry["segmentation"], image) for entry in annotations]
    areas = coco_mask.area(rles) if rles else []
    label = np.full((image.height, image.width), classes.unlabeled, dtype=np.uint8)
    for index in sorted(range(len(rles)), key=lambda i: -int(areas[i])):  # stable: equal areas in file order
        label[coco_mask.decode(rles[index]).astype(bool)] = _value(annotations[index], classes, crowd)
    return label


def panoptic_mask(
    png: Path, image: CocoImage, annotation: dict, classes: ClassTable, crowd: str = "label"
) -> np.ndarray:
    """The ``H × W`` uint8 class-id mask of an image's panoptic PNG and its checked ``segments_info``.

    Raises:
        ValueError: naming the PNG, when its size is not the image's or it holds a segment id (with a pixel
            where it occurs) that ``segments_info`` does not list.
    """
    rgb = read_image(png).astype(np.int64)
    if rgb.shape[:2] != (image.height, image.width):
        raise ValueError(
            f"{png}: panoptic PNG is {rgb.shape[1]}×{rgb.shape[0]}; expected the size of image id {image.id}, "
            f"{image.width}×{image.height}"
        )
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    found, inverse = np.unique(ids, return_inverse=True)
    segments = {segment["id"]: segment for segment in annotation["segments_info"]}
    values = np.empty(len(found), dtype=np.uint8)
    for k, segment_id in enumerate(found.tolist()):
        if segment_id == 0:
            values[k] = classes.unlabeled
        elif segment_id in segments:
            values[k] = _value(segments[segment_id], classes, crowd)
        else:
            y, x = (int(v) for v in np.argwhere(ids == segment_id)[0])
            raise ValueError(
                f"{png}: segment id {segment_id} (colour {tuple(rgb[y, x].tolist())}) at pixel x={x}, y={y} is not "
                f"in the 'segments_info' of image id {image.id}"
            )
    return values[inverse.reshape(ids.shape)]

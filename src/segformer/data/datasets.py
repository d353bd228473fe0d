"""Semantic segmentation datasets read from disk exactly as they are distributed.

Every dataset is a list of (image, mask) file pairs plus a 256-entry lookup table that maps the stored mask
values to train ids (255 = ignore). ``build_dataset`` finds the pairs of ADE20K, Cityscapes, Pascal VOC 2012,
COCO-Stuff 164k or a custom folder; ``DATASETS`` holds each one's classes, palette and official test protocol.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_ID_TO_TRAIN_ID,
    VOC_CLASSES,
    default_palette,
    read_classes_file,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

Palette = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class DatasetInfo:
    """Classes, palette and official test protocol of one dataset.

    Attributes:
        name: canonical dataset name.
        classes: class names; empty for "custom" (read from the folder's ``classes.txt``).
        palette: one (r, g, b) per class; empty for "custom".
        protocol: the official test protocol (see ``docs/PROTOCOL.md``); its ``reduce_zero_label`` says
            whether stored label 0 is "other" (-> 255) and every other id shifts down by one.
    """

    name: str
    classes: tuple[str, ...]
    palette: Palette
    protocol: TestProtocol = TestProtocol()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _palette(array: np.ndarray) -> Palette:
    return tuple((int(r), int(g), int(b)) for r, g, b in array)


# Test pipelines and test_cfg of the official configs: NVlabs/SegFormer local_configs/_base_/datasets/ade20k_repeat.py
# (AlignedResize, size_divisor 32) and cityscapes_1024x1024_repeat.py with local_configs/segformer/B*/*.py (slide
# 1024x1024, stride 768); mmseg 0.x configs/_base_/datasets/pascal_voc12.py and coco-stuff164k.py (plain Resize,
# whole). The multi-scale ratios are the img_ratios these configs carry (commented out).
DATASETS: dict[str, DatasetInfo] = {
    "ade20k": DatasetInfo(
        "ade20k", ADE20K_CLASSES, ADE20K_PALETTE, TestProtocol(size_divisor=32, reduce_zero_label=True)
    ),
    "cityscapes": DatasetInfo(
        "cityscapes",
        CITYSCAPES_CLASSES,
        CITYSCAPES_PALETTE,
        TestProtocol(mode="slide", scale=(2048, 1024), crop=(1024, 1024), stride=(768, 768)),
    ),
    "voc": DatasetInfo("voc", VOC_CLASSES, _palette(default_palette(len(VOC_CLASSES)))),
    # mmseg's COCO-Stuff palette repeats colours, so a distinct generated one is used instead.
    "coco-stuff": DatasetInfo("coco-stuff", COCO_STUFF_CLASSES, _palette(default_palette(len(COCO_STUFF_CLASSES)))),
    "custom": DatasetInfo("custom", (), ()),
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


# ----------------------------------------------------------------------------------------------- file reading


def _open(path: Path, kind: str) -> Image.Image:
    """Open and decode an image file, raising errors that name it."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {kind} file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read {kind} file: corrupt or not an image ({e})") from None
    return image


def read_image(source: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Read an image file, a PIL image or an array as RGB: the one image reader of training, eval and predict.

    Files and PIL images get their EXIF orientation applied (a PIL image given is not modified). Grayscale,
    palette, RGBA (alpha dropped, as OpenCV does) and 16-bit images (scaled to 8 bits, round(v / 257)) are
    converted to RGB; arrays may be H×W, H×W×1, H×W×3 (RGB) or H×W×4 (RGBA), uint8 or 16-bit.

    Returns:
        ``H × W × 3`` uint8 array (an H×W×3 uint8 array is returned as it is).

    Raises:
        FileNotFoundError / ValueError: naming the file, when it is missing or not a readable image; ValueError
        for an array of another shape or dtype.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)  # a transposed copy
    else:
        image = _open(Path(source), "image")
        ImageOps.exif_transpose(image, in_place=True)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(image))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype in (np.uint16, np.int32):  # 16-bit values (Pillow reads 16-bit PNGs as int32 "I")
        array = np.clip(np.rint(array.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise ValueError(
            f"image array: expected H×W, H×W×1, H×W×3 (RGB) or H×W×4 (RGBA), uint8 or 16-bit; "
            f"got shape {array.shape}, dtype {array.dtype}"
        )
    if channels == 1:
        return np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    return np.ascontiguousarray(array if channels == 3 else array[:, :, :3])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as stored, without any colour conversion (a palette PNG gives its indices).

    Single-channel 8/16-bit masks give their values; RGB(A) masks are accepted only when their colour channels
    are equal (a grayscale mask saved as RGB).

    Returns:
        ``H × W`` uint8 array of stored label values.

    Raises:
        FileNotFoundError / ValueError: naming the file, when it is missing, unreadable or not a class-id mask.
    """
    path = Path(path)
    image = _open(path, "mask")
    mask = np.array(image)
    if image.mode in ("RGB", "RGBA", "LA"):
        channels = mask[..., :3] if image.mode != "LA" else mask[..., :1]
        if not (channels == channels[..., :1]).all():
            raise ValueError(
                f"{path}: colour-coded {image.mode} mask; expected class ids in one channel (a palette or "
                "grayscale PNG). Convert colour masks to class-index PNGs first."
            )
        mask = channels[..., 0]
    elif image.mode not in ("P", "L", "1", *_SIXTEEN_BIT_MODES):
        raise ValueError(f"{path}: unsupported mask mode {image.mode!r}; expected a palette or grayscale PNG")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"{path}: mask values outside 0..255 (range {mask.min()}..{mask.max()})")
        mask = mask.astype(np.uint8)
    return mask


# ------------------------------------------------------------------------------------------------- label maps


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
    """(image, mask) file pairs read with ``read_image`` / ``read_mask`` and mapped to train ids.

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
        mask = read_mask(mask_path)
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


# ----------------------------------------------------------------------------------------------------- readers


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found")
    return path


def _split_folder(split: str, folders: dict[str, str], dataset: str) -> str:
    if split in folders:
        return folders[split]
    if split in folders.values():
        return split
    raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(folders)}")


def _files(folder: Path, pattern: str, recursive: bool = False) -> list[Path]:
    """Sorted files matching ``pattern``; ValueError naming the folder when there are none."""
    files = sorted(p for p in (folder.rglob(pattern) if recursive else folder.glob(pattern)) if p.is_file())
    if not files:
        raise ValueError(f"{folder}: empty dataset folder, no files matching {pattern!r}")
    return files


def _pair(images: list[Path], mask_for: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    samples = []
    for image in images:
        mask = mask_for(image)
        if not mask.is_file():
            raise FileNotFoundError(f"{image}: image without mask; expected {mask}")
        samples.append((image, mask))
    return samples


def _ade20k(root: Path, split: str) -> tuple[list[tuple[Path, Path]], DatasetInfo, np.ndarray]:
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    folder = _split_folder(split, {"train": "training", "val": "validation"}, "ade20k")
    images = _folder(base / "images" / folder, "ADE20K images/" + folder)
    masks = _folder(base / "annotations" / folder, "ADE20K annotations/" + folder)
    samples = _pair(_files(images, "*.jpg"), lambda image: masks / f"{image.stem}.png")
    return samples, DATASETS["ade20k"], REDUCE_ZERO_LABEL


def _cityscapes(root: Path, split: str) -> tuple[list[tuple[Path, Path]], DatasetInfo, np.ndarray | None]:
    split = _split_folder(split, {"train": "train", "val": "val", "test": "test"}, "cityscapes")
    images = _folder(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
    labels = _folder(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
    train_ids = any(labels.glob("*/*_gtFine_labelTrainIds.png"))
    suffix = "_gtFine_labelTrainIds.png" if train_ids else "_gtFine_labelIds.png"

    def mask_for(image: Path) -> Path:
        return labels / image.parent.name / (image.name.removesuffix("_leftImg8bit.png") + suffix)

    samples = _pair(_files(images, "*/*_leftImg8bit.png"), mask_for)
    return samples, DATASETS["cityscapes"], None if train_ids else lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)


def _voc(root: Path, split: str, *, aug: bool = False) -> tuple[list[tuple[Path, Path]], DatasetInfo, None]:
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
    masks = _folder(base / ("SegmentationClassAug" if aug else "SegmentationClass"), "Pascal VOC mask")
    images = []
    for name in ids:
        image = base / "JPEGImages" / f"{name}.jpg"
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image listed in {list_file} not found")
        images.append(image)
    return _pair(images, lambda image: masks / f"{image.stem}.png"), DATASETS["voc"], None


def _coco_stuff(root: Path, split: str) -> tuple[list[tuple[Path, Path]], DatasetInfo, np.ndarray | None]:
    folder = _split_folder(split, {"train": "train2017", "val": "val2017"}, "coco-stuff")
    images = _folder(root / "images" / folder, f"COCO-Stuff images/{folder}")
    masks = _folder(root / "annotations" / folder, f"COCO-Stuff annotations/{folder}")
    train_ids = any(masks.glob("*_labelTrainIds.png"))
    suffix = "_labelTrainIds.png" if train_ids else ".png"
    samples = _pair(_files(images, "*.jpg"), lambda image: masks / f"{image.stem}{suffix}")
    return samples, DATASETS["coco-stuff"], None if train_ids else lookup_table(COCO_STUFF_ID_TO_TRAIN_ID)


def _custom(
    root: Path,
    split: str,
    *,
    binary: bool = False,
    reduce_zero_label: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[list[tuple[Path, Path]], DatasetInfo, np.ndarray | None]:
    if binary and reduce_zero_label:
        raise ValueError("custom: binary=True and reduce_zero_label=True cannot be combined")
    image_root = _folder(root / "images", "custom dataset images")
    mask_root = _folder(root / "masks", "custom dataset masks")
    if (image_root / split).is_dir():
        image_root, mask_root = image_root / split, _folder(mask_root / split, f"custom dataset masks/{split}")
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
    samples = _pair(images, lambda image: mask_root / image.relative_to(image_root).with_suffix(".png"))

    classes_file = root / "classes.txt"
    palette = None
    if classes is not None:
        names = tuple(classes)
    elif classes_file.is_file():
        names, palette = read_classes_file(classes_file)
    elif binary:
        names = ("background", "foreground")
    else:
        raise FileNotFoundError(
            f"{classes_file}: class list not found; write one class name per line (optionally followed by r g b), "
            "or pass classes=[...] or binary=True"
        )
    info = dataclasses.replace(
        DATASETS["custom"],
        classes=names,
        palette=palette or _palette(default_palette(len(names))),
        protocol=DATASETS["custom"].protocol.replace(reduce_zero_label=reduce_zero_label),
    )
    label_map = BINARY if binary else REDUCE_ZERO_LABEL if reduce_zero_label else None
    return samples, info, label_map


_READERS = {"ade20k": _ade20k, "cityscapes": _cityscapes, "voc": _voc, "coco-stuff": _coco_stuff, "custom": _custom}


def build_dataset(
    name: str, root: str | Path, split: str = "val", transform: Callable | None = None, **options
) -> SegmentationDataset:
    """Find the (image, mask) pairs of a dataset as distributed.

    Args:
        name: "ade20k", "cityscapes", "voc", "coco-stuff" or "custom" (case-insensitive, aliases accepted).
        root: the dataset folder (see the README's "Datasets" section for each layout).
        split: "train" or "val" (Cityscapes also "test"; VOC any ``ImageSets/Segmentation/<split>.txt``;
            custom any sub-folder of ``images/``).
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

"""How the mask files of a folder hold their class ids: an index per pixel, or the colour of the pixel's class.

* **Class-index masks**: palette ("P") PNGs such as Pascal VOC's ``SegmentationClass`` (the indices are read, not
  the palette's colours) and grayscale ("L", 16-bit "I") PNGs; a pixel's value is its class id, 255 = ignore.
* **Colour masks**: RGB / RGBA PNGs (alpha is not read), as CVAT's "Segmentation mask 1.1" export and many
  annotation tools write them. A pixel's colour is that of its class's line in ``classes.txt`` (``name r g b``,
  class id = line order); a line named ``ignore`` (or ``_ignore_``) is no class: its colour reads as 255
  (ignored) and the lines after it keep counting from the previous class. Every colour in a mask must be on a
  line; another is an error naming the file, the colour and a pixel where it occurs. mmseg itself reads only
  index masks and converts colour labels beforehand (e.g. ``tools/dataset_converters/potsdam.py``, which maps
  each RGB colour of its table to the class index); here they are read as they are, with the same table lookup.

A folder is of the kind of its first mask's PIL mode (RGB/RGBA: colour when ``classes.txt`` gives colours;
P: palette; L, I, 1: grayscale); a mask of the other kind in it is an error naming that mask and the first.
Without colours in ``classes.txt``, RGB masks are read by ``read_mask`` (equal channels: a grayscale mask saved
as RGB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.constants import IGNORE_INDEX
from segformer.data.reading import _open, read_mask

Colour = tuple[int, int, int]
IGNORE_CLASS_NAMES = ("ignore", "_ignore_")  # a classes.txt line of this name gives the ignored colour
COLOUR_MODES = ("RGB", "RGBA")
KINDS = {
    "colour": "RGB colour masks",
    "palette": "class-index masks (palette PNGs)",
    "grayscale": "class-index masks (grayscale)",
    "gray-rgb": "class-index masks (grayscale saved as RGB: classes.txt gives no colours to read colour masks by)",
}


def pack(rgb: np.ndarray) -> np.ndarray:
    """``r·2¹⁶ + g·2⁸ + b`` of a ``… × 3`` uint8 array of colours, as int32: one number per colour."""
    keys = rgb[..., 0].astype(np.int32)
    keys <<= 8
    keys |= rgb[..., 1]
    keys <<= 8
    keys |= rgb[..., 2]
    return keys


def perfect_hash_modulus(keys: np.ndarray, batch: int = 256) -> int:
    """The smallest ``m >= len(keys)`` under which the distinct ``keys`` leave distinct remainders.

    ``key % m`` then indexes a table of ``m`` slots with one key at most per slot: a lookup of every pixel's colour
    costs one remainder and two gathers from a small table, where a binary search (``np.searchsorted``) costs a
    branch per bit. ``m = max - min + 1`` always works; palettes need far fewer (a few times ``len(keys)²`` at most
    for random colours), tried ``batch`` candidates at a time.
    """
    keys = np.asarray(keys, dtype=np.int64)
    for start in range(len(keys), int(keys.max() - keys.min()) + 2, batch):
        moduli = np.arange(start, start + batch, dtype=np.int64)
        remainders = np.sort(keys[:, None] % moduli[None, :], axis=0)
        distinct = (np.diff(remainders, axis=0) != 0).all(axis=0)
        if distinct.any():
            return int(moduli[np.argmax(distinct)])
    return int(keys.max() - keys.min()) + 1  # one key only


def _header_mode(path: Path) -> str | None:
    """The PIL mode of an image file from its header; None when it cannot be opened (the reader then says why)."""
    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def kind_of_mode(mode: str, colours: bool) -> str:
    """The kind of a mask of PIL ``mode`` ("colour", "palette", "grayscale" or "gray-rgb")."""
    if mode in COLOUR_MODES:
        return "colour" if colours else "gray-rgb"
    return "palette" if mode == "P" else "grayscale"


@dataclass(frozen=True)
class MaskCoding:
    """The way the masks of one folder are read into class ids.

    Attributes:
        kind: "colour", "palette", "grayscale" or "gray-rgb" (``KINDS``).
        reference: the mask the kind was seen in (the folder's first readable mask).
        colours: colour masks: every colour a mask may hold ...
        ids: ... and its class id (255 = ignore).
        source: where the colours come from (the ``classes.txt`` file), for messages.
    """

    kind: str
    reference: Path
    colours: tuple[Colour, ...] = ()
    ids: tuple[int, ...] = ()
    source: str = "classes.txt"

    def describe(self) -> str:
        """One line saying how the folder is read, e.g. "RGB colour masks, read through the 6 colours of …"."""
        if self.kind != "colour":
            return KINDS[self.kind]
        ignored = sum(i == IGNORE_INDEX for i in self.ids)
        text = f"{KINDS['colour']}, read through the {len(self.colours)} colours of {self.source}"
        return text + (f" ({ignored} of them ignored: 255)" if ignored else "")

    def read(self, path: str | Path) -> np.ndarray:
        """The ``H × W`` uint8 class ids (255 = ignore) of one mask file of the folder.

        Raises:
            FileNotFoundError / ValueError: naming the file, when it is missing or unreadable, of the other kind
                than the folder's first mask, or holds a colour that is no class.
        """
        path = Path(path)
        mode = _header_mode(path)
        if mode is None or self.kind == "gray-rgb":
            return read_mask(path)  # reads, or names the file and what is wrong with it
        kind = kind_of_mode(mode, colours=True)
        if (kind == "colour") != (self.kind == "colour"):
            raise ValueError(
                f"{path}: {KINDS[kind]} (mode {mode}) in a folder of {KINDS[self.kind]} such as {self.reference}; "
                "expected one kind of mask per folder: RGB colour masks, or class-index masks (palette or grayscale)"
            )
        if kind != "colour":
            return read_mask(path)
        return self.decode(np.asarray(_open(path, "mask"))[..., :3], path)

    @cached_property
    def _slots(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(m, the packed colour in each of m slots or -1, its class id): the perfect hash ``colour % m``."""
        keys = pack(np.array(self.colours, dtype=np.uint8).reshape(-1, 3))
        modulus = perfect_hash_modulus(keys)
        slot_keys = np.full(modulus, -1, dtype=np.int32)
        slot_ids = np.zeros(modulus, dtype=np.uint8)
        slot_keys[keys % modulus] = keys
        slot_ids[keys % modulus] = self.ids
        return modulus, slot_keys, slot_ids

    def decode(self, rgb: np.ndarray, path: str | Path = "mask") -> np.ndarray:
        """The class ids of an ``H × W × 3`` uint8 colour mask: each pixel's packed colour looked up in the table.

        Raises:
            ValueError: naming ``path``, a colour that is no class and the first pixel (x, y) holding it.
        """
        keys = pack(rgb)
        modulus, slot_keys, slot_ids = self._slots
        slots = keys % modulus
        known = slot_keys[slots] == keys
        if not known.all():
            raise ValueError(self._unknown_colour(path, rgb, keys, known))
        return slot_ids[slots]

    def _unknown_colour(self, path: str | Path, rgb: np.ndarray, keys: np.ndarray, known: np.ndarray) -> str:
        y, x = divmod(int(np.argmin(known.ravel())), rgb.shape[1])  # the first pixel of an unknown colour
        r, g, b = (int(c) for c in rgb[y, x])
        others = len(np.unique(keys[~known])) - 1
        more = f" ({others} more unknown colour(s) in this mask)" if others else ""
        gray = " (equal channels: if the masks hold class ids, save them as grayscale PNGs)" if r == g == b else ""
        return (
            f"{path}: colour ({r}, {g}, {b}) at pixel (x={x}, y={y}) is no class of {self.source}{more}{gray}; "
            f"add a line `name {r} {g} {b}` to {self.source} or fix the mask"
        )


def read_coded_mask(path: str | Path, coding: MaskCoding | None) -> np.ndarray:
    """The class ids of a mask file: through its folder's ``coding``, or as stored (``read_mask``) without one."""
    return read_mask(path) if coding is None else coding.read(path)


def first_readable_mode(masks: Sequence[Path]) -> tuple[Path, str]:
    """The first of ``masks`` whose header opens, and its PIL mode; ValueError naming the first when none does."""
    for mask in masks:
        mode = _header_mode(mask)
        if mode is not None:
            return mask, mode
    read_mask(masks[0])  # raises, naming the file and the problem
    raise ValueError(f"{masks[0]}: cannot open the mask file")


def folder_coding(
    masks: Sequence[Path], classes: Sequence[str], palette: Sequence[Colour] | None, source: str
) -> tuple[MaskCoding, tuple[str, ...], tuple[Colour, ...] | None]:
    """How the folder of ``masks`` is read, and its classes and palette without the ``ignore`` line.

    Args:
        masks: the mask files of the folder (the first readable one sets the kind).
        classes, palette: the class lines of ``source`` (palette None when they give no colours).
        source: the ``classes.txt`` file (or option) they come from, for messages.

    Raises:
        ValueError: naming ``source``, for colour masks whose classes share a colour or that have no class
            besides ``ignore``, and for an ``ignore`` line with class-index masks (their ignore value is 255).
    """
    reference, mode = first_readable_mode(masks)
    kind = kind_of_mode(mode, colours=palette is not None)
    ignored = [name for name in classes if name.lower() in IGNORE_CLASS_NAMES]
    if kind != "colour":
        if ignored:
            raise ValueError(
                f"{source}: class {ignored[0]!r} names the ignored colour of RGB colour masks, but the masks are "
                f"{KINDS[kind]} (e.g. {reference}, mode {mode}), whose ignored pixels hold 255; remove the line"
            )
        return MaskCoding(kind, reference, source=source), tuple(classes), None if palette is None else tuple(palette)
    assert palette is not None
    seen: dict[Colour, str] = {}
    for name, colour in zip(classes, palette, strict=True):
        if colour in seen:
            raise ValueError(
                f"{source}: classes {seen[colour]!r} and {name!r} have the same colour {colour}; colour masks "
                f"(e.g. {reference}) need one colour per class"
            )
        seen[colour] = name
    kept = [(name, colour) for name, colour in zip(classes, palette, strict=True) if name not in ignored]
    if not kept:
        raise ValueError(f"{source}: no class besides {', '.join(ignored)}; expected at least one `name r g b` line")
    ids, next_id = [], 0
    for name in classes:  # class id = line order, the ignore lines left out
        ids.append(IGNORE_INDEX if name in ignored else next_id)
        next_id += name not in ignored
    coding = MaskCoding("colour", reference, tuple(palette), tuple(ids), source)
    return coding, tuple(name for name, _ in kept), tuple(colour for _, colour in kept)

"""Pictures of label maps: colour images, overlays on the photo with a legend, palette PNGs, captioned panels.

Legends and captions scale with the picture: the font is 1/32 of the picture's short side (9 to 160 px), so a
96-pixel thumbnail and a 6000×4000 photo both get a legend in proportion. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segformer.config import SegFormerConfig
from segformer.constants import IGNORE_INDEX
from segformer.data import DATASETS, default_palette
from segformer.fileio import atomic_write

FONT_FRACTION = 1 / 32  # legend and caption font size per pixel of the picture's short side
FONT_BOUNDS = (9, 160)  # smallest legible size, and a cap for huge pictures
MIN_LEGEND_ROWS = 4  # legend rows allowed even when the picture is smaller


def model_palette(config: SegFormerConfig) -> np.ndarray:
    """K×3 colours for a model's classes: its recorded palette, else that of the dataset whose classes it
    predicts, else distinct generated colours."""
    if config.palette is not None:
        return np.array(config.palette, dtype=np.uint8)
    for info in DATASETS.values():
        if info.classes and tuple(info.classes) == config.names:
            return np.array(info.palette, dtype=np.uint8)
    return default_palette(config.num_classes)


def font_size(width: int, height: int) -> int:
    """Legend/caption font size (= swatch size) in pixels for a ``width × height`` picture."""
    return int(np.clip(round(min(width, height) * FONT_FRACTION), *FONT_BOUNDS))


def save_image(picture: Image.Image, path: str | Path) -> None:
    """Write ``picture`` atomically in the format its suffix names (.png, .jpg …)."""
    path = Path(path)
    file_format = Image.registered_extensions().get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"{path}: unknown image file type {path.suffix!r}; expected .png or .jpg")
    atomic_write(path, lambda tmp: picture.save(tmp, format=file_format))


def _lookup_table(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Colour of every label value (ignored pixels black); ValueError for labels outside the palette."""
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be K×3 RGB values, got shape {palette.shape}")
    found = label[label != IGNORE_INDEX]
    top = int(found.max()) if found.size else -1
    if top >= len(palette) or (found.size and int(found.min()) < 0):
        raise ValueError(
            f"label values run from {int(found.min())} to {top}, but the palette has {len(palette)} colours"
        )
    table = np.zeros((max(len(palette), IGNORE_INDEX + 1), 3), np.uint8)
    table[: len(palette)] = palette
    return table


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 picture of ``label`` with ``palette[k]`` for class k and black for ignored pixels."""
    label = np.asarray(label)
    return _lookup_table(label, palette)[label]


def label_picture(label: np.ndarray, palette: np.ndarray) -> Image.Image:
    """``label`` as a palette ("P") picture: pixel values are class ids, shown in the palette's colours."""
    label = np.asarray(label)
    table = _lookup_table(label, palette)
    if len(table) > 256:
        raise ValueError(f"a palette PNG holds class ids up to 255, but there are {len(palette)} classes")
    picture = Image.fromarray(label.astype(np.uint8), mode="P")
    picture.putpalette(table.tobytes())
    return picture


def save_label_png(label: np.ndarray, path: str | Path, palette: np.ndarray) -> None:
    """Write ``label`` as a palette PNG (``label_picture``), atomically."""
    try:
        picture = label_picture(label, palette)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def overlay(
    image: np.ndarray | Image.Image,
    label: np.ndarray,
    palette: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
) -> Image.Image:
    """The photo with class colours blended in (weight ``alpha``) above a legend of the classes present.

    The legend lists every class found in ``label``, largest area first, as a colour swatch, the
    class name and its share of the labelled pixels. Ignored pixels keep the photo's colours.
    """
    photo = np.ascontiguousarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.uint8)
    label = np.asarray(label)
    if photo.shape[:2] != label.shape:
        raise ValueError(
            f"image is {photo.shape[1]}×{photo.shape[0]} but the label map is {label.shape[1]}×{label.shape[0]}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    blended = cv2.addWeighted(photo, 1.0 - alpha, colorize(label, palette), alpha, 0.0)  # uint8, rounded
    np.copyto(blended, photo, where=(label == IGNORE_INDEX)[..., None])

    ids, counts = np.unique(label[label != IGNORE_INDEX], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = 100 * counts / max(counts.sum(), 1)
    entries = [(int(ids[i]), f"{class_names[ids[i]]} {_percent(shares[i])}") for i in order]
    return _with_legend(Image.fromarray(blended), entries, np.asarray(palette, np.uint8))


def _percent(share: float) -> str:
    return f"{share:.1f}%" if share >= 0.05 else "<0.1%"


def _rows(widths: Sequence[int], width: int, gap: int) -> list[list[tuple[int, int]]]:
    """Entries (index, x) wrapped into rows of at most ``width`` pixels."""
    rows: list[list[tuple[int, int]]] = [[]]
    x = gap
    for index, w in enumerate(widths):
        if x + w > width - gap and rows[-1]:
            rows.append([])
            x = gap
        rows[-1].append((index, x))
        x += w + 2 * gap
    return rows


def _with_legend(picture: Image.Image, entries: list[tuple[int, str]], palette: np.ndarray) -> Image.Image:
    """``picture`` above a white strip of (class id, text) entries, wrapped into rows.

    The strip is no taller than the picture (but always has room for ``MIN_LEGEND_ROWS`` rows): entries that
    do not fit are summed up as "+N more".
    """
    size = font_size(*picture.size)
    font, gap = ImageFont.load_default(size=size), max(2, size // 2)  # Pillow >= 10.1
    line = size + gap
    max_rows = max(MIN_LEGEND_ROWS, (picture.height - gap) // line)
    measure = ImageDraw.Draw(picture)
    shown = len(entries)
    while True:
        items = entries[:shown] + ([(-1, f"+{len(entries) - shown} more")] if shown < len(entries) else [])
        widths = [size + gap // 2 + int(measure.textlength(text, font=font)) for _, text in items]
        width = max([picture.width, *(w + 2 * gap for w in widths)])
        rows = _rows(widths, width, gap)
        if len(rows) <= max_rows or shown == 0:
            break
        shown -= 1
    canvas = Image.new("RGB", (width, picture.height + len(rows) * line + gap), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = picture.height + gap + r * line
        for index, x in row:
            class_id, text = items[index]
            if class_id >= 0:
                colour = tuple(int(c) for c in palette[class_id])
                draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour, outline="black")
            draw.text((x + size + gap // 2, y + size // 2), text, fill="black", font=font, anchor="lm")
    return canvas


def panels(items: Sequence[tuple[str, Image.Image | np.ndarray]], gap: int = 8) -> Image.Image:
    """Pictures side by side on white, top-aligned, ``gap`` pixels apart, each under a centred caption.

    Example: ``panels([("truth", overlay(image, mask, ...)), ("prediction", overlay(image, pred, ...))])``.
    """
    if not items:
        raise ValueError("panels needs at least one (caption, picture) pair")
    pictures = [p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p, np.uint8)) for _, p in items]
    size = min(font_size(*p.size) for p in pictures)
    font, band = ImageFont.load_default(size=size), 2 * size
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, band + max(p.height for p in pictures)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (caption, _), picture in zip(items, pictures, strict=True):
        draw.text((x + picture.width / 2, band / 2), caption, fill="black", font=font, anchor="mm")
        canvas.paste(picture.convert("RGB"), (x, band))
        x += picture.width + gap
    return canvas

"""Pictures of label maps: colour images, overlays on the photo with a legend, palette PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segformer.constants import IGNORE_INDEX


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


def save_label_png(label: np.ndarray, path: str | Path, palette: np.ndarray) -> None:
    """Write ``label`` as a palette PNG: pixel values are class ids, shown in the palette's colours."""
    label = np.asarray(label)
    table = _lookup_table(label, palette)
    if len(table) > 256:
        raise ValueError(f"{path}: a palette PNG holds class ids up to 255, but there are {len(palette)} classes")
    picture = Image.fromarray(label.astype(np.uint8), mode="P")
    picture.putpalette(table.tobytes())
    picture.save(path)


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
    photo = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    label = np.asarray(label)
    if photo.shape[:2] != label.shape:
        raise ValueError(
            f"image is {photo.shape[1]}×{photo.shape[0]} but the label map is {label.shape[1]}×{label.shape[0]}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    colours = colorize(label, palette)
    blended = photo * (1.0 - alpha) + colours * alpha
    blended = np.where((label == IGNORE_INDEX)[..., None], photo, blended.round()).astype(np.uint8)

    ids, counts = np.unique(label[label != IGNORE_INDEX], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = 100 * counts / max(counts.sum(), 1)
    entries = [(int(ids[i]), f"{class_names[ids[i]]} {_percent(shares[i])}") for i in order]
    return _with_legend(Image.fromarray(blended), entries, np.asarray(palette, np.uint8))


def _percent(share: float) -> str:
    return f"{share:.1f}%" if share >= 0.05 else "<0.1%"


def _with_legend(picture: Image.Image, entries: list[tuple[int, str]], palette: np.ndarray) -> Image.Image:
    """``picture`` above a white strip of (class id, text) entries, wrapped into rows."""
    size = int(np.clip(picture.width / 40, 14, 40))
    font, gap = ImageFont.load_default(size=size), size // 2  # Pillow >= 10.1
    draw = ImageDraw.Draw(picture)
    widths = [size + gap // 2 + int(draw.textlength(text, font=font)) for _, text in entries]
    width = max([picture.width, *(w + 2 * gap for w in widths)])
    rows, x = [[]], gap
    for entry, w in zip(entries, widths, strict=True):
        if x + w > width - gap and rows[-1]:
            rows.append([])
            x = gap
        rows[-1].append((entry, x))
        x += w + 2 * gap
    line = size + gap
    canvas = Image.new("RGB", (width, picture.height + len(rows) * line + gap), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = picture.height + gap + r * line
        for (class_id, text), x in row:
            draw.rectangle(
                (x, y, x + size - 1, y + size - 1), fill=tuple(int(c) for c in palette[class_id]), outline="black"
            )
            draw.text((x + size + gap // 2, y + size // 2), text, fill="black", font=font, anchor="lm")
    return canvas

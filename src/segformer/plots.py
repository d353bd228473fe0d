"""Training curves as a PNG drawn with Pillow: training loss and validation mIoU against iterations.

Each panel has a title, tick values on both axes and both axis labels (the y label written upwards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from segformer.fileio import atomic_write

Series = Sequence[tuple[float, float]]
MARGIN = (78, 34, 16, 44)  # left, top, right, bottom of a panel's plotting area
AXIS, GRID, TEXT = (60, 60, 60), (225, 225, 225), (20, 20, 20)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def draw_vertical_text(image: Image.Image, centre: tuple[float, float], text: str, font: ImageFont.ImageFont) -> None:
    """``text`` written bottom to top (turned 90° anticlockwise), centred on ``centre``."""
    left, top, right, bottom = font.getbbox(text)
    strip = Image.new("RGB", (right - left + 2, bottom - top + 2), "white")
    ImageDraw.Draw(strip).text((1 - left, 1 - top), text, fill=TEXT, font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (round(centre[0] - strip.width / 2), round(centre[1] - strip.height / 2)))


def draw_panel(
    image: Image.Image,
    box: tuple[int, int, int, int],
    series: Series,
    title: str,
    y_label: str,
    colour: tuple[int, int, int],
    y_from_zero: bool = False,
) -> None:
    """Axes with ticks, grid, tick values and axis labels in ``box`` (x0, y0, x1, y1), and ``series`` as a line."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x0, y0 = box[0] + MARGIN[0], box[1] + MARGIN[1]
    x1, y1 = box[2] - MARGIN[2], box[3] - MARGIN[3]
    draw.text(((x0 + x1) / 2, box[1] + 10), title, fill=TEXT, font=font, anchor="mt")
    draw_vertical_text(image, (box[0] + 10, (y0 + y1) / 2), y_label, font)
    if not series:
        draw.rectangle((x0, y0, x1, y1), outline=AXIS)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data yet", fill=AXIS, font=font, anchor="mm")
        return
    xs, ys = [p[0] for p in series], [p[1] for p in series]
    x_ticks = nice_ticks(0, max(xs))
    y_ticks = nice_ticks(0 if y_from_zero else min(ys), max(ys))

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = x0 + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (x1 - x0)
        py = y1 - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (y1 - y0)
        return px, py

    for x in x_ticks:
        px, _ = to_pixel(x, y_ticks[0])
        draw.line((px, y0, px, y1), fill=GRID)
        draw.line((px, y1, px, y1 + 4), fill=AXIS)
        draw.text((px, y1 + 7), _label(x), fill=TEXT, font=font, anchor="mt")
    for y in y_ticks:
        _, py = to_pixel(x_ticks[0], y)
        draw.line((x0, py, x1, py), fill=GRID)
        draw.line((x0 - 4, py, x0, py), fill=AXIS)
        draw.text((x0 - 7, py), _label(y), fill=TEXT, font=font, anchor="rm")
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    draw.text(((x0 + x1) / 2, box[3] - 14), "iteration", fill=TEXT, font=font, anchor="mm")
    points = [to_pixel(x, y) for x, y in series]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    for px, py in points if len(points) <= 50 else points[-1:]:
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)


def plot_curves(records: Sequence[dict], path: str | Path, size: tuple[int, int] = (1000, 400)) -> None:
    """Write a two-panel PNG: ``loss`` and ``mIoU`` of metric records (dicts with ``iter``) against iterations."""
    loss = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    miou = [(r["iter"], r["mIoU"]) for r in records if "mIoU" in r]
    image = Image.new("RGB", size, "white")
    half = size[0] // 2
    draw_panel(image, (0, 0, half, size[1]), loss, "training loss", "loss", (31, 119, 180))
    draw_panel(image, (half, 0, size[0], size[1]), miou, "validation mIoU", "mIoU", (214, 39, 40), y_from_zero=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))

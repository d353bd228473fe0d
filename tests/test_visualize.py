"""Colour pictures, overlays with a legend of the classes present, palette PNGs."""

import numpy as np
import pytest
from PIL import Image

from segformer.plots import plot_curves
from segformer.visualize import colorize, overlay, panels, save_label_png

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 255]], np.uint8)
NAMES = ["red thing", "green thing", "blue thing", "magenta thing"]


def label_map() -> np.ndarray:
    label = np.zeros((40, 60), np.uint8)
    label[:, 30:] = 2  # class 3 (magenta) is absent
    label[:10, :10] = 1
    label[-5:, -5:] = 255  # ignored
    return label


def test_colorize_looks_up_the_palette_and_blacks_out_ignored_pixels():
    label = label_map()
    colours = colorize(label, PALETTE)
    for y, x in [(0, 0), (20, 5), (20, 40), (39, 59)]:
        expected = [0, 0, 0] if label[y, x] == 255 else PALETTE[label[y, x]]
        np.testing.assert_array_equal(colours[y, x], expected)
    with pytest.raises(ValueError, match="palette has 4 colours"):
        colorize(np.full((2, 2), 7, np.uint8), PALETTE)


def test_label_png_stores_class_ids_and_the_palette(tmp_path):
    label = label_map()
    save_label_png(label, tmp_path / "label.png", PALETTE)
    with Image.open(tmp_path / "label.png") as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.array(png), label)
        stored = np.array(png.getpalette()[: 3 * len(PALETTE)], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(stored, PALETTE)


def test_overlay_blends_colours_and_lists_only_present_classes():
    label = label_map()
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    picture = np.array(overlay(photo, label, PALETTE, NAMES, alpha=0.25))
    assert picture.shape[0] > 40 and picture.shape[1] >= 60  # a legend too wide for a small photo widens the canvas
    top = picture[:40, :60]
    expected = np.round(0.75 * photo + 0.25 * PALETTE[np.minimum(label, 3)]).astype(np.uint8)
    ignored = label == 255
    np.testing.assert_array_equal(top[~ignored], expected[~ignored])
    np.testing.assert_array_equal(top[ignored], photo[ignored])
    # legend: a swatch in each present class's exact colour, none for the absent class
    legend = picture[40:].reshape(-1, 3)
    present = {tuple(c) for c in np.unique(legend, axis=0)}
    assert {tuple(PALETTE[k]) for k in (0, 1, 2)} <= present
    assert tuple(PALETTE[3]) not in present


def legend_of(picture: np.ndarray, height: int, colour: np.ndarray) -> tuple[int, int]:
    """(legend strip height, side of the swatch's coloured inside) of an overlay of a ``height``-row photo."""
    legend = picture[height:]
    rows = np.flatnonzero((legend == colour).all(axis=2).any(axis=1))
    cols = np.flatnonzero((legend == colour).all(axis=2).any(axis=0))
    assert rows.size and rows.size == cols.size  # a square swatch
    return legend.shape[0], rows.size


@pytest.mark.parametrize(("height", "width", "font"), [(96, 96, 9), (4000, 6000, 125), (300, 200, 9), (1024, 768, 24)])
def test_legend_scales_with_the_short_side(height, width, font):
    palette = np.array([[255, 0, 0], [0, 200, 0], [0, 0, 255], [200, 0, 200], [0, 200, 200], [250, 250, 0]], np.uint8)
    label = np.zeros((height, width), np.uint8)
    for k in range(1, 6):  # six classes, class 0 the largest
        label[k * height // 12 : (k + 1) * height // 12] = k
    photo = np.zeros((height, width, 3), np.uint8)
    picture = np.array(overlay(photo, label, palette, [f"class {k}" for k in range(6)]))
    strip, swatch = legend_of(picture, height, palette[0])
    # font = swatch = 1/32 of the short side, at least 9 px; the swatch's outline takes one pixel per side
    assert font == max(9, round(min(height, width) / 32)) and swatch == font - 2
    assert strip <= height  # never taller than the photo (96 px: one entry per row, 6 rows of 13 px + gap)
    if height == 4000:
        assert 0.04 * height <= strip <= 0.08 * height  # one row of entries: legible when the photo is shrunk
        assert picture.shape[1] == width  # no wider than the photo


def test_legend_sums_up_entries_that_do_not_fit():
    label = np.arange(96 * 96, dtype=np.int32).reshape(96, 96) % 40  # 40 classes in a 96-px picture
    palette = np.random.default_rng(0).integers(0, 256, (40, 3), dtype=np.uint8)
    picture = overlay(np.zeros((96, 96, 3), np.uint8), label, palette, [f"c{k}" for k in range(40)])
    assert picture.height - 96 <= 96
    shown = sum(tuple(c) in {tuple(p) for p in np.array(picture)[96:].reshape(-1, 3)} for c in palette)
    assert 0 < shown < 40  # the rest is written as "+N more"


def test_panels_captions_and_placement():
    left = np.full((40, 50, 3), (255, 0, 0), np.uint8)
    right = np.full((30, 60, 3), (0, 0, 255), np.uint8)
    canvas = np.array(panels([("truth", left), ("prediction", Image.fromarray(right))]))
    band = 2 * 9  # caption band: twice the font size of the smaller picture (9 px, the minimum)
    assert canvas.shape == (band + 40, 50 + 8 + 60, 3)
    np.testing.assert_array_equal(canvas[band:, :50], left)
    np.testing.assert_array_equal(canvas[band : band + 30, 58:], right)
    assert (canvas[band + 30 :, 58:] == 255).all() and (canvas[:, 50:58] == 255).all()
    for x0, x1 in ((0, 50), (58, 118)):
        caption = canvas[:band, x0:x1]
        assert (caption < 128).any()  # dark caption text over each panel
        dark = np.flatnonzero((caption < 128).any(axis=(0, 2)))
        assert abs((dark[0] + dark[-1]) / 2 - (x1 - x0) / 2) <= 2  # centred
    with pytest.raises(ValueError, match="at least one"):
        panels([])


def test_curves_have_y_axis_labels_and_tick_values(tmp_path):
    records = [{"iter": i * 10, "loss": 3 / (i + 1)} for i in range(20)]
    records += [{"iter": i * 50, "mIoU": 0.1 * i} for i in range(1, 5)]
    plot_curves(records, tmp_path / "curves.png")
    picture = np.array(Image.open(tmp_path / "curves.png").convert("L"))
    for left in (0, 500):  # the two panels
        label = np.argwhere(picture[34:356, left : left + 20] < 128)
        assert label.size  # the y-axis label, written upwards: taller than wide
        assert np.ptp(label[:, 0]) > np.ptp(label[:, 1])
        ticks = picture[34:360, left + 30 : left + 71]
        assert (ticks < 128).any(axis=1).sum() >= 4 * 5  # tick values beside the axis (5 ticks, >= 5 px tall)

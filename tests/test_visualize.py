"""Colour pictures, overlays with a legend of the classes present, palette PNGs."""

import numpy as np
import pytest
from PIL import Image

from segformer.visualize import colorize, overlay, save_label_png

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

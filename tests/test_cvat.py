"""CVAT's "Segmentation mask 1.1" export read as the ``cvat`` dataset: colour masks through labelmap.txt."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segformer.data import build_dataset

LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nroad:0,0,255::\n"
COLOURS = np.array([(0, 0, 0), (250, 50, 83), (0, 0, 255)], np.uint8)


def write_export(root, ids_by_subset, rng):
    """A CVAT export as it unpacks; returns the class-id maps the masks were painted from."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "labelmap.txt").write_text(LABELMAP)
    truth = {}
    for subset, ids in ids_by_subset.items():
        (root / "ImageSets" / "Segmentation" / f"{subset}.txt").write_text("".join(f"{i}\n" for i in ids))
        for name in ids:
            ids_map = rng.integers(0, 3, (24, 32), dtype=np.uint8)
            Image.fromarray(COLOURS[ids_map]).save(root / "SegmentationClass" / f"{name}.png")
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.png")
            truth[name] = ids_map
    return truth


def test_a_cvat_export_reads_its_colour_masks_as_class_ids(tmp_path):
    truth = write_export(
        tmp_path, {"default": ["frame_000", "frame_001"], "val": ["frame_002"]}, np.random.default_rng(0)
    )
    dataset = build_dataset("cvat", tmp_path, "default")
    assert list(dataset.classes) == ["background", "car", "road"] and len(dataset) == 2
    np.testing.assert_array_equal(dataset.palette, COLOURS)
    for index, name in enumerate(["frame_000", "frame_001"]):
        image, mask = dataset[index]
        assert image.shape == (24, 32, 3)
        np.testing.assert_array_equal(mask, truth[name])
    np.testing.assert_array_equal(build_dataset("cvat", tmp_path, "val")[0][1], truth["frame_002"])


def test_a_missing_subset_names_the_subsets_the_export_has(tmp_path):
    write_export(tmp_path, {"default": ["a"]}, np.random.default_rng(1))
    with pytest.raises(FileNotFoundError, match=r"train.txt: no CVAT subset 'train'; this export has default"):
        build_dataset("cvat", tmp_path, "train")


def test_a_colour_outside_the_labelmap_names_the_mask_and_the_pixel(tmp_path):
    write_export(tmp_path, {"default": ["a"]}, np.random.default_rng(2))
    mask_path = tmp_path / "SegmentationClass" / "a.png"
    rgb = np.array(Image.open(mask_path))
    rgb[5, 7] = (9, 9, 9)
    Image.fromarray(rgb).save(mask_path)
    with pytest.raises(ValueError, match=r"a.png: colour \(9, 9, 9\) at pixel \(x=7, y=5\)"):
        build_dataset("cvat", tmp_path, "default")[0]

"""Dataset readers on tiny files written by the tests, against label mappings worked out by hand."""

import numpy as np
import pytest
from PIL import Image

from segformer.data import DATASETS, build_dataset, default_palette, read_image, read_mask

RNG = np.random.default_rng(0)


def save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def flat_image(height=4, width=6, colour=(200, 40, 90)):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


# ------------------------------------------------------------------------------------------------ image reading


def test_read_image_applies_exif_orientation(tmp_path):
    pixels = RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    for orientation, expected in [
        (1, pixels),
        (3, pixels[::-1, ::-1]),
        (6, np.rot90(pixels, -1)),
        (8, np.rot90(pixels)),
    ]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = save(tmp_path / f"o{orientation}.png", pixels, exif=exif)
        np.testing.assert_array_equal(read_image(path), expected, err_msg=f"orientation {orientation}")


def test_read_image_modes(tmp_path):
    gray = np.array([[0, 10, 255], [128, 7, 99]], dtype=np.uint8)
    np.testing.assert_array_equal(read_image(save(tmp_path / "g.png", gray)), np.stack([gray] * 3, axis=2))

    sixteen = np.array([[0, 65535, 300], [257 * 100, 32896, 1000]], dtype=np.uint16)
    path = save(tmp_path / "g16.png", sixteen)
    assert Image.open(path).mode.startswith("I")
    expected = np.array([[0, 255, 1], [100, 128, 4]], dtype=np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(read_image(path), np.stack([expected] * 3, axis=2))

    rgba = RNG.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(save(tmp_path / "a.png", rgba)), rgba[..., :3])

    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette_image = Image.fromarray(indices)
    palette_image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    palette_image.save(tmp_path / "p.png")
    colours = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), colours[indices])


def test_read_image_and_mask_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        read_image(corrupt)
    truncated = tmp_path / "truncated.png"
    save(tmp_path / "full.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.png"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    colour_mask = save(tmp_path / "colour.png", RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="colour.png.*colour-coded"):
        read_mask(colour_mask)


# ------------------------------------------------------------------------------------------------------ ADE20K


def test_ade20k_reduces_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    stored = np.array([[0, 1, 2], [150, 149, 0]], dtype=np.uint8)
    for folder in ("validation", "training"):
        save(base / "images" / folder / f"ADE_{folder}_1.jpg", flat_image(2, 3), quality=100)
        save(base / "annotations" / folder / f"ADE_{folder}_1.png", stored)
    expected = np.array([[255, 0, 1], [149, 148, 255]], dtype=np.uint8)
    for root in (tmp_path, base):  # the parent folder or ADEChallengeData2016 itself
        dataset = build_dataset("ADE", root)
        image, mask = dataset[0]
        assert dataset.name == "ade20k" and len(dataset.classes) == 150 and dataset.palette.shape == (150, 3)
        assert dataset.image_path(0).name == "ADE_validation_1.jpg"
        np.testing.assert_array_equal(mask, expected)
        assert image.shape == (2, 3, 3) and np.abs(image.astype(int) - [200, 40, 90]).max() <= 3
    assert build_dataset("ade20k", tmp_path, "train").image_path(0).name == "ADE_training_1.jpg"
    assert dataset.info.protocol.reduce_zero_label and dataset.info is DATASETS["ade20k"]


# -------------------------------------------------------------------------------------------------- Cityscapes

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes; everything else is ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def write_cityscapes(root, split="val", city="aachen", name="aachen_000000_000019"):
    label_ids = np.arange(36, dtype=np.uint8).reshape(4, 9)  # ids 0..33 plus two out-of-table values
    save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", flat_image(4, 9))
    save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", label_ids)
    return label_ids


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    label_ids = write_cityscapes(tmp_path)
    dataset = build_dataset("cityscapes", tmp_path, "val")
    image, mask = dataset[0]
    expected = np.array([CITYSCAPES_TRAIN_IDS.get(int(i), 255) for i in label_ids.ravel()]).reshape(4, 9)
    np.testing.assert_array_equal(mask, expected)
    assert mask[0, 7] == 0 and mask[3, 6] == 18 and mask[0, 0] == 255 and mask[1, 0] == 255  # ids 7, 33, 0, 9
    np.testing.assert_array_equal(image, flat_image(4, 9))
    assert dataset.classes[0] == "road" and dataset.classes[18] == "bicycle"
    assert dataset.info is DATASETS["cityscapes"] and not dataset.info.protocol.reduce_zero_label


def test_cityscapes_prefers_train_id_files(tmp_path):
    write_cityscapes(tmp_path, "train")
    train_ids = np.full((4, 9), 5, dtype=np.uint8)
    train_ids[0, 0] = 255
    save(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", train_ids)
    np.testing.assert_array_equal(build_dataset("cityscapes", tmp_path, "train")[0][1], train_ids)


# ------------------------------------------------------------------------------------------------- Pascal VOC


def write_voc(base, names=("2007_000032",), split="val"):
    indices = np.array([[0, 1, 15], [255, 20, 0]], dtype=np.uint8)
    for name in names:
        save(base / "JPEGImages" / f"{name}.jpg", flat_image(2, 3), quality=100)
        mask = Image.fromarray(indices)
        mask.putpalette(default_palette(256).tobytes())
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(base / "SegmentationClass" / f"{name}.png")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    return indices


@pytest.mark.parametrize("layout", ["VOCdevkit/VOC2012", "VOC2012", "."])
def test_voc_palette_png_gives_indices_and_keeps_border(tmp_path, layout):
    indices = write_voc(tmp_path / layout)
    dataset = build_dataset("pascal_voc", tmp_path)
    assert Image.open(dataset.samples[0][1]).mode == "P"
    np.testing.assert_array_equal(dataset[0][1], indices)
    assert dataset.classes[15] == "person" and tuple(dataset.palette[15]) == (192, 128, 128)  # VOC colour map


def test_voc_aug_uses_segmentation_class_aug(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    write_voc(base, names=("2007_000032", "2008_000002"), split="train")
    aug_mask = np.array([[3, 3, 0], [255, 7, 7]], dtype=np.uint8)
    save(base / "SegmentationClassAug" / "2008_000002.png", aug_mask)
    (base / "ImageSets" / "Segmentation" / "aug.txt").write_text("2008_000002\n")
    dataset = build_dataset("voc", tmp_path, "train", aug=True)
    assert len(dataset) == 1 and dataset.samples[0][1].parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(dataset[0][1], aug_mask)
    assert len(build_dataset("voc", tmp_path, "train")) == 2
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_dataset("voc", tmp_path, "val")


# ------------------------------------------------------------------------------------------------- COCO-Stuff

# From mmseg tools/dataset_converters/coco_stuff164k.py clsID_to_trID (unused ids map to ignore here).
COCO_KNOWN = {
    0: 0, 10: 10, 11: 255, 12: 11, 24: 23, 25: 255, 26: 24, 27: 25, 30: 26, 45: 40, 66: 60, 69: 61,
    71: 62, 81: 72, 83: 73, 89: 79, 90: 255, 91: 80, 92: 81, 181: 170, 182: 255, 200: 255, 255: 255,
}  # fmt: skip


def test_coco_stuff_raw_ids_and_train_id_files(tmp_path):
    raw = np.array(list(COCO_KNOWN), dtype=np.uint8).reshape(1, -1)
    save(tmp_path / "images/val2017/000000000139.jpg", flat_image(1, raw.shape[1]), quality=100)
    save(tmp_path / "annotations/val2017/000000000139.png", raw)
    dataset = build_dataset("COCO-Stuff", tmp_path, "val")
    assert len(dataset.classes) == 171 and dataset.classes[80] == "banner"
    np.testing.assert_array_equal(dataset[0][1][0], list(COCO_KNOWN.values()))

    converted = np.full_like(raw, 7)
    save(tmp_path / "annotations/val2017/000000000139_labelTrainIds.png", converted)
    dataset = build_dataset("coco_stuff", tmp_path, "val")
    assert dataset.samples[0][1].name == "000000000139_labelTrainIds.png"
    np.testing.assert_array_equal(dataset[0][1], converted)


# ----------------------------------------------------------------------------------------------- custom folder


def test_custom_pairs_by_stem_with_classes_file(tmp_path):
    masks = {}
    for relative, suffix in [("b", ".png"), ("a", ".jpg"), ("sub/c", ".bmp"), ("d", ".tif")]:
        save(tmp_path / "images/train" / f"{relative}{suffix}", flat_image(3, 4), quality=100)
        masks[relative] = RNG.integers(0, 3, (3, 4), dtype=np.uint8)
        save(tmp_path / "masks/train" / f"{relative}.png", masks[relative])
    save(tmp_path / "masks/train/orphan.png", masks["a"])  # a mask without image is not a sample
    (tmp_path / "classes.txt").write_text("background 0 0 0\ntraffic light 250 170 30\n\nroad 128 64 128\n")
    dataset = build_dataset("custom", tmp_path, "train")
    assert [p.relative_to(tmp_path / "images/train").as_posix() for p, _ in dataset.samples] == [
        "a.jpg", "b.png", "d.tif", "sub/c.bmp"
    ]  # fmt: skip
    for index, (image_path, mask_path) in enumerate(dataset.samples):
        stem = image_path.relative_to(tmp_path / "images/train").with_suffix("").as_posix()
        assert mask_path == tmp_path / "masks/train" / f"{stem}.png"
        np.testing.assert_array_equal(dataset[index][1], masks[stem])
    assert dataset.classes == ["background", "traffic light", "road"]
    np.testing.assert_array_equal(dataset.palette, [[0, 0, 0], [250, 170, 30], [128, 64, 128]])


def test_custom_flat_folder_binary_and_reduce_zero_label(tmp_path):
    save(tmp_path / "images/x.png", flat_image(2, 3))
    save(tmp_path / "masks/x.png", np.array([[0, 255, 200], [128, 127, 0]], dtype=np.uint8))
    for split in ("train", "val"):  # images directly in images/ serve every split
        dataset = build_dataset("custom", tmp_path, split, binary=True)
        assert dataset.classes == ["background", "foreground"] and dataset.palette.shape == (2, 3)
        np.testing.assert_array_equal(dataset[0][1], [[0, 1, 1], [1, 0, 0]])
    save(tmp_path / "masks/x.png", np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8))
    dataset = build_dataset("custom", tmp_path, reduce_zero_label=True, classes=["a", "b", "c"])
    np.testing.assert_array_equal(dataset[0][1], [[255, 0, 1], [2, 255, 0]])
    assert dataset.info.protocol == DATASETS["custom"].protocol.replace(reduce_zero_label=True)


def test_custom_transform_and_value_check(tmp_path):
    save(tmp_path / "images/val/x.png", flat_image(2, 3))
    save(tmp_path / "masks/val/x.png", np.array([[0, 1, 255], [1, 1, 2]], dtype=np.uint8))
    (tmp_path / "classes.txt").write_text("bg\nfg\n")
    dataset = build_dataset("custom", tmp_path, transform=lambda image, mask: (image.sum(), mask.max()))
    with pytest.raises(ValueError, match=r"masks/val/x\.png.*\[2\]"):
        dataset[0]
    save(tmp_path / "masks/val/x.png", np.array([[0, 1, 255], [1, 1, 0]], dtype=np.uint8))
    assert dataset[0] == (6 * (200 + 40 + 90), 255)


# ----------------------------------------------------------------------------------------------------- errors


def test_error_messages_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="ade20k, cityscapes, voc, coco-stuff, custom"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("ade20k", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"images/validation"):
        build_dataset("ade20k", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("ade20k", tmp_path, "test")
    with pytest.raises(ValueError, match="aug"):
        build_dataset("custom", tmp_path, aug=True)

    (tmp_path / "images/val").mkdir(parents=True)
    (tmp_path / "masks/val").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"images/val.*empty"):
        build_dataset("custom", tmp_path)
    save(tmp_path / "images/val/lonely.jpg", flat_image())
    with pytest.raises(FileNotFoundError, match=r"lonely\.jpg.*masks/val/lonely\.png"):
        build_dataset("custom", tmp_path)
    save(tmp_path / "masks/val/lonely.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"lonely\.png.*5×5.*6×4"):
        build_dataset("custom", tmp_path)[0]
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        build_dataset("custom", tmp_path)

    (tmp_path / "images/val/lonely.jpg").write_bytes(b"\x00" * 10)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"lonely\.jpg"):
        build_dataset("custom", tmp_path)[0]


def test_protocols_follow_the_official_configs():
    # (mode, scale, size_divisor, crop, stride, reduce_zero_label) of the test pipelines and test_cfg of NVlabs
    # local_configs/_base_/datasets/ade20k_repeat.py and cityscapes_1024x1024_repeat.py with the B0 configs, and of
    # mmseg 0.x configs/_base_/datasets/pascal_voc12.py and coco-stuff164k.py (whole; crop/stride unused there)
    mmseg_ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    expected = {
        "ade20k": ("whole", (2048, 512), 32, True),
        "cityscapes": ("slide", (2048, 1024), None, False),
        "voc": ("whole", (2048, 512), None, False),
        "coco-stuff": ("whole", (2048, 512), None, False),
        "custom": ("whole", (2048, 512), None, False),
    }
    for name, values in expected.items():
        p = DATASETS[name].protocol
        assert (p.mode, p.scale, p.size_divisor, p.reduce_zero_label) == values, name
        assert p.aug_ratios == mmseg_ratios and p.flip, name
        assert len(DATASETS[name].palette) == len(DATASETS[name].classes)
    assert (DATASETS["cityscapes"].protocol.crop, DATASETS["cityscapes"].protocol.stride) == ((1024, 1024), (768, 768))
    assert [len(DATASETS[n].classes) for n in ("ade20k", "cityscapes", "voc", "coco-stuff")] == [150, 19, 21, 171]
    assert len({tuple(c) for c in DATASETS["coco-stuff"].palette}) == 171  # distinct colours


def test_read_image_accepts_pil_images_and_arrays(tmp_path):
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert read_image(rgb) is rgb  # already H×W×3 uint8: no copy
    gray = rgb[..., 0]
    np.testing.assert_array_equal(read_image(gray), np.stack([gray] * 3, axis=2))
    np.testing.assert_array_equal(read_image(gray[..., None]), np.stack([gray] * 3, axis=2))
    rgba = np.concatenate([rgb, np.full((3, 4, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(rgba), rgb)
    sixteen = np.array([[0, 65535, 300], [257 * 100, 32896, 1000]], dtype=np.uint16)
    expected = np.array([[0, 255, 1], [100, 128, 4]], dtype=np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(read_image(sixteen), np.stack([expected] * 3, axis=2))
    # a PIL image gives what its file gives, 16-bit and EXIF orientation included, and is left as it was
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, array, kwargs in [("s.png", sixteen, {}), ("o.png", rgb, {"exif": exif})]:
        path = save(tmp_path / name, array, **kwargs)
        opened = Image.open(path)
        np.testing.assert_array_equal(read_image(opened), read_image(path))
        assert opened.size == (array.shape[1], array.shape[0])
    assert read_image(tmp_path / "o.png").shape == (4, 3, 3)  # rotated
    with pytest.raises(ValueError, match=r"H×W×3 \(RGB\).*shape \(3, 4, 2\), dtype uint8"):
        read_image(rgb[..., :2])
    with pytest.raises(ValueError, match="float64"):
        read_image(rgb.astype(float))


def test_datasets_share_one_interface(tmp_path):
    from segformer.data import BaseSegmentationDataset, SyntheticDataset

    save(tmp_path / "images/val/x.png", flat_image(2, 3))
    save(tmp_path / "masks/val/x.png", np.zeros((2, 3), np.uint8))
    (tmp_path / "classes.txt").write_text("bg 1 2 3\nfg 4 5 6\n")
    for dataset in (build_dataset("custom", tmp_path), SyntheticDataset(2, (32, 48))):
        assert isinstance(dataset, BaseSegmentationDataset)
        assert dataset.palette.dtype == np.uint8 and dataset.palette.shape == (dataset.num_classes, 3)
        assert dataset.classes == list(dataset.info.classes) and dataset.name == dataset.info.name
    assert SyntheticDataset(2, (32, 48)).info.protocol.scale == (48, 32)

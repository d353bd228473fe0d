"""RGB colour masks of a custom dataset, read through the colours of classes.txt, against id maps built here."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.cli import main
from segformer.data import build_dataset
from segformer.data.check import check_dataset
from segformer.data.mask_coding import MaskCoding

RNG = np.random.default_rng(0)
SIZE = (12, 16)
CLASSES = [  # (name, colour); "ignore" is no class: its colour reads as 255
    ("background", (0, 0, 0)),
    ("road", (128, 64, 128)),
    ("ignore", (255, 255, 255)),
    ("traffic light", (250, 170, 30)),
    ("car", (0, 0, 142)),
    ("sky", (70, 130, 180)),
    ("tree", (107, 142, 35)),
]
KEPT = [(name, colour) for name, colour in CLASSES if name != "ignore"]


def write_classes(root, classes=CLASSES):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in classes))


def colour_dataset(root, count=3, split="train"):
    """A custom folder of RGB(A) masks painted with the class colours; returns the id maps (255 = ignore)."""
    write_classes(root)
    colour_of_id = np.zeros((256, 3), np.uint8)  # the test's own table: class id -> colour, 255 -> ignore colour
    colour_of_id[: len(KEPT)] = [colour for _, colour in KEPT]
    colour_of_id[255] = (255, 255, 255)
    id_maps = []
    for index in range(count):
        ids = RNG.choice([*range(len(KEPT)), 255], SIZE).astype(np.uint8)
        rgb = colour_of_id[ids]
        if index == 1:  # RGBA masks read the same, alpha not read
            rgb = np.concatenate([rgb, RNG.integers(0, 256, (*SIZE, 1), dtype=np.uint8)], axis=2)
        save(root / "masks" / split / f"{index:03d}.png", rgb)
        save(root / "images" / split / f"{index:03d}.jpg", RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        id_maps.append(ids)
    return id_maps


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_rgb_masks_read_as_the_class_ids_of_their_colours(tmp_path):
    id_maps = colour_dataset(tmp_path)
    assert [Image.open(p).mode for p in sorted((tmp_path / "masks/train").iterdir())] == ["RGB", "RGBA", "RGB"]
    dataset = build_dataset("custom", tmp_path, "train")
    assert dataset.classes == [name for name, _ in KEPT] and dataset.num_classes == 6
    np.testing.assert_array_equal(dataset.palette, [colour for _, colour in KEPT])
    for index, ids in enumerate(id_maps):
        assert dataset[index][1].dtype == np.uint8
        np.testing.assert_array_equal(dataset[index][1], ids)
    report = check_dataset(dataset, progress=False)
    assert report.ok and report.masks.startswith("RGB colour masks, read through the 7 colours of ")
    counts = sum(np.bincount(ids.ravel(), minlength=256) for ids in id_maps)
    np.testing.assert_array_equal(report.counts, counts[:6])
    assert report.ignored == counts[255]


def test_unknown_colour_names_the_file_the_colour_and_a_pixel_holding_it(tmp_path):
    colour_dataset(tmp_path)
    masks = sorted((tmp_path / "masks/train").iterdir())
    bad = {}
    for path, (y, x), colour in [(masks[0], (5, 9), (250, 250, 250)), (masks[2], (0, 3), (1, 2, 3))]:
        rgb = np.array(Image.open(path).convert("RGB"))
        rgb[y, x] = colour
        rgb[y + 2, x] = colour
        if path == masks[0]:
            rgb[11, 15] = (255, 255, 254)  # a second unknown colour, above every colour of the table
        save(path, rgb)
        bad[path] = rgb
    dataset = build_dataset("custom", tmp_path, "train")
    pattern = r"colour \((\d+), (\d+), (\d+)\) at pixel \(x=(\d+), y=(\d+)\)"
    for index, path in [(0, masks[0]), (2, masks[2])]:
        with pytest.raises(ValueError) as error:
            dataset[index]
        message = str(error.value)
        assert message.startswith(f"{path}: ") and f"to {tmp_path / 'classes.txt'} or fix the mask" in message
        r, g, b, x, y = (int(v) for v in re.search(pattern, message).groups())
        assert tuple(bad[path][y, x]) == (r, g, b)
        assert f"add a line `name {r} {g} {b}`" in message
        assert (r, g, b) not in [colour for _, colour in CLASSES]
    assert "(1 more unknown colour(s) in this mask)" in str(pytest.raises(ValueError, dataset.__getitem__, 0).value)
    np.testing.assert_array_equal(dataset[1][1].shape, SIZE)  # the clean mask still reads
    report = check_dataset(dataset, progress=False)  # every bad file, not only the first
    assert [problem.split(": ")[0] for problem in report.problems] == [str(masks[0]), str(masks[2])]
    assert all(re.search(pattern, problem) for problem in report.problems)


def test_palette_masks_read_as_indices_even_with_colours_in_classes_txt(tmp_path):
    write_classes(tmp_path, KEPT)
    ids = RNG.integers(0, len(KEPT), SIZE).astype(np.uint8)
    ids[0, 0] = 255
    mask = Image.fromarray(ids, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(KEPT)] = [colour for _, colour in KEPT][::-1]  # colours of other classes: must not be read
    mask.putpalette(palette.tobytes())
    save(tmp_path / "images/val/a.png", RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    (tmp_path / "masks/val").mkdir(parents=True)
    mask.save(tmp_path / "masks/val/a.png")
    assert Image.open(tmp_path / "masks/val/a.png").mode == "P"
    dataset = build_dataset("custom", tmp_path, "val")
    np.testing.assert_array_equal(dataset[0][1], ids)
    assert dataset.info.masks.describe() == "class-index masks (palette PNGs)"
    save(tmp_path / "masks/val/a.png", ids)  # grayscale
    assert build_dataset("custom", tmp_path, "val").info.masks.describe() == "class-index masks (grayscale)"
    np.testing.assert_array_equal(build_dataset("custom", tmp_path, "val")[0][1], ids)


def test_check_data_says_how_the_masks_are_read(tmp_path, capsys):
    colour_dataset(tmp_path / "colour", split="val")
    argv = ["check-data", "--dataset", "custom", "--split", "val", "-q", "--data-root"]
    assert main([*argv, str(tmp_path / "colour")]) == 0
    out = capsys.readouterr().out
    assert f"masks: RGB colour masks, read through the 7 colours of {tmp_path / 'colour/classes.txt'} (1 of" in out
    write_classes(tmp_path / "gray")
    save(tmp_path / "gray/images/val/a.png", RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    save(tmp_path / "gray/masks/val/a.png", np.zeros(SIZE, np.uint8))
    (tmp_path / "gray/classes.txt").write_text("a\nb\n")
    assert main([*argv, str(tmp_path / "gray")]) == 0
    assert "masks: class-index masks (grayscale)\n" in capsys.readouterr().out


def test_a_folder_mixing_colour_and_index_masks_is_an_error_naming_one_of_each(tmp_path):
    colour_dataset(tmp_path, count=3)
    first, second, third = sorted((tmp_path / "masks/train").iterdir())
    save(second, np.zeros(SIZE, np.uint8))  # grayscale among RGB
    dataset = build_dataset("custom", tmp_path, "train")
    with pytest.raises(ValueError, match="one kind of mask per folder") as error:
        dataset[1]
    assert str(error.value).startswith(f"{second}: class-index masks (grayscale) (mode L)")
    assert f"in a folder of RGB colour masks such as {first}" in str(error.value)
    save(first, np.zeros(SIZE, np.uint8))  # now the folder is grayscale and the third mask the odd one
    write_classes(tmp_path, KEPT)  # (no `ignore` line with index masks)
    report = check_dataset(build_dataset("custom", tmp_path, "train"), progress=False)
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{third}: RGB colour masks (mode RGB)")
    assert f"class-index masks (grayscale) such as {first}" in report.problems[0]


def test_colour_mask_errors_name_classes_txt(tmp_path):
    colour_dataset(tmp_path, count=1)
    with pytest.raises(ValueError, match=r"binary=True is for class-index masks.*000\.png is an RGB colour mask"):
        build_dataset("custom", tmp_path, "train", binary=True)
    write_classes(tmp_path, [*KEPT, ("bus", (0, 0, 142))])
    with pytest.raises(ValueError, match=r"classes\.txt: classes 'car' and 'bus' have the same colour \(0, 0, 142\)"):
        build_dataset("custom", tmp_path, "train")
    save(tmp_path / "masks/train/000.png", np.zeros(SIZE, np.uint8))
    write_classes(tmp_path)
    with pytest.raises(ValueError, match=r"classes\.txt: class 'ignore' names the ignored colour.*remove the line"):
        build_dataset("custom", tmp_path, "train")


def test_decode_agrees_with_a_comparison_against_every_colour_for_many_colours():
    colours = np.unique(RNG.integers(0, 256, (300, 3), dtype=np.uint8), axis=0)[:254]
    ids = RNG.permutation(len(colours)).astype(np.uint8)  # class id of each colour, in no particular order
    coding = MaskCoding("colour", Path("m.png"), tuple(map(tuple, colours.tolist())), tuple(ids.tolist()))
    rgb = colours[RNG.integers(0, len(colours), (40, 50))]
    expected = ids[(rgb[:, :, None, :] == colours[None, None]).all(axis=3).argmax(axis=2)]
    np.testing.assert_array_equal(coding.decode(rgb), expected)
    taken = {tuple(c) for c in colours.tolist()}
    unknown = next((r, g, 7) for r in range(256) for g in range(256) if (r, g, 7) not in taken)
    rgb[39, 49] = unknown
    with pytest.raises(ValueError, match=re.escape(f"m.png: colour {unknown} at pixel (x=49, y=39)")):
        coding.decode(rgb, "m.png")


def test_without_colours_in_classes_txt_rgb_masks_are_read_as_grayscale_saved_as_rgb(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    ids = RNG.integers(0, 3, SIZE).astype(np.uint8)
    save(tmp_path / "images/val/a.png", RNG.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    save(tmp_path / "masks/val/a.png", np.stack([ids] * 3, axis=2))
    dataset = build_dataset("custom", tmp_path, "val")
    assert dataset.info.masks.describe().startswith("class-index masks (grayscale saved as RGB")
    np.testing.assert_array_equal(dataset[0][1], ids)
    save(tmp_path / "masks/val/a.png", np.stack([ids, ids, ids + 1], axis=2))  # colours, but no colours to read by
    with pytest.raises(ValueError, match=r"a\.png: colour-coded RGB mask"):
        dataset[0]

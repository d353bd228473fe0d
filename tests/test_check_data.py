"""``check_dataset`` and ``segformer check-data``: every broken pair found, counts against NumPy."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.cli import main
from segformer.data import build_dataset, write_synthetic
from segformer.data.check import check_dataset

SIZE = (40, 56)


@pytest.fixture
def root(tmp_path) -> Path:
    return write_synthetic(tmp_path / "data", 2, 6, size=SIZE, seed=0)


def masks_of(root: Path, split: str = "val") -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted((root / "masks" / split).glob("*.png"))]


def break_dataset(root: Path) -> dict[str, Path]:
    """Five kinds of damage to the val split; returns the damaged file of each."""
    images, masks = root / "images" / "val", root / "masks" / "val"
    data = (images / "00000.png").read_bytes()
    (images / "00000.png").write_bytes(data[: len(data) // 2])  # truncated image
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8)).save(masks / "00001.png")  # wrong size
    wrong = np.array(Image.open(masks / "00002.png"))
    wrong[0, :3] = [9, 9, 200]
    Image.fromarray(wrong).save(masks / "00002.png")  # ids 9 and 200 with 6 classes
    colour = np.zeros((*SIZE, 3), np.uint8)
    colour[..., 0] = 10
    Image.fromarray(colour).save(masks / "00003.png")  # an RGB colour mask among palette PNGs
    (images / "00004.png").write_bytes(b"not an image")
    return {
        "truncated": images / "00000.png",
        "size": masks / "00001.png",
        "ids": masks / "00002.png",
        "colour": masks / "00003.png",
        "garbage": images / "00004.png",
    }


def test_clean_dataset_counts_match_numpy(root):
    report = check_dataset(build_dataset("custom", root, "val"), progress=False)
    assert report.ok and report.problems == [] and report.num_images == 6
    masks = masks_of(root)
    counts = sum(np.bincount(m.ravel(), minlength=256) for m in masks)
    np.testing.assert_array_equal(report.counts, counts[:6])
    np.testing.assert_array_equal(report.images_per_class, [sum((m == k).any() for m in masks) for k in range(6)])
    assert report.ignored == counts[255]
    text = report.format()
    assert "no problems found" in text
    assert text.splitlines()[1] == "masks: class-index masks (palette PNGs)"
    rows = {line.split()[1]: line.split() for line in text.splitlines()[3:9]}
    for k, name in enumerate(["background", "disc", "square", "triangle", "ring", "cross"]):
        assert rows[name] == [str(k), name, f"{100 * counts[k] / counts.sum():.2f}%", str(report.images_per_class[k])]
    report.raise_if_broken()  # nothing to raise


def test_every_problem_is_found_and_names_its_file(root):
    damaged = break_dataset(root)
    report = check_dataset(build_dataset("custom", root, "val"), progress=False)
    assert not report.ok and len(report.problems) == 5 and report.num_images == 6
    by_file = {Path(problem.split(":")[0]).name: problem for problem in report.problems}
    assert set(by_file) == {"00000.png", "00001.png", "00002.png", "00003.png", "00004.png"}
    assert str(damaged["truncated"]) in report.problems[0] and "cannot read image" in report.problems[0]
    assert "56×41" in report.problems[1] and "56×40" in report.problems[1]
    assert "[9, 200]" in report.problems[2] and "0..5" in report.problems[2]
    assert (
        f"RGB colour masks (mode RGB) in a folder of class-index masks (palette PNGs) such as {root}"
        in (report.problems[3])
    )
    assert str(damaged["garbage"]) in report.problems[4]
    np.testing.assert_array_equal(report.counts, np.bincount(masks_of(root)[5].ravel(), minlength=6)[:6])
    with pytest.raises(ValueError, match=r"00000\.png.*and 4 more problem"):
        report.raise_if_broken()


def test_fast_check_reads_headers_only(root):
    break_dataset(root)
    fast = check_dataset(build_dataset("custom", root, "val"), progress=False, fast=True)
    # the truncated image has an intact header: only the full check decodes it
    assert len(fast.problems) == 4 and not any(str(root / "images" / "val" / "00000.png") in p for p in fast.problems)


def test_exif_rotated_jpeg_is_measured_as_displayed(tmp_path):
    root = write_synthetic(tmp_path / "data", 0, 1, size=SIZE, seed=0)
    image = Image.open(root / "images" / "val" / "00000.png")
    (root / "images" / "val" / "00000.png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees: 40 wide, 56 high
    image.transpose(Image.Transpose.ROTATE_90).save(root / "images" / "val" / "00000.jpg", exif=exif)
    for fast in (True, False):
        assert check_dataset(build_dataset("custom", root, "val"), progress=False, fast=fast).ok


def test_label_mapping_is_applied_before_the_id_check(root):
    masks = root / "masks" / "val"
    mask = np.array(Image.open(masks / "00000.png"))
    mask[0, 0] = 7  # reduce_zero_label: 7 -> 6, not a class of 6; 0 -> 255 ignored
    Image.fromarray(mask).save(masks / "00000.png")
    report = check_dataset(build_dataset("custom", root, "val", reduce_zero_label=True), progress=False)
    assert report.problems == [
        f"{masks / '00000.png'}: label values [6] are not class ids 0..5 nor the ignore value 255"
    ]
    assert report.ignored == sum(int((m == 0).sum()) for m in masks_of(root)[1:])


def test_cli_exit_codes_and_report(root, capsys):
    assert main(["check-data", "--dataset", "custom", "--data-root", str(root), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "custom train: 2 image/mask pairs" in out.out and "custom val: 6 image/mask pairs" in out.out
    assert out.out.strip().endswith("the dataset is ready for training") and out.err == ""
    damaged = break_dataset(root)
    assert main(["check-data", "--dataset", "custom", "--data-root", str(root), "--split", "val"]) == 1
    out = capsys.readouterr()
    assert all(str(path) in out.out for path in damaged.values())
    assert out.out.strip().endswith("5 problems found")
    assert "check custom: 6/6 pair" in out.err  # progress as plain lines when not on a terminal


def test_cli_reports_a_split_that_cannot_be_listed(root, capsys):
    shutil.rmtree(root / "masks" / "train")
    argv = ["check-data", "--dataset", "custom", "--data-root", str(root), "--options", "binary=false", "-q"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"custom train: cannot list the dataset: {root / 'masks' / 'train'}" in out
    assert "custom val: 6 image/mask pairs" in out and out.strip().endswith("1 problem found")

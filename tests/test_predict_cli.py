"""``segformer predict`` on a folder of awkward files: formats, EXIF rotation, 16 bits, a corrupt file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference import numpy_confidence
from segformer import create_model, from_pretrained
from segformer.cli import main
from segformer.data import read_image
from segformer.inference import Segmenter

# file -> (height, width) as displayed; rotated.jpg is stored 30 x 50 with EXIF orientation 6 (turned 90 degrees)
EXPECTED_SIZES = {
    "rgb.jpg": (40, 60),
    "gray.png": (35, 50),
    "rgba.png": (33, 47),
    "sub/deep.png": (45, 30),
    "rotated.jpg": (50, 30),
}
SCALE = ["--scale", "64", "32"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / "rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (35, 50), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (33, 47, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 65536, (45, 30), dtype=np.uint16)).save(folder / "sub" / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (folder / "notes.txt").write_text("not an image, skipped by extension")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("b0", num_classes=3, class_names=["sky", "road", "tree"])
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return folder


def test_predict_folder_writes_labels_and_overlays_and_names_the_corrupt_file(inputs, weights, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "--weights", str(weights), "--out", str(out), "--batch-size", "2", *SCALE])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and sum("error" in line for line in err.splitlines()) == 1

    segmenter = Segmenter(from_pretrained(weights), scale=(64, 32))
    for name, (h, w) in EXPECTED_SIZES.items():
        stem = Path(name).stem
        with Image.open(out / f"{stem}_label.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            label = np.array(png)
        np.testing.assert_array_equal(label, segmenter.predict(read_image(inputs / name)))
        with Image.open(out / f"{stem}_overlay.png") as picture:
            assert picture.width >= w and picture.height > h  # photo plus legend strip
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{Path(n).stem}_{kind}.png" for n in EXPECTED_SIZES for kind in ("label", "overlay")] + ["manifest.jsonl"]
    )
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [Path(line["input"]).name for line in lines] == ["broken.png", "gray.png", "rgb.jpg", "rgba.png",
                                                            "rotated.jpg", "deep.png"]  # fmt: skip
    assert "broken.png" in lines[0]["error"]
    for line in lines[1:]:
        label = np.array(Image.open(out / line["label"]))
        assert (line["height"], line["width"]) == label.shape
        ids, counts = np.unique(label, return_counts=True)
        assert line["class_pixels"] == {["sky", "road", "tree"][i]: int(c) for i, c in zip(ids, counts, strict=True)}


def test_console_script_with_a_glob(inputs, weights, tmp_path):
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("segformer")
    pattern = str(inputs / "r*.jpg")  # rgb.jpg and rotated.jpg
    cmd = [str(script), "predict", pattern, "--weights", str(weights), "--out", str(out), "--overlay-format", "jpg"]
    result = subprocess.run(cmd + SCALE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    segmenter = Segmenter(from_pretrained(weights), scale=(64, 32))
    for name in ("rgb.jpg", "rotated.jpg"):
        stem = Path(name).stem
        np.testing.assert_array_equal(
            np.array(Image.open(out / f"{stem}_label.png")), segmenter.predict(read_image(inputs / name))
        )
        assert Image.open(out / f"{stem}_overlay.jpg").format == "JPEG"


def test_missing_input_is_a_clean_error(weights, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "*.png"
    assert main(["predict", str(missing), "--weights", str(weights), "--out", str(tmp_path)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_folder_reads_gif_and_webp_and_names_the_files_it_skips(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "anim.gif")
    Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)).save(folder / "photo.webp", lossless=True)
    (folder / "readme.txt").write_text("not an image")
    assert main(["predict", str(folder), "--weights", str(weights), "--out", str(out), *SCALE, "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(notes) == 1 and "1 file" in notes[0] and "readme.txt" in notes[0]
    segmenter = Segmenter(from_pretrained(weights), scale=(64, 32))
    for name in ("anim.gif", "photo.webp"):
        with Image.open(folder / name) as picture:  # Pillow's own decoding, independent of read_image
            pixels = np.array(picture.convert("RGB"))
        with Image.open(out / f"{Path(name).stem}_label.png") as png:
            np.testing.assert_array_equal(np.array(png), segmenter.predict(pixels), err_msg=name)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [Path(line["input"]).name for line in lines] == ["anim.gif", "photo.webp"]


def test_skipped_note_counts_every_file_and_names_a_few(tmp_path):
    from segformer.cli.predict import expand_inputs, skipped_note

    (tmp_path / "a.png").write_bytes(b"")
    for i in range(7):
        (tmp_path / f"note{i}.txt").write_text("")
    files, skipped = expand_inputs([str(tmp_path)])
    assert files == [tmp_path / "a.png"] and skipped == sorted(tmp_path.glob("*.txt"))
    note = skipped_note(skipped)
    assert "skipped 7 files" in note and "note4.txt" in note and "note5.txt" not in note and "\n" not in note


def test_scores_write_16_bit_confidence_and_entropy_equal_to_numpy(inputs, weights, tmp_path):
    out = tmp_path / "out"
    argv = ["predict", str(inputs / "rgb.jpg"), "--weights", str(weights), "--out", str(out), "--scores", *SCALE]
    assert main(argv) == 0
    image = read_image(inputs / "rgb.jpg")
    logits = Segmenter(from_pretrained(weights), scale=(64, 32)).predict_logits(image).numpy()
    expected = dict(zip(("confidence", "entropy"), numpy_confidence(logits), strict=True))
    for kind, values in expected.items():
        with Image.open(out / f"rgb_{kind}.png") as png:
            assert png.mode == "I;16" and png.size == (60, 40)
            stored = np.array(png).astype(np.float64)
        assert np.abs(stored - values).max() <= 1, kind  # float64 softmax in torch and NumPy: rounding ties only
        assert (stored == values).mean() > 0.99, kind
    (line,) = [json.loads(text) for text in (out / "manifest.jsonl").read_text().splitlines()]
    assert (line["confidence"], line["entropy"]) == ("rgb_confidence.png", "rgb_entropy.png")

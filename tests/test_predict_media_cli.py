"""``segformer predict`` on rasters and videos: GeoTIFFs written here with rasterio (labels against the in-memory
slide ``Segmenter``, georeferencing against rasterio, polygon areas against the shoelace formula), clips written
here with PyAV (label frames against ``Segmenter.predict`` on the decoded frames), mixed folders, resumed runs,
errors naming the file, and the one-line hints when rasterio or PyAV is missing."""

import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from reference import decoded, numpy_confidence, ring_area, write_clip, write_sound
from segformer import from_pretrained
from segformer.cli import main, predict_media
from segformer.config import TestProtocol as Protocol  # aliased: pytest would collect a "Test…" class
from segformer.inference import Segmenter

NAMES = ["sky", "road", "tree"]
CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 10.0, 20.0)  # 10 m × 20 m pixels
PIXEL_AREA = 200.0
WINDOWS = ["--crop", "64", "64", "--stride", "48", "48"]
SCALE = ["--scale", "64", "32"]  # photos and video frames: a small test scale
RATE = Fraction(25)
FRAMES = 6


@pytest.fixture(scope="module")
def model(weights):
    return from_pretrained(weights).eval()


def bands(height: int, width: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 bands (blocks of 16 pixels plus noise): several classes under a random model."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, height // 16 + 1, width // 16 + 1)).astype(np.float32)
    data = np.stack([np.kron(band, np.ones((16, 16)))[:height, :width] for band in small])
    return np.clip(data + rng.normal(0, 10, data.shape), 0, 255).astype(np.uint8)


def write_geotiff(path, data: np.ndarray) -> None:
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype="uint8", crs=CRS)
    with rasterio.open(path, "w", transform=TRANSFORM, photometric="MINISBLACK", **profile) as dataset:
        dataset.write(data)


def slide(model, crop=(64, 64), stride=(48, 48)) -> Segmenter:
    """The in-memory oracle: slide windows at native resolution, the protocol's mean and std."""
    return Segmenter(model, Protocol(mode="slide", scale=None, crop=crop, stride=stride))


def scene(k: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Frame k: gradients and a square moving right."""
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 40 + 20 * k)], axis=-1)
    image[12:36, 8 * k : 8 * k + 24] = [230, 200, 30]
    return image.astype(np.uint8)


def test_georeferenced_raster_streams_to_a_label_geotiff_equal_to_in_memory_slide(model, weights, tmp_path, capsys):
    data = bands(300, 400)
    write_geotiff(tmp_path / "scene.tif", data)
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "scene.tif"), "--weights", str(weights), "--out", str(out), *WINDOWS]
    assert main(argv + ["--bands", "3", "2", "1", "--polygons", "--scores", "-q"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "native resolution" in line]
    assert len(notes) == 1 and "scale 2048×512" in notes[0]  # the protocol's scale, not applied to rasters
    assert "wrote 1 raster to" in captured.out

    image = np.ascontiguousarray(data[[2, 1, 0]].transpose(1, 2, 0))
    with rasterio.open(out / "scene_label.tif") as labels:
        assert (labels.crs, labels.transform, labels.nodata, labels.dtypes) == (
            rasterio.crs.CRS.from_string(CRS),
            TRANSFORM,
            255,
            ("uint8",),
        )
        label = labels.read(1)
    np.testing.assert_array_equal(label, slide(model).predict(image))
    assert len(np.unique(label)) >= 2

    expected_confidence, expected_entropy = numpy_confidence(slide(model).predict_logits(image).numpy())
    with rasterio.open(out / "scene_scores.tif") as scores:
        assert (scores.count, scores.dtypes, scores.crs) == (2, ("uint16", "uint16"), rasterio.crs.CRS.from_string(CRS))
        assert np.abs(scores.read(1) - expected_confidence).max() <= 1
        assert np.abs(scores.read(2) - expected_entropy).max() <= 1

    collection = json.loads((out / "scene_classes.geojson").read_text())
    areas = dict.fromkeys(NAMES, 0.0)
    for feature in collection["features"]:
        exterior, *holes = feature["geometry"]["coordinates"]
        areas[feature["properties"]["class_name"]] += ring_area(exterior) - sum(ring_area(hole) for hole in holes)
    for k, name in enumerate(NAMES):
        assert areas[name] == pytest.approx((label == k).sum() * PIXEL_AREA, rel=1e-9)

    with Image.open(out / "scene_overlay.png") as preview:
        assert preview.width >= 400 and preview.height > 300  # the raster, then the legend
    (line,) = [json.loads(text) for text in (out / "manifest.jsonl").read_text().splitlines()]
    ids, counts = np.unique(label, return_counts=True)
    assert line == {
        "input": str(tmp_path / "scene.tif"),
        "label": "scene_label.tif",
        "overlay": "scene_overlay.png",
        "scores": "scene_scores.tif",
        "polygons": "scene_classes.geojson",
        "height": 300,
        "width": 400,
        "class_pixels": {NAMES[i]: int(c) for i, c in zip(ids, counts, strict=True)},
    }


def test_small_plain_tiff_stays_a_photo_with_a_label_png(model, weights, tmp_path):
    picture = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "plain.tif")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "plain.tif"), "--weights", str(weights), "--out", str(out), *SCALE]) == 0
    with Image.open(out / "plain_label.png") as png:
        np.testing.assert_array_equal(np.array(png), Segmenter(model, scale=(64, 32)).predict(picture))
    assert not (out / "plain_label.tif").exists()


def test_which_tiffs_are_streamed(tmp_path, monkeypatch):
    """Known answers: georeferenced, over the size limit, a world file beside it, or --bands given."""
    write_geotiff(tmp_path / "geo.tif", bands(20, 30))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "plain.tif")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "world.tif")
    (tmp_path / "world.tfw").write_text("10\n0\n0\n-10\n500000\n5000000\n")
    assert predict_media.input_kind(tmp_path / "geo.tif", False) == "raster"
    assert predict_media.input_kind(tmp_path / "world.tif", False) == "raster"
    assert predict_media.input_kind(tmp_path / "plain.tif", False) == "image"
    assert predict_media.input_kind(tmp_path / "plain.tif", True) == "raster"
    monkeypatch.setattr(predict_media, "LARGE_RASTER_PIXELS", 20 * 30 - 1)
    assert predict_media.input_kind(tmp_path / "plain.tif", False) == "raster"
    assert predict_media.input_kind(tmp_path / "clip.mkv", False) == "video"


def test_band_out_of_range_names_the_file_and_its_band_count(weights, tmp_path, capsys):
    write_geotiff(tmp_path / "scene.tif", bands(50, 60))
    argv = ["predict", str(tmp_path / "scene.tif"), "--weights", str(weights), "--out", str(tmp_path / "out")]
    assert main(argv + ["--bands", "3", "2", "9", "-q"]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "scene.tif" in error and "band 9" in error and "4 band(s)" in error
    assert not (tmp_path / "out" / "scene_label.tif").exists()


def test_video_gives_overlay_and_label_videos_equal_to_predict_per_frame(model, weights, tmp_path, capsys):
    write_clip(tmp_path / "clip.mkv", [scene(k) for k in range(FRAMES)], RATE)
    frames, source = decoded(tmp_path / "clip.mkv")
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "clip.mkv"), "--weights", str(weights), "--out", str(out), *SCALE]
    assert main(argv + ["--label-video", "--scores", "--batch-size", "4", "-q"]) == 0
    stdout = capsys.readouterr().out
    assert f"{FRAMES} frames in" in stdout and "frames/s" in stdout and "wrote 1 video to" in stdout

    segmenter = Segmenter(model, scale=(64, 32))
    labels, label_stream = decoded(out / "clip_labels.mkv", format="gray")
    assert len(labels) == FRAMES and label_stream["rate"] == source["rate"]
    for k, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        np.testing.assert_array_equal(label, segmenter.predict(frame), err_msg=f"frame {k}")
    overlays, overlay_stream = decoded(out / "clip_overlay.mp4")
    assert len(overlays) == FRAMES and overlay_stream["rate"] == source["rate"]
    confidence, _ = decoded(out / "clip_scores.mkv", 0, format="gray16le")
    entropy, _ = decoded(out / "clip_scores.mkv", 1, format="gray16le")
    assert len(confidence) == len(entropy) == FRAMES
    expected_confidence, expected_entropy = numpy_confidence(segmenter.predict_logits(frames[2]).numpy())
    assert np.abs(confidence[2] - expected_confidence).max() <= 1
    assert np.abs(entropy[2] - expected_entropy).max() <= 1
    (line,) = [json.loads(text) for text in (out / "manifest.jsonl").read_text().splitlines()]
    assert line == {
        "input": str(tmp_path / "clip.mkv"),
        "overlay": "clip_overlay.mp4",
        "labels": "clip_labels.mkv",
        "scores": "clip_scores.mkv",
        "frames": FRAMES,
    }


def test_mixed_folder_resumed_with_skip_existing_rebuilds_the_same_manifest(model, weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(scene(0)).save(folder / "photo.png")
    write_geotiff(folder / "field.tif", bands(90, 110, seed=1))
    write_clip(folder / "clip.mkv", [scene(k) for k in range(3)], RATE)
    (folder / "notes.txt").write_text("neither")
    argv = ["predict", str(folder), "--weights", str(weights), "--out", str(out), *SCALE, *WINDOWS, "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    (note,) = [line for line in captured.err.splitlines() if "skipped" in line]
    assert "1 file" in note and "notes.txt" in note and "clip.mkv" not in note
    assert "wrote 1 label map and overlay, 1 raster and 1 video to" in captured.out
    expected = sorted(["photo_label.png", "photo_overlay.png", "field_label.tif", "field_overlay.png"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, "clip_overlay.mp4", "manifest.jsonl"])
    with Image.open(out / "photo_label.png") as png:
        np.testing.assert_array_equal(np.array(png), Segmenter(model, scale=(64, 32)).predict(scene(0)))
    with rasterio.open(out / "field_label.tif") as labels:
        field = np.ascontiguousarray(bands(90, 110, seed=1)[:3].transpose(1, 2, 0))
        np.testing.assert_array_equal(labels.read(1), slide(model).predict(field))
    first = (out / "manifest.jsonl").read_text()
    assert [json.loads(line).get("frames") for line in first.splitlines()] == [3, None, None]  # input order

    assert main([*argv, "--skip-existing"]) == 0
    assert "skipped 3 inputs with existing outputs" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_text() == first


def test_source_flag_reads_a_stream_into_live_outputs(model, weights, tmp_path, capsys):
    """--source takes what FFmpeg opens; a file given there is read as a file (every frame, in order)."""
    write_clip(tmp_path / "clip.mkv", [scene(k) for k in range(FRAMES)], RATE)
    out = tmp_path / "out"
    argv = ["predict", "--source", str(tmp_path / "clip.mkv"), "--weights", str(weights), "--out", str(out)]
    assert main(argv + [*SCALE, "--label-video", "--max-frames", "4", "-q"]) == 0
    labels, _ = decoded(out / "live_labels.mkv", format="gray")
    segmenter = Segmenter(model, scale=(64, 32))
    assert len(labels) == 4 and len(decoded(out / "live_overlay.mp4")[0]) == 4
    for k, label in enumerate(labels):
        np.testing.assert_array_equal(label, segmenter.predict(scene(k)))
    capsys.readouterr()
    assert main(argv + [str(tmp_path / "clip.mkv")]) == 1
    assert "--source segments one live stream" in capsys.readouterr().err


def test_audio_only_file_is_named(weights, tmp_path, capsys):
    sound = tmp_path / "sound.mkv"
    write_sound(sound)
    assert main(["predict", str(sound), "--weights", str(weights), "--out", str(tmp_path / "out"), "-q"]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "sound.mkv: no video stream" in error
    line = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert line["input"] == str(sound) and "no video stream" in line["error"]


@pytest.mark.parametrize(
    ("package", "modules", "hint"),
    [
        ("rasterio", ["segformer.raster", "segformer.raster_output"], "pip install 'segformer[geo]'"),
        ("av", ["segformer.video"], "pip install 'segformer[video]'"),
    ],
)
def test_missing_optional_package_is_one_line_with_its_pip_command(
    package, modules, hint, weights, tmp_path, monkeypatch, capsys
):
    write_geotiff(tmp_path / "scene.tif", bands(40, 50))
    write_clip(tmp_path / "clip.mkv", [scene(0)], RATE)
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    for module in modules:
        monkeypatch.delitem(sys.modules, module, raising=False)
    file = "scene.tif" if package == "rasterio" else "clip.mkv"
    assert main(["predict", str(tmp_path / file), "--weights", str(weights), "--out", str(tmp_path / "out")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segformer predict")]
    assert len(lines) == 1 and hint in lines[0], lines
    assert not (tmp_path / "out").exists()  # stopped before anything was segmented


def test_smooth_outside_zero_to_one_is_refused(weights, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "clip.mkv", "--weights", str(weights), "--out", str(tmp_path), "--smooth", "1"])
    err = capsys.readouterr().err
    assert "--smooth" in err and "expected a number in [0, 1)" in err

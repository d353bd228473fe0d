"""Streamed raster prediction (segformer.raster) against the in-memory Segmenter, NumPy and rasterio."""

import json
import tracemalloc

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.transform import from_origin

from reference import numpy_confidence, ring_area
from segformer import create_model
from segformer.config import TestProtocol as Protocol  # aliased: pytest would collect a "Test…" class
from segformer.inference import Segmenter
from segformer.raster import memory_bound, native_protocol, predict_raster, raster_logits
from segformer.visualize import model_palette, overlay

K = 3
NAMES = ["water", "field", "forest"]
TRANSFORM = from_origin(500000.0, 5000000.0, 10.0, 20.0)  # 10 m × 20 m pixels: area 200 m²
PIXEL_AREA = 200.0
CRS = "EPSG:32633"


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return create_model("b0", num_classes=K, class_names=NAMES).eval()


def segmenter(model, crop=(128, 128), stride=(96, 96)) -> Segmenter:
    return Segmenter(model, Protocol(mode="slide", scale=None, crop=crop, stride=stride))


def write_raster(path, data: np.ndarray, nodata=0, **profile) -> None:
    """A C×H×W array as a GeoTIFF with CRS, transform and nodata (bands as plain data, not RGB/alpha)."""
    count, height, width = data.shape
    fields = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name, crs=CRS)
    fields.update(transform=TRANSFORM, nodata=nodata, photometric="MINISBLACK", **profile)
    with rasterio.open(path, "w", **fields) as dataset:
        dataset.write(data)


def random_bands(height: int, width: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random bands (values 1..255) with a nodata (0) corner in band 2 and a nodata stripe in band 4."""
    rng = np.random.default_rng(seed)
    small = rng.integers(1, 256, (count, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    data = np.stack([np.kron(band, np.ones((8, 8)))[:height, :width] for band in small])
    data = np.clip(data + rng.normal(0, 12, data.shape), 1, 255).astype(np.uint8)
    data[1, :30, :45] = 0
    data[count - 1, height // 2 : height // 2 + 5, :] = 0
    return data


def in_memory(data: np.ndarray, bands) -> np.ndarray:
    """H×W×C image of 1-based ``bands``, as a user would build it to call Segmenter.predict."""
    return np.ascontiguousarray(data[[b - 1 for b in bands]].transpose(1, 2, 0))


def read_band(path, band=1) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(band)


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [(700, 260, (128, 128), (96, 96)), (200, 330, (96, 96), (64, 56)), (70, 200, (96, 64), (50, 50))],
)
def test_streamed_labels_and_logits_equal_in_memory_slide(model, tmp_path, height, width, crop, stride):
    data = random_bands(height, width)
    write_raster(tmp_path / "scene.tif", data)
    seg = segmenter(model, crop, stride)
    bands = (4, 3, 2)
    result = predict_raster(seg, tmp_path / "scene.tif", tmp_path / "out" / "scene.tif", bands=bands, progress=False)

    image = in_memory(data, bands)
    expected = seg.predict(image)
    nodata = (image == 0).any(axis=2)
    labels = read_band(result.labels)
    assert nodata.any() and (labels[nodata] == 255).all()
    np.testing.assert_array_equal(labels[~nodata], expected[~nodata])  # bit for bit

    rows = list(raster_logits(seg, tmp_path / "scene.tif", bands=bands))
    assert [top for top, _, _ in rows] == sorted({top for top, _, _ in rows}) and rows[0][0] == 0
    streamed = np.concatenate([logits for _, logits, _ in rows], axis=1)
    np.testing.assert_allclose(streamed, seg.predict_logits(image).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([valid for _, _, valid in rows]), ~nodata)
    ids, counts = np.unique(labels[labels != 255], return_counts=True)
    assert result.class_pixels == {NAMES[i]: int(c) for i, c in zip(ids, counts, strict=True)}


def test_georeferencing_tiling_and_nodata_carried(model, tmp_path):
    data = random_bands(600, 700)
    write_raster(tmp_path / "scene.tif", data, nodata=0)
    seg = segmenter(model, (256, 256), (256, 256))
    result = predict_raster(seg, tmp_path / "scene.tif", tmp_path / "labels.tif", progress=False)
    with rasterio.open(tmp_path / "scene.tif") as source, rasterio.open(result.labels) as out:
        assert out.crs == source.crs and out.crs.to_epsg() == 32633
        assert out.transform == source.transform == TRANSFORM
        assert (out.width, out.height, out.count, out.dtypes) == (700, 600, 1, ("uint8",))
        assert out.nodata == 255
        assert out.block_shapes == [(512, 512)] and out.compression.name == "deflate"
        assert out.overviews(1) == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels_preview.png", "scene.tif"]


def test_dataset_mask_pixels_get_ignore_label(model, tmp_path):
    data = random_bands(200, 260)
    data[data == 0] = 1  # no nodata values: validity comes from the internal mask alone
    mask = np.full((200, 260), 255, np.uint8)
    mask[50:90, 100:180] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_raster(tmp_path / "masked.tif", data, nodata=None)
        with rasterio.open(tmp_path / "masked.tif", "r+") as dataset:
            dataset.write_mask(mask)
    seg = segmenter(model)
    result = predict_raster(seg, tmp_path / "masked.tif", tmp_path / "labels.tif", preview=False, progress=False)
    labels = read_band(result.labels)
    np.testing.assert_array_equal(labels == 255, mask == 0)
    expected = seg.predict(in_memory(data, (1, 2, 3)))  # default bands: the first three
    np.testing.assert_array_equal(labels[mask > 0], expected[mask > 0])


def reference_slide(model, image: np.ndarray, mean, std, crop, stride) -> torch.Tensor:
    """mmseg ``slide_inference`` written out for a C×H×W uint8 image, channel c normalised with mean/std[c % 3]."""
    channels, height, width = image.shape
    norm = [(image[c].astype(np.float64) - mean[c % 3]) / std[c % 3] for c in range(channels)]
    x = torch.from_numpy(np.stack(norm).astype(np.float32))[None]
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    preds, count = torch.zeros(1, K, height, width), torch.zeros(1, 1, height, width)
    for h_idx in range(max(height - crop_h + stride_h - 1, 0) // stride_h + 1):
        for w_idx in range(max(width - crop_w + stride_w - 1, 0) // stride_w + 1):
            y2, x2 = min(h_idx * stride_h + crop_h, height), min(w_idx * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            with torch.no_grad():
                logits = model(x[:, :, y1:y2, x1:x2])
            preds[:, :, y1:y2, x1:x2] += F.interpolate(logits, (y2 - y1, x2 - x1), mode="bilinear")
            count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.mark.parametrize(("in_channels", "bands"), [(4, None), (1, (2,)), (5, (1, 2, 3, 4, 4))])
def test_models_with_other_channel_counts_take_that_many_bands(tmp_path, in_channels, bands):
    torch.manual_seed(1)
    net = create_model("b0", num_classes=K, in_channels=in_channels).eval()
    data = random_bands(160, 200)
    data[data == 0] = 1
    write_raster(tmp_path / "scene.tif", data)
    seg = segmenter(net, (96, 96), (64, 64))
    streamed = np.concatenate([logits for _, logits, _ in raster_logits(seg, tmp_path / "scene.tif", bands=bands)], 1)
    chosen = data[[b - 1 for b in (bands or range(1, in_channels + 1))]]
    expected = reference_slide(net, chosen, seg.protocol.mean, seg.protocol.std, (96, 96), (64, 64)).numpy()
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-4)


def test_uint16_bands_stretched_between_2nd_and_98th_percentiles(model, tmp_path):
    """Each band: 1% low and 1% high outliers, then values low + 10·u; the 2/98 percentiles are low and
    low + 2550, so the stretched band is u (outliers clipped to 0 and 255): a known answer."""
    rng = np.random.default_rng(3)
    height, width = 180, 230
    u = np.stack([np.kron(rng.integers(0, 256, (23, 29)), np.ones((8, 8)))[:height, :width] for _ in range(3)])
    u = u.astype(np.int64)
    u[:, :10, :] = 0  # ≥ 5% of each band at u = 0 and at u = 255
    u[:, 10:20, :] = 255
    low = np.array([1000, 2000, 3000])[:, None, None]
    data = low + 10 * u
    outliers = rng.random(u.shape)
    data[outliers < 0.01] = 500
    data[outliers > 0.99] = (low + 2550 + 700).repeat(height, 1).repeat(width, 2)[outliers > 0.99]
    expected_image = np.where(outliers < 0.01, 0, np.where(outliers > 0.99, 255, u)).astype(np.uint8)
    write_raster(tmp_path / "scene16.tif", data.astype(np.uint16))
    seg = segmenter(model)
    result = predict_raster(seg, tmp_path / "scene16.tif", tmp_path / "labels.tif", preview=False, progress=False)
    np.testing.assert_array_equal(read_band(result.labels), seg.predict(in_memory(expected_image, (1, 2, 3))))


def test_scores_equal_numpy_from_predict_logits(model, tmp_path):
    data = random_bands(300, 330)
    write_raster(tmp_path / "scene.tif", data)
    seg = segmenter(model)
    result = predict_raster(seg, tmp_path / "scene.tif", tmp_path / "labels.tif", scores=True, progress=False)
    expected_prob, expected_entropy = numpy_confidence(seg.predict_logits(in_memory(data, (1, 2, 3))).numpy())
    valid = (data[:3] > 0).all(axis=0)
    with rasterio.open(result.scores) as scores:
        assert (scores.count, scores.dtypes, scores.crs, scores.transform) == (2, ("uint16",) * 2, CRS, TRANSFORM)
        prob, entropy = scores.read(1).astype(np.int64), scores.read(2).astype(np.int64)
        mask = scores.read_masks(1)
    assert np.abs(prob - expected_prob)[valid].max() <= 1
    assert np.abs(entropy - expected_entropy)[valid].max() <= 1
    assert (prob[~valid] == 0).all() and (entropy[~valid] == 0).all()
    np.testing.assert_array_equal(mask, np.where(valid, 255, 0))


def test_polygon_areas_equal_label_class_areas(model, tmp_path):
    data = random_bands(700, 300)  # two rows of 512-row tiles: regions split at row 512
    write_raster(tmp_path / "scene.tif", data)
    seg = segmenter(model, (128, 128), (128, 128))
    result = predict_raster(seg, tmp_path / "scene.tif", tmp_path / "labels.tif", polygons=True, progress=False)
    labels = read_band(result.labels)
    collection = json.loads(result.polygons.read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    areas = dict.fromkeys(range(K), 0.0)
    for feature in collection["features"]:
        properties, geometry = feature["properties"], feature["geometry"]
        assert geometry["type"] == "Polygon" and properties["class_name"] == NAMES[properties["class_id"]]
        exterior, *holes = geometry["coordinates"]
        areas[properties["class_id"]] += ring_area(exterior) - sum(ring_area(hole) for hole in holes)
    assert {f["properties"]["row_block"] for f in collection["features"]} == {0, 1}
    for class_id in range(K):
        assert areas[class_id] == pytest.approx((labels == class_id).sum() * PIXEL_AREA, rel=1e-9)
    assert (labels == 255).any() and sum(areas.values()) == pytest.approx((labels != 255).sum() * PIXEL_AREA)


def test_geopackage_polygons_hold_the_label_class_areas_in_the_raster_crs(model, tmp_path):
    import fiona  # in the test extra

    write_raster(tmp_path / "scene.tif", random_bands(300, 200))
    seg = segmenter(model, (128, 128), (96, 96))
    out = tmp_path / "scene_classes.gpkg"
    result = predict_raster(seg, tmp_path / "scene.tif", tmp_path / "labels.tif", polygons=out, progress=False)
    labels = read_band(result.labels)
    with fiona.open(out, layer="classes") as layer:
        assert layer.crs.to_epsg() == 32633 and layer.driver == "GPKG"
        areas = dict.fromkeys(range(K), 0.0)
        for feature in layer:
            properties = feature.properties
            assert properties["class_name"] == NAMES[properties["class_id"]]
            exterior, *holes = feature.geometry.coordinates
            areas[properties["class_id"]] += ring_area(exterior) - sum(ring_area(hole) for hole in holes)
    for class_id in range(K):
        assert areas[class_id] == pytest.approx((labels == class_id).sum() * PIXEL_AREA, rel=1e-9)
    assert not list(tmp_path.glob("*.tmp*"))  # the scratch file was moved onto its name


def test_preview_is_the_overlay_of_the_bands_and_labels(model, tmp_path):
    data = random_bands(150, 210)
    write_raster(tmp_path / "scene.tif", data)
    result = predict_raster(segmenter(model), tmp_path / "scene.tif", tmp_path / "labels.tif", bands=(4, 3, 2))
    image = in_memory(data, (4, 3, 2))
    expected = overlay(image, read_band(result.labels), model_palette(model.config), NAMES)
    np.testing.assert_array_equal(np.asarray(Image.open(result.preview).convert("RGB")), np.asarray(expected))


def test_peak_memory_bounded_by_window_and_width_not_height(model, tmp_path):
    """A raster 16 × 512 rows tall stays within ``memory_bound``, which is far below the in-memory path's scores;
    tracemalloc traces every NumPy buffer (the accumulator, reads, finished bands, output tiles)."""
    height, width, crop, stride = 16 * 512, 128, (128, 128), (112, 112)
    write_raster(tmp_path / "tall.tif", random_bands(height, width))
    seg = segmenter(model, crop, stride)
    tracemalloc.start()
    try:
        predict_raster(seg, tmp_path / "tall.tif", tmp_path / "labels.tif", scores=True, preview=False, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = memory_bound(width, K, 3, crop, stride, scores=True, preview_pixels=0)
    assert 4 * K * height * width > 3 * bound  # the in-memory path's K×H×W float32 scores alone
    assert peak <= bound, (peak, bound)


def test_skip_existing_leaves_the_output_alone(model, tmp_path):
    write_raster(tmp_path / "scene.tif", random_bands(100, 120))
    seg = segmenter(model)
    out = tmp_path / "labels.tif"
    out.write_bytes(b"finished before")
    result = predict_raster(seg, tmp_path / "scene.tif", out, skip_existing=True, progress=False)
    assert result.skipped and out.read_bytes() == b"finished before"
    result = predict_raster(seg, tmp_path / "scene.tif", out, progress=False)
    assert not result.skipped and read_band(out).shape == (100, 120)


def test_band_errors_name_the_file_band_and_band_count(model, tmp_path):
    write_raster(tmp_path / "four.tif", random_bands(100, 100))
    write_raster(tmp_path / "two.tif", random_bands(100, 100, count=2))
    seg = segmenter(model)
    with pytest.raises(ValueError, match=r"four\.tif: band 5 does not exist: the raster has 4 band"):
        predict_raster(seg, tmp_path / "four.tif", tmp_path / "a.tif", bands=(5, 3, 2))
    with pytest.raises(ValueError, match=r"four\.tif: bands \[4, 3\] give 2 channels but the model takes 3"):
        predict_raster(seg, tmp_path / "four.tif", tmp_path / "a.tif", bands=(4, 3))
    with pytest.raises(ValueError, match=r"two\.tif: the model takes 3 input channels but the raster has 2 band"):
        predict_raster(seg, tmp_path / "two.tif", tmp_path / "a.tif")
    result = predict_raster(seg, tmp_path / "two.tif", tmp_path / "a.tif", bands=(2, 2, 2), progress=False)
    data = random_bands(100, 100, count=2)
    expected = seg.predict(in_memory(data, (2, 2, 2)))
    valid = data[1] > 0
    np.testing.assert_array_equal(read_band(result.labels)[valid], expected[valid])


def test_corrupt_rasters_are_reported_by_name_and_leave_no_output(model, tmp_path):
    seg = segmenter(model)
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + b"not a tiff" * 100)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"garbage\.tif: not a readable raster"):
        predict_raster(seg, tmp_path / "garbage.tif", out / "garbage.tif")
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        predict_raster(seg, tmp_path / "missing.tif", out / "missing.tif")

    path = tmp_path / "damaged.tif"
    write_raster(path, random_bands(300, 300), tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    with rasterio.open(path) as dataset:  # the tile of rows 128..255, columns 128..255
        offset = int(dataset.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(dataset.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    content = bytearray(path.read_bytes())
    content[offset + 8 : offset + size - 8] = bytes(size - 16)
    path.write_bytes(bytes(content))
    expected = r"damaged\.tif: cannot read bands of window rows 96\.\.224, columns 0\.\.300 \(.*TIFFReadEncodedTile"
    with pytest.raises(ValueError, match=expected):
        predict_raster(seg, path, out / "damaged.tif", scores=True, polygons=True, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_protocols_that_resize_are_refused(model, tmp_path):
    write_raster(tmp_path / "scene.tif", random_bands(100, 100))
    resizing = Segmenter(model, Protocol(mode="slide", scale=(2048, 512), size_divisor=32))
    with pytest.raises(ValueError, match=r"native resolution.*scale=\(2048, 512\), size_divisor=32.*native_protocol"):
        predict_raster(resizing, tmp_path / "scene.tif", tmp_path / "a.tif")
    native = Segmenter(model, native_protocol(resizing.protocol, crop=(64, 64), stride=(64, 64)))
    assert (native.protocol.mode, native.protocol.scale, native.protocol.size_divisor) == ("slide", None, None)
    predict_raster(native, tmp_path / "scene.tif", tmp_path / "a.tif", preview=False, progress=False)
    with pytest.raises(ValueError, match=r"stride \(96, 96\) exceeds crop \(64, 64\)"):
        predict_raster(native, tmp_path / "scene.tif", tmp_path / "b.tif", stride=(96, 96))

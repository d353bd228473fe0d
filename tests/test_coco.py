"""``segformer import-coco``: masks against pycocotools' own ``COCO.annToMask`` composed with NumPy by the
documented rule (larger areas first, smaller on top, equal areas in file order), panoptic PNGs against the
segment map the test drew, classes.txt, the errors, and CVAT's labelmap.txt."""

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import segformer
from segformer.cli import main
from segformer.data.classes import read_classes_file
from segformer.data.coco import _compressed_counts
from segformer.data.coco_import import import_coco
from segformer.data.cvat import labelmap_classes, write_labelmap_classes

# image id -> (file_name, height, width); "c.png" has no annotation
IMAGES = {1: ("street/a.png", 30, 40), 2: ("b.jpg", 24, 32), 3: ("c.png", 20, 20)}
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 5, "name": "car"}, {"id": 90, "name": "traffic light"}]
# the documented class ids (contiguous in category-id order) after a background class 0, and without one
WITH_BACKGROUND = {1: 1, 5: 2, 90: 3}
WITHOUT_BACKGROUND = {1: 0, 5: 1, 90: 2}


def box(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[rows, cols] = 1
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE from NumPy: run lengths of the column-major pixels, starting with a run of 0s."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def annotations() -> list[dict]:
    """Image 1: a small person polygon listed before the big two-part car it lies on, a compressed-RLE traffic
    light on the car, a crowd of people (uncompressed RLE) over the car's lower part, two box-only
    annotations. Image 2: two overlapping squares of equal area (the later one must win)."""
    light = compressed_rle(box(30, 40, slice(2, 13), slice(25, 31)))
    crowd = uncompressed_rle(box(30, 40, slice(18, 30), slice(20, 40)))
    first, second = (
        uncompressed_rle(box(24, 32, slice(2, 12), slice(2, 12))),
        compressed_rle(box(24, 32, slice(6, 16), slice(6, 16))),
    )
    return [
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 8, 18, 8, 18, 20, 10, 20]]},
        {
            "id": 11,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "segmentation": [[5, 5, 35, 5, 35, 25, 5, 25], [36, 2, 39.5, 2, 39.5, 7.5]],
        },
        {"id": 13, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": light},
        {"id": 14, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": crowd},
        {"id": 15, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": [], "bbox": [0, 0, 3, 3]},
        {"id": 18, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [0, 0, 3, 3]},
        {"id": 16, "image_id": 2, "category_id": 5, "iscrowd": 0, "segmentation": first},
        {"id": 17, "image_id": 2, "category_id": 90, "iscrowd": 0, "segmentation": second},
    ]  # fmt: skip


def coco_json(anns: list[dict] | None = None, categories: list[dict] | None = None) -> dict:
    images = [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in IMAGES.items()]
    return {
        "images": images,
        "annotations": annotations() if anns is None else anns,
        "categories": CATEGORIES if categories is None else categories,
    }


def write_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for file_name, height, width in IMAGES.values():
        path = folder / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return folder


@pytest.fixture
def source(tmp_path) -> tuple[Path, Path]:
    """(instances JSON, images folder)."""
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_json()))
    return path, write_images(tmp_path / "photos")


def oracle(json_path: Path, image_id: int, class_of: dict, unlabeled: int, crowd_value: int | None = None):
    """The documented rule composed with NumPy from pycocotools' own ``annToMask``: larger areas first (stable
    sort, so equal areas keep file order), later painted over earlier; also the file-order composition."""
    coco = COCO(str(json_path))
    image = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if a.get("segmentation")]
    masks = [coco.annToMask(a).astype(bool) for a in anns]
    values = [crowd_value if a["iscrowd"] and crowd_value is not None else class_of[a["category_id"]] for a in anns]
    by_area = sorted(range(len(anns)), key=lambda i: -int(masks[i].sum()))
    labels = []
    for order in (by_area, range(len(anns))):
        label = np.full((image["height"], image["width"]), unlabeled, np.uint8)
        for i in order:
            label[masks[i]] = values[i]
        labels.append(label)
    return labels


def written_mask(out: Path, split: str, image_id: int) -> np.ndarray:
    return np.array(Image.open(out / "masks" / split / Path(IMAGES[image_id][0]).with_suffix(".png")))


def test_instance_masks_match_pycocotools(source, tmp_path):
    json_path, photos = source
    summary = import_coco(json_path, photos, tmp_path / "out", progress=False)
    assert summary.split_sizes == {"train": 3}
    assert (summary.annotations, summary.crowd, summary.skipped) == (6, 1, 2)
    for image_id in IMAGES:
        expected, file_order = oracle(json_path, image_id, WITH_BACKGROUND, unlabeled=0)
        np.testing.assert_array_equal(written_mask(tmp_path / "out", "train", image_id), expected)
        if image_id in (1, 2):  # the overlaps are real: painting in file order would give another mask
            assert (expected != file_order).any() == (image_id == 1)
    # image 1: the smaller person wins over the larger car it was listed before; image 2: equal areas, later wins
    assert written_mask(tmp_path / "out", "train", 1)[14, 14] == WITH_BACKGROUND[1]
    assert written_mask(tmp_path / "out", "train", 2)[8, 8] == WITH_BACKGROUND[90]
    assert (written_mask(tmp_path / "out", "train", 3) == 0).all()


def test_classes_txt_and_dataset_reads_back(source, tmp_path):
    json_path, photos = source
    out = tmp_path / "out"
    import_coco(json_path, photos, out, progress=False)
    # contiguous ids in category-id order after the background; colours: Pascal VOC's colour map
    assert (
        out / "classes.txt"
    ).read_text() == "background 0 0 0\nperson 128 0 0\ncar 0 128 0\ntraffic light 128 128 0\n"
    dataset = segformer.build_dataset("custom", out, "train")
    assert dataset.classes == ["background", "person", "car", "traffic light"]
    assert len(dataset) == 3
    for index in range(len(dataset)):
        image, mask = dataset[index]
        relative = dataset.image_path(index).relative_to(out / "images" / "train").as_posix()
        image_id = next(i for i, (name, _, _) in IMAGES.items() if name == relative)
        assert image.shape == (IMAGES[image_id][1], IMAGES[image_id][2], 3) and mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, written_mask(out, "train", image_id))
        assert dataset.image_path(index).read_bytes() == (photos / relative).read_bytes()  # copied as they are


def test_unlabeled_ignore_and_crowd_ignore(source, tmp_path):
    json_path, photos = source
    out = tmp_path / "out"
    summary = import_coco(json_path, photos, out, unlabeled="ignore", crowd="ignore", progress=False)
    assert summary.classes == ("person", "car", "traffic light") and summary.unlabeled == 255
    for image_id in IMAGES:
        expected, _ = oracle(json_path, image_id, WITHOUT_BACKGROUND, unlabeled=255, crowd_value=255)
        np.testing.assert_array_equal(written_mask(out, "train", image_id), expected)
    assert written_mask(out, "train", 1)[29, 39] == 255  # the crowd's corner, on no other annotation


def test_background_name_clash_and_rename(source, tmp_path):
    json_path, photos = source
    categories = [*CATEGORIES, {"id": 91, "name": "background"}]
    json_path.write_text(json.dumps(coco_json(categories=categories)))
    with pytest.raises(ValueError, match=r"category id 91 is named 'background'.*--background-name"):
        import_coco(json_path, photos, tmp_path / "out", progress=False)
    import_coco(json_path, photos, tmp_path / "out", background_name="unlabeled", progress=False)
    names, _ = read_classes_file(tmp_path / "out" / "classes.txt")
    assert names == ("unlabeled", "person", "car", "traffic light", "background")


def test_val_fraction_and_link(source, tmp_path):
    json_path, photos = source
    out = tmp_path / "out"
    summary = import_coco(json_path, photos, out, val_fraction=0.3, link=True, progress=False)
    assert summary.split_sizes == {"train": 2, "val": 1}
    # the val image: the smallest CRC-32 of the file names (independent of the JSON's order)
    val_name = min((name for name, _, _ in IMAGES.values()), key=lambda name: zlib.crc32(name.encode()))
    assert [p.relative_to(out / "images" / "val").as_posix() for p in (out / "images" / "val").rglob("*.*")] == [
        val_name
    ]
    for split in ("train", "val"):
        dataset = segformer.build_dataset("custom", out, split)
        for index in range(len(dataset)):
            relative = dataset.image_path(index).relative_to(out / "images" / split)
            assert os.path.samefile(dataset.image_path(index), photos / relative)  # hard links
    reversed_json = coco_json()
    reversed_json["images"].reverse()
    json_path.write_text(json.dumps(reversed_json))
    again = import_coco(json_path, photos, tmp_path / "again", val_fraction=0.3, progress=False)
    assert [p.name for p in (tmp_path / "again" / "images" / "val").rglob("*.*")] == [Path(val_name).name]
    assert again.split_sizes == summary.split_sizes


def test_second_split_next_to_the_first_and_class_mismatch(source, tmp_path):
    json_path, photos = source
    out = tmp_path / "out"
    import_coco(json_path, photos, out, split="train", progress=False)
    import_coco(json_path, photos, out, split="val", progress=False)
    assert len(segformer.build_dataset("custom", out, "val")) == 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps(coco_json(anns=[], categories=CATEGORIES[:2])))
    with pytest.raises(ValueError, match=r"classes.txt: lists other classes .*import into a new dataset folder"):
        import_coco(other, photos, out, split="test", progress=False)
    assert not (out / "images" / "test").exists()


def test_compressed_counts_decoder_matches_numpy_runs():
    """The checker's reading of COCO's compressed RLE strings against NumPy's run lengths of random masks."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = (rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()).astype(np.uint8)
        assert _compressed_counts(compressed_rle(mask)["counts"]) == uncompressed_rle(mask)["counts"]
    assert _compressed_counts("0P") is None  # "P" = 48 + 0x20: more characters follow, but none does


def write_panoptic(tmp_path: Path, extra_id: int | None = None) -> tuple[Path, np.ndarray]:
    """A panoptic JSON + PNG of image 1 (image 2 unannotated, image 3 left out); returns the segment-id map."""
    ids = np.zeros((30, 40), np.int64)
    ids[:10] = 1
    ids[10:20, :20] = 3 + 256
    ids[20:, 10:] = 7 + 2 * 256 * 256
    if extra_id is not None:
        ids[0, 0] = extra_id
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)
    (tmp_path / "panoptic").mkdir()
    Image.fromarray(rgb).save(tmp_path / "panoptic" / "a.png")
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "isthing": 1},
        {"id": 3 + 256, "category_id": 5, "iscrowd": 0},
        {"id": 7 + 2 * 256 * 256, "category_id": 90, "iscrowd": 1},
    ]
    data = coco_json(anns=[{"image_id": 1, "file_name": "a.png", "segments_info": segments}])
    data["images"] = data["images"][:2]
    data["categories"] = [dict(c, isthing=int(c["id"] != 90)) for c in CATEGORIES]
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    return tmp_path / "panoptic.json", ids


def test_panoptic_png_and_json(tmp_path):
    json_path, ids = write_panoptic(tmp_path)
    photos = write_images(tmp_path / "photos")
    out = tmp_path / "out"
    summary = import_coco(json_path, photos, out, progress=False)  # panoptic default: VOID -> 255, no background
    assert summary.panoptic and summary.classes == ("person", "car", "traffic light")
    assert (summary.annotations, summary.crowd) == (3, 1)
    lookup = {
        0: 255,
        1: WITHOUT_BACKGROUND[1],
        3 + 256: WITHOUT_BACKGROUND[5],
        7 + 2 * 256 * 256: WITHOUT_BACKGROUND[90],
    }
    np.testing.assert_array_equal(written_mask(out, "train", 1), np.vectorize(lookup.get)(ids))
    assert (written_mask(out, "train", 2) == 255).all()
    import_coco(json_path, photos, tmp_path / "crowd", unlabeled="background", crowd="ignore", progress=False)
    lookup = {0: 0, 1: WITH_BACKGROUND[1], 3 + 256: WITH_BACKGROUND[5], 7 + 2 * 256 * 256: 255}
    np.testing.assert_array_equal(written_mask(tmp_path / "crowd", "train", 1), np.vectorize(lookup.get)(ids))
    dataset = segformer.build_dataset("custom", out, "train")
    assert sorted(dataset[i][1].shape for i in range(len(dataset))) == [(24, 32), (30, 40)]


def test_panoptic_unlisted_segment_id_is_an_error(tmp_path):
    json_path, _ = write_panoptic(tmp_path, extra_id=5)
    with pytest.raises(ValueError, match=r"a\.png: segment id 5 .* at pixel x=0, y=0 .*image id 1"):
        import_coco(json_path, write_images(tmp_path / "photos"), tmp_path / "out", progress=False)


ROUTE_66 = [{"id": 1, "name": "route 66"}, *CATEGORIES[1:]]  # a name classes.txt cannot hold
SHORT_COUNTS = compressed_rle(np.ones((30, 30), np.uint8))["counts"]  # 900 pixels, for a 30×40 image


def bad_annotation(**changes) -> dict:
    return {"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]], **changes}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"annotations": [], "categories": CATEGORIES}, r"no key 'images'"),
        ([1, 2], r"the JSON holds a list"),
        (coco_json(anns=[bad_annotation(image_id=4)]), r"annotation id 7 .*'image_id' is 4"),
        (coco_json(anns=[bad_annotation(category_id=2)]), r"annotation id 7 .*'category_id' is 2.*\(ids 1, 5, 90\)"),
        (coco_json(anns=[bad_annotation(segmentation=[[1, 1, 5, 1]])]), r"annotation id 7 .*4 coordinates.*3 points"),
        (coco_json(anns=[bad_annotation(iscrowd=2)]), r"annotation id 7 .*'iscrowd' is 2"),
        (
            coco_json(anns=[bad_annotation(segmentation=compressed_rle(np.ones((30, 41), np.uint8)))]),
            r"annotation id 7 .*RLE size \[30, 41\]",
        ),
        (
            coco_json(anns=[bad_annotation(segmentation={"size": [30, 40], "counts": SHORT_COUNTS})]),
            r"annotation id 7 .*cover 900 pixels; expected height × width = 1200",
        ),
        (coco_json(categories=[*CATEGORIES, {"id": 5, "name": "bus"}]), r"category id 5: listed twice"),
        (coco_json(categories=ROUTE_66), r"category id 1: class name 'route 66' .*'66' is a plain number"),
    ],
)  # fmt: skip
def test_bad_json_errors_name_the_file_key_and_id(tmp_path, data, message):
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as caught:
        import_coco(json_path, write_images(tmp_path / "photos"), tmp_path / "out", progress=False)
    assert str(caught.value).startswith(str(json_path))
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_image_and_wrong_size(source, tmp_path):
    json_path, photos = source
    (photos / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the files it names are not there: .*b\.jpg \(image id 2\)"):
        import_coco(json_path, photos, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    write_images(photos)
    Image.new("RGB", (41, 30)).save(photos / "street" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: the image is 41×30 .* gives 40×30 for image id 1"):
        import_coco(json_path, photos, tmp_path / "out", progress=False)


def test_cli(source, tmp_path, capsys):
    json_path, photos = source
    out = tmp_path / "out"
    assert main(["import-coco", str(json_path), "--images", str(photos), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "3 images (train 3), 6 annotations, 1 of them crowd (as their category); 2 annotations without" in printed
    np.testing.assert_array_equal(written_mask(out, "train", 1), oracle(json_path, 1, WITH_BACKGROUND, 0)[0])
    json_path.write_text(json.dumps(coco_json(anns=[bad_annotation(category_id=3)])))
    assert main(["import-coco", str(json_path), "--images", str(photos), "--out", str(tmp_path / "o2"), "-q"]) == 1
    assert "annotation id 7 (annotations[0]): key 'category_id' is 3" in capsys.readouterr().err


def test_cvat_labelmap_to_classes_txt(tmp_path):
    labelmap = tmp_path / "labelmap.txt"
    labelmap.write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad surface:128,64,128::\ncar:0,0,142:wheel:\n"
    )
    names = write_labelmap_classes(labelmap, tmp_path / "classes.txt")
    assert names == ("background", "road surface", "car")
    assert read_classes_file(tmp_path / "classes.txt") == (names, ((0, 0, 0), (128, 64, 128), (0, 0, 142)))
    labelmap.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:0,0::\n")
    with pytest.raises(ValueError, match=r"labelmap\.txt:3: label 'car' has no colour r,g,b"):
        labelmap_classes(labelmap)
    labelmap.write_text("background:0,0,0::\nroute 66:1,2,3::\n")
    with pytest.raises(ValueError, match=r"label 'route 66': class name 'route 66' .*plain number"):
        write_labelmap_classes(labelmap, tmp_path / "classes.txt")

"""``import_coco`` throughput on synthetic COCO instances: annotations per second, end to end and per stage.

Writes a synthetic COCO file (``--images`` images of ``--size``, ``--per-image`` annotations each: polygons of 3-24
points, compressed RLE and uncompressed RLE in turn, some crowds, many overlaps) and JPEG images in a temporary
folder, then times (median of ``--rounds``) reading and checking the JSON (``read_coco``), composing every mask
(``instance_mask``), the same composition through pycocotools' ``COCO`` API (``annToMask`` per annotation,
the tests' oracle; ratio printed) and the whole ``import_coco`` (images copied, masks written).

python benchmarks/import_coco.py                                  # 200 images × 15 = 3000 annotations
python benchmarks/import_coco.py --images 500 --per-image 10 --size 640x480
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _run import median_ms
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from segformer.data.coco import coco_classes, instance_mask, read_coco
from segformer.data.coco_import import import_coco


def polygon(rng: np.random.Generator, height: int, width: int) -> list[list[float]]:
    points = int(rng.integers(3, 25))
    centre = rng.uniform([0, 0], [width, height])
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radius = rng.uniform(0.03, 0.3) * min(height, width) * rng.uniform(0.6, 1.0, points)
    xy = np.clip(centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radius[:, None], 0, [width, height])
    return [xy.ravel().round(2).tolist()]


def rle(rng: np.random.Generator, height: int, width: int, compressed: bool) -> dict:
    mask = np.zeros((height, width), np.uint8, order="F")
    y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
    mask[y : y + int(rng.integers(8, height // 3)), x : x + int(rng.integers(8, width // 3))] = 1
    encoded = coco_mask.encode(mask)
    if compressed:
        return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    return {"size": [height, width], "counts": ([0] if flat[0] else []) + np.diff(bounds).tolist()}


def write_source(folder: Path, images: int, per_image: int, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "photos").mkdir(parents=True)
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        name = f"{image_id:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / "photos" / name)
        entries.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for k in range(per_image):
            kind = k % 3
            segmentation = polygon(rng, height, width) if kind == 0 else rle(rng, height, width, kind == 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 5, 90, 17])),
                    "iscrowd": int(kind == 2 and k % 5 == 2),
                    "segmentation": segmentation,
                }
            )
    categories = [{"id": i, "name": f"class-{i}"} for i in (1, 5, 17, 90)]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def compose_with_coco_api(path: Path, class_of: dict) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for image_id, image in coco.imgs.items():
        anns = coco.imgToAnns[image_id]
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        label = np.zeros((image["height"], image["width"]), np.uint8)
        for i in sorted(range(len(anns)), key=lambda i: -int(masks[i].sum())):
            label[masks[i]] = class_of[anns[i]["category_id"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-image", type=int, default=15)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    count = args.images * args.per_image
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = write_source(folder, args.images, args.per_image, height, width)
        coco = read_coco(path)
        classes = coco_classes(coco)

        def compose() -> None:
            for image in coco.images:
                instance_mask(image, coco.annotations[image.id], classes)

        def whole() -> None:
            shutil.rmtree(folder / "out", ignore_errors=True)
            import_coco(path, folder / "photos", folder / "out", progress=False)

        stages = {
            "read + check JSON": median_ms(lambda: read_coco(path), args.rounds),
            "compose masks": median_ms(compose, args.rounds),
            "compose via COCO.annToMask": median_ms(lambda: compose_with_coco_api(path, classes.class_of), args.rounds),
            "import_coco (copy + write)": median_ms(whole, args.rounds),
        }
    print(f"{args.images} images {width}×{height}, {count} annotations (polygons, compressed and uncompressed RLE)")
    for name, ms in stages.items():
        print(f"  {name:<28} {ms / 1000:7.3f} s   {count / (ms / 1000):9.0f} annotations/s")
    ratio = stages["compose via COCO.annToMask"] / stages["compose masks"]
    print(f"  composing: ours is {ratio:.2f}× the speed of the COCO API route")


if __name__ == "__main__":
    main()

"""Streamed raster prediction (``segformer.raster.predict_raster``) of a large synthetic GeoTIFF through B0 on the CPU:
peak RSS and pixels per second, against what the in-memory ``Segmenter`` would need for the same raster.

The raster (3 uint8 bands, tiled 512×512, deflate, EPSG:32633, 0.5 m pixels, nodata 0) is made once in
``--workdir`` from smooth random blobs, so it compresses well and is quick to write. The prediction runs in a fresh
interpreter (random-weight B0 with ``--classes`` classes, ``--threads`` threads, slide at ``--crop``/``--stride``,
no resize); its peak RSS (``ru_maxrss``) is reported whole and as the rise over the RSS before the call.

The in-memory path on an H×W image holds the uint8 image (3HW bytes), its normalised float32 copy and transpose
(24HW), the slide accumulator and count (4KHW + 4HW), their quotient (4KHW) and the int64 argmax (8HW):
about HW·(8K + 39) bytes, which is what the "in-memory estimate" column gives.

    python benchmarks/raster.py [--size 20000 20000] [--crop 512 512] [--stride 512 512] [--classes 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE = 512


def make_raster(path: Path, height: int, width: int) -> None:
    """A 3-band uint8 GeoTIFF of smooth blobs (one random colour per 64×64 cell, a gradient, nodata 0 corner)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32633")
    profile.update(transform=from_origin(500000.0, 5000000.0, 0.5, 0.5), nodata=0, photometric="MINISBLACK")
    profile.update(tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate", BIGTIFF="IF_SAFER")
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dataset:
        for top in range(0, height, TILE):
            rows = min(TILE, height - top)
            cells = rng.integers(1, 256, (3, -(-rows // 64), -(-width // 64)), dtype=np.uint8)
            strip = np.repeat(np.repeat(cells, 64, axis=1), 64, axis=2)[:, :rows, :width]
            strip = strip // 2 + (np.arange(width, dtype=np.uint16) * 127 // max(width - 1, 1)).astype(np.uint8)
            if top == 0:
                strip[:, : min(rows, 100), :100] = 0
            dataset.write(strip, window=Window(0, top, width, rows))
    tmp.rename(path)


def worker(args: argparse.Namespace) -> None:
    import torch

    from segformer import create_model
    from segformer.inference import Segmenter
    from segformer.raster import memory_bound, native_protocol, predict_raster

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("b0", num_classes=args.classes).eval()
    segmenter = Segmenter(model, native_protocol(crop=tuple(args.crop), stride=tuple(args.stride)), dtype=args.dtype)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = predict_raster(segmenter, args.raster, args.out, scores=args.scores, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bound = memory_bound(result.width, args.classes, 3, args.crop, args.stride, scores=args.scores)
    pixels = result.height * result.width
    report = {
        "size": f"{result.height}x{result.width}",
        "windows": result.windows,
        "precision": segmenter.precision,
        "seconds": round(seconds, 1),
        "megapixels_per_second": round(pixels / seconds / 1e6, 3),
        "windows_per_second": round(result.windows / seconds, 2),
        "peak_rss_mb": round(peak / 2**20),
        "rss_rise_mb": round((peak - before) / 2**20),
        "memory_bound_mb": round(bound / 2**20),
        "in_memory_estimate_mb": round(pixels * (8 * args.classes + 39) / 2**20),
    }
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[20000, 20000], metavar=("H", "W"))
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--stride", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--scores", action="store_true", help="also write the scores GeoTIFF")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segformer-raster-benchmark"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raster", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    height, width = args.size
    raster = args.workdir / f"synthetic_{height}x{width}.tif"
    if not raster.exists():
        start = time.perf_counter()
        make_raster(raster, height, width)
        print(f"wrote {raster} ({raster.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - start:.0f} s")
    forwarded = sys.argv[1:] + ["--worker", "--raster", str(raster), "--out", str(args.workdir / "labels.tif")]
    subprocess.run([sys.executable, __file__, *forwarded], check=True)


if __name__ == "__main__":
    main()

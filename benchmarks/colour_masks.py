"""Colour-mask decoding: ``MaskCoding.decode`` (packed colour, perfect-hash table) against two NumPy lookups.

Times (median of ``--rounds``) the class ids of one random ``--size`` RGB mask of ``--classes`` colours through
``MaskCoding.decode``, through a sorted table and ``np.searchsorted`` on the same packed colours, and through
``np.unique(axis=0, return_inverse=True)`` over the pixels' colours (the last once: it is slow); the PNG decode of
the same mask is timed for scale. Ratios are printed against ``decode``; all three give the same ids (checked).

python benchmarks/colour_masks.py                                 # 2048x1024, 19 colours (Cityscapes' palette)
python benchmarks/colour_masks.py --size 512x512 --classes 150
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from _run import median_ms
from PIL import Image

from segformer.data.classes import default_palette
from segformer.data.mask_coding import MaskCoding, pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2048x1024", help="mask width x height")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    palette = default_palette(args.classes + 1)[1:]  # distinct colours
    ids = rng.integers(0, args.classes, (height, width)).astype(np.uint8)
    rgb = palette[ids]
    coding = MaskCoding("colour", Path("mask.png"), tuple(map(tuple, palette.tolist())), tuple(range(args.classes)))
    table = pack(palette)
    order = np.argsort(table)

    def searchsorted() -> np.ndarray:
        return order[np.searchsorted(table[order], pack(rgb))].astype(np.uint8)

    def unique() -> np.ndarray:
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        return order[np.searchsorted(table[order], pack(colours))][inverse.ravel()].reshape(ids.shape)

    for name, call in [("decode", coding.decode), ("searchsorted", searchsorted), ("unique", unique)]:
        np.testing.assert_array_equal(call(rgb) if name == "decode" else call(), ids, err_msg=name)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    times = {
        "MaskCoding.decode": median_ms(lambda: coding.decode(rgb), args.rounds, warmup=1),
        "np.searchsorted": median_ms(searchsorted, args.rounds, warmup=1),
        "np.unique(axis=0)": median_ms(unique, 1),
        "PNG decode (Pillow)": median_ms(lambda: np.asarray(Image.open(io.BytesIO(png.getvalue()))), args.rounds),
    }
    print(f"{width}x{height} mask, {args.classes} colours")
    for name, ms in times.items():
        print(f"  {name:<20} {ms:9.1f} ms  {ms / times['MaskCoding.decode']:6.2f}x")


if __name__ == "__main__":
    main()

"""Video segmentation throughput (``segformer.video.predict_video``): frames per second at 512² for B0 on the CPU,
and the share of decoding, inference and encoding, on a synthetic H.264 clip made here.

Cases: the overlay video at batch 8 and batch 1, the label video alone, and everything (overlay, labels,
confidence, smoothing: one ``predict_logits`` per frame). Decoding runs in its own thread, so the shares are of the
busy time (decode + infer + encode), not of the wall time.

python benchmarks/video.py                          # random B0, 19 classes, 32 frames of 512×512
python benchmarks/video.py --weights RUN/best --frames 64 --size 512 512 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

import segformer
from segformer.config import TestProtocol
from segformer.inference import Segmenter
from segformer.video import predict_video


def scene(k: int, height: int, width: int) -> np.ndarray:
    """Frame k of a street-like scene: sky and road gradients, a moving box, a few static blobs."""
    y, x = np.mgrid[:height, :width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = np.where(y < height // 2, 90 + 60 * y // height, 70)
    image[..., 1] = np.where(y < height // 2, 140 + 60 * y // height, 70 + 30 * x // width)
    image[..., 2] = np.where(y < height // 2, 230, 75)
    left = (8 * k) % max(width - width // 4, 1)
    image[height // 2 - height // 8 : height // 2 + height // 8, left : left + width // 4] = (200, 30, 30)
    for i in range(5):
        cy, cx = (37 * i) % height, (91 * i + 40) % width
        image[(y - cy) ** 2 + (x - cx) ** 2 < (height // 16) ** 2] = (30, 120 + 20 * i, 40)
    return image


def write_clip(path: Path, frames: int, height: int, width: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25), options={"crf": "20"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(scene(k, height, width), format="rgb24")))
        container.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint file or folder (default: a random B0 with 19 classes)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = segformer.from_pretrained(args.weights) if args.weights else segformer.create_model("b0", num_classes=19)
    segmenter = Segmenter(model, TestProtocol(mode="whole", scale=None))
    height, width = args.size
    print(f"{model.config.variant}, {model.num_classes} classes, {width}×{height}, {args.frames} frames, ")
    print(f"{args.threads} threads, {segmenter.precision}, overlay codec libx264 crf 18 veryfast\n")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clip = folder / "clip.mp4"
        write_clip(clip, args.frames, height, width)
        cases = {
            "overlay, batch 8": dict(out_path=folder / "o.mp4"),
            "overlay, batch 1": dict(out_path=folder / "o.mp4", batch_size=1),
            "labels only": dict(out_path=None, labels_out=folder / "l.mkv"),
            "all + smooth 0.5": dict(
                out_path=folder / "o.mp4", labels_out=folder / "l.mkv", scores_out=folder / "s.mkv", smooth=0.5
            ),
        }
        predict_video(segmenter, clip, folder / "warm.mp4", max_frames=2, progress=False)
        print(f"{'case':<20} {'frames/s':>8} {'decode':>7} {'infer':>7} {'encode':>7}   ms per frame: dec/inf/enc")
        for name, options in cases.items():
            stats = predict_video(segmenter, clip, progress=False, **{"batch_size": 8, **options})
            busy = stats.decode_seconds + stats.infer_seconds + stats.encode_seconds
            shares = [getattr(stats, f"{part}_seconds") for part in ("decode", "infer", "encode")]
            per_frame = "/".join(f"{1000 * s / stats.frames:.0f}" for s in shares)
            columns = " ".join(f"{100 * s / busy:>6.0f}%" for s in shares)
            print(f"{name:<20} {stats.fps:>8.2f} {columns}   {per_frame}")
        print(f"\n{dataclasses.asdict(stats)}")


if __name__ == "__main__":
    main()

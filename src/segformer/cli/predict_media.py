"""The inputs of ``segformer predict`` other than photos: rasters (``segformer.raster``) and videos
(``segformer.video``), their flags, output names and manifest lines; and the job list all three kinds share.

**Which path an input takes.** A file whose suffix is a video's (``segformer.video_source.VIDEO_SUFFIXES``) is a
video. A ``.tif``/``.tiff`` is a raster, streamed window by window, when it is georeferenced (GeoTIFF tags, or a
``.tfw`` world file beside it), larger than ``LARGE_RASTER_PIXELS`` or given ``--bands``; any other TIFF is a
photo (label PNG). The decision reads the TIFF's tags with Pillow (any band count and sample type), so it needs
no rasterio.

**Rasters** run in slide mode at native resolution (mmseg ``slide_inference`` on the raster as it is, the way
remote-sensing models are tested), with the weights' crop and stride or ``--crop/--stride``; the protocol's test
scale, size divisor, whole mode and ``--aug`` do not apply to them, and one line says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segformer.cli.common import plural, positive_int

if TYPE_CHECKING:
    from segformer.inference import Segmenter

RASTER_SUFFIXES = (".tif", ".tiff")
LARGE_RASTER_PIXELS = 4096 * 4096  # a plain TIFF with more pixels takes the streamed raster path
GEOTIFF_TAGS = {33550, 33922, 34264, 34735}  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
WORLD_FILE_SUFFIXES = (".tfw", ".tifw", ".tiffw")
VIDEO_BATCH_SIZE = 8  # frames per step when --batch-size is not given
LIVE_STEM = "live"  # --source writes OUT/live_overlay.mp4 …
VIDEO_NEEDS_PYAV = "segmenting videos needs PyAV: pip install 'segformer[video]'"


@dataclasses.dataclass
class Job:
    """One input of a run: its place in the input list, the file (or live source), its kind ("image", "raster"
    or "video"), its output stem and the files it writes, by manifest key (``outputs_of``)."""

    index: int
    source: Path | str | int
    kind: str
    stem: str
    outputs: dict[str, Path]


def smooth_weight(text: str) -> float:
    """argparse type: the weight of the past in the moving average, in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (the weight of the past), got {value}")
    return value


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of rasters and videos."""
    raster = parser.add_argument_group("rasters (.tif/.tiff: GeoTIFF, BigTIFF; needs segformer[geo])")
    raster.add_argument(
        "--bands",
        type=positive_int,
        nargs="+",
        metavar="B",
        help="1-based bands, one per model input channel, e.g. 4 3 2 (default: the first ones); a TIFF given "
        "--bands is always streamed as a raster",
    )
    raster.add_argument(
        "--polygons",
        nargs="?",
        const="geojson",
        choices=["geojson", "gpkg"],
        help="also write the class regions (raster CRS) as <stem>_classes.geojson, or .gpkg (GeoPackage, needs fiona)",
    )
    video = parser.add_argument_group("videos (.mp4, .mkv, .mov, .avi …; needs segformer[video])")
    video.add_argument(
        "--source",
        metavar="SOURCE",
        help="live input instead of INPUT files: a webcam number (0) or a stream URL (rtsp://, http://); frames "
        f"are dropped when inference is slower; written to OUT/{LIVE_STEM}_overlay.mp4 (Ctrl-C ends it)",
    )
    video.add_argument(
        "--label-video", action="store_true", help="also write the class ids as a lossless <stem>_labels.mkv"
    )
    video.add_argument(
        "--smooth",
        type=smooth_weight,
        metavar="ALPHA",
        help="moving average of the probabilities over frames, ALPHA the weight of the past in [0, 1) "
        "(default: off; it changes the results)",
    )
    video.add_argument("--no-legend", action="store_true", help="overlay video at the input's size, no legend")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop each video after N frames")


def live_source(text: str) -> str | int:
    """``--source``: a webcam number as an int, anything else (a URL, a file) as it is."""
    return int(text) if text.isdigit() else text


def is_video_input(path: Path) -> bool:
    from segformer.video_source import is_video_file

    return is_video_file(path)


def video_suffixes() -> tuple[str, ...]:
    from segformer.video_source import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def tiff_tags(path: Path) -> dict[int, object]:
    """The tags of a TIFF's first image (Pillow's ``ImageFileDirectory_v2``: the header alone, for any band count
    or sample type, BigTIFF too); empty for a file that is not a readable TIFF."""
    import struct

    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as file:
            header = file.read(16)
            tags = TiffImagePlugin.ImageFileDirectory_v2(header[: 16 if header[2:3] == b"+" else 8])
            file.seek(tags.next)
            tags.load(file)
            return dict(tags)
    except (OSError, SyntaxError, ValueError, struct.error):
        return {}


def takes_raster_path(path: Path, bands_given: bool) -> bool:
    """Whether the TIFF ``path`` is streamed as a raster (module docstring) rather than read as a photo."""
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return False
    if bands_given or any(path.with_suffix(suffix).is_file() for suffix in WORLD_FILE_SUFFIXES):
        return True
    tags = tiff_tags(path)
    width, height = tags.get(256, 0), tags.get(257, 0)  # ImageWidth, ImageLength
    return bool(GEOTIFF_TAGS & set(tags)) or width * height > LARGE_RASTER_PIXELS


def input_kind(path: Path, bands_given: bool) -> str:
    """ "video", "raster" or "image": the path ``path`` takes."""
    if is_video_input(path):
        return "video"
    return "raster" if takes_raster_path(path, bands_given) else "image"


def outputs_of(kind: str, out: Path, stem: str, args: argparse.Namespace) -> dict[str, Path]:
    """The files a job writes, by manifest key: the label map and overlay (images, rasters) or the overlay video,
    then those the flags ask for."""
    if kind == "video":
        asked = {"labels": args.label_video, "scores": args.scores}
        files = {"overlay": f"{stem}_overlay.mp4", "labels": f"{stem}_labels.mkv", "scores": f"{stem}_scores.mkv"}
    elif kind == "raster":
        asked = {"scores": args.scores, "polygons": args.polygons}
        files = {"label": f"{stem}_label.tif", "overlay": f"{stem}_overlay.png", "scores": f"{stem}_scores.tif"}
        files["polygons"] = f"{stem}_classes.{args.polygons or 'geojson'}"
    else:
        asked = {"confidence": args.scores, "entropy": args.scores}
        files = {"label": f"{stem}_label.png", "overlay": f"{stem}_overlay.{args.overlay_format}"}
        files |= {"confidence": f"{stem}_confidence.png", "entropy": f"{stem}_entropy.png"}
    return {key: out / name for key, name in files.items() if asked.get(key, True)}


def manifest_entry(job: Job, out: Path, **fields) -> dict:
    """The manifest line of a job: the input, its outputs relative to OUT, then ``fields``."""
    paths = {key: str(path.relative_to(out)) for key, path in job.outputs.items()}
    return {"input": str(job.source), **paths, **fields}


def require_libraries(kinds: set[str]) -> None:
    """Import the raster and video modules the jobs need, so that a missing rasterio or PyAV stops the run with
    its one-line pip hint before anything is segmented."""
    if "raster" in kinds:
        import segformer.raster  # noqa: F401  (raises its own ImportError with the hint)
    if "video" in kinds:
        try:
            import segformer.video  # noqa: F401
        except ImportError as e:
            if (e.name or "").split(".")[0] != "av":
                raise
            raise ImportError(VIDEO_NEEDS_PYAV) from None


def raster_segmenter(segmenter: Segmenter) -> Segmenter:
    """The segmenter of rasters: ``segmenter``'s network, crop, stride and normalisation in slide mode at native
    resolution (``segformer.raster.native_protocol``); one line names what of the protocol is left out."""
    from segformer.inference import Segmenter
    from segformer.raster import native_protocol

    protocol = segmenter.protocol
    left_out = [f"scale {protocol.scale[0]}×{protocol.scale[1]}"] * (protocol.scale is not None)
    left_out += [f"size divisor {protocol.size_divisor}"] * (protocol.size_divisor is not None)
    left_out += ["whole-image mode"] * (protocol.mode == "whole") + ["multi-scale/flip (--aug)"] * segmenter.aug
    if left_out:
        (ch, cw), (sh, sw) = protocol.crop, protocol.stride
        print(
            f"segformer predict: rasters are segmented at native resolution in {ch}×{cw} windows, stride {sh}×{sw}; "
            f"the protocol's {', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} not applied to them",
            file=sys.stderr,
        )
    return Segmenter(segmenter.model, native_protocol(protocol), runner=segmenter.runner)


def predict_raster_job(segmenter: Segmenter, job: Job, args: argparse.Namespace, out: Path) -> dict:
    """Stream one raster through ``segformer.raster.predict_raster``; its manifest line."""
    from segformer.raster import predict_raster

    outputs = job.outputs
    result = predict_raster(
        segmenter,
        job.source,
        outputs["label"],
        bands=args.bands,
        scores=outputs.get("scores", False),
        polygons=outputs.get("polygons", False),
        preview=outputs["overlay"],
        alpha=args.alpha,
        progress=not args.quiet,
    )
    return manifest_entry(job, out, height=result.height, width=result.width, class_pixels=result.class_pixels)


def existing_raster_entry(job: Job, names: list[str], out: Path) -> dict:
    """The manifest line of a raster whose outputs exist, its class pixels counted tile by tile."""
    import numpy as np
    import rasterio

    counts = np.zeros(256, np.int64)
    with rasterio.open(job.outputs["label"]) as labels:
        for _, window in labels.block_windows(1):
            counts += np.bincount(labels.read(1, window=window).ravel(), minlength=256)
        size = {"height": labels.height, "width": labels.width}
    pixels = {names[k]: int(counts[k]) for k in np.flatnonzero(counts[: len(names)])}
    return manifest_entry(job, out, **size, class_pixels=pixels)


def predict_video_job(segmenter: Segmenter, job: Job, args: argparse.Namespace, out: Path) -> dict:
    """Segment one video or live source through ``segformer.video.predict_video``; print its frames per second;
    its manifest line (frames written; a video's class pixels are not counted)."""
    from segformer.video import predict_video

    outputs = job.outputs
    stats = predict_video(
        segmenter,
        job.source,
        outputs["overlay"],
        batch_size=args.batch_size or VIDEO_BATCH_SIZE,
        labels_out=outputs.get("labels"),
        scores_out=outputs.get("scores"),
        smooth=args.smooth,
        legend=not args.no_legend,
        alpha=args.alpha,
        max_frames=args.max_frames,
        progress=not args.quiet,
    )
    print(stats.summary())
    return manifest_entry(job, out, frames=stats.frames)


def existing_video_entry(job: Job, out: Path) -> dict:
    """The manifest line of a video whose outputs exist: its frames, counted from the overlay's packets."""
    import av

    with av.open(str(job.outputs["overlay"])) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    return manifest_entry(job, out, frames=frames)


def written_note(images: int, rasters: int, videos: int) -> str:
    """``"3 label maps and overlays, 1 raster and 2 videos"``: what a run wrote."""
    parts = (
        [plural(images, "label map and overlay", "label maps and overlays")] if images or not rasters + videos else []
    )
    parts += [plural(rasters, "raster")] * bool(rasters) + [plural(videos, "video")] * bool(videos)
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]

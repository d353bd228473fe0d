"""Segmentation of videos and live streams through PyAV (FFmpeg's Python binding): ``predict_video``.

**Input** (``segformer.video_source``): a file FFmpeg reads, a webcam (int n: /dev/videoN, Linux) or a URL, decoded in a
thread that runs ahead of the network. A **file** is read completely and segmented ``batch_size`` frames at a time
(``Segmenter.predict_batch``); a **live** source (webcam, URL, or ``live=True``) is never waited for: the queue keeps
the ``batch_size`` newest frames, older ones are dropped and counted (``VideoStats.dropped``), and each pass takes
the frames that are there. Ctrl-C (or the stream's end) stops a live run, and its outputs are completed.

**Outputs** (each written to a temporary file and renamed when the run is complete, so a failed or killed run
leaves none; ``segformer.fileio.atomic_write_all``):

* the **overlay video** (.mp4, .m4v, .mov, .mkv or .avi): every frame as ``segformer.visualize.overlay`` draws it,
  the class colours blended in above a legend of the classes present, largest first. A video has one frame size,
  so the frames lie on a white canvas sized (once, by ``overlay_size``) for the legend of the ``LEGEND_CLASSES``
  classes with the longest names; rows of a larger legend (the smallest classes) are cut off. ``legend=False``
  keeps the input's size exactly. H.264 (``libx264``, crf 18) where the FFmpeg build has it, else MPEG-4 part 2,
  in yuv420p, whose sides must be even: an odd side is padded by one row/column (a copy of the last).
* the **label video** (``labels_out``, .mkv): the class ids as lossless FFV1 grayscale frames (gray8; gray16le
  beyond 256 classes) at the input's size. Read frame k back with PyAV: ``frame.to_ndarray()``.
* the **confidence video** (``scores_out``, .mkv): two lossless FFV1 gray16le streams, stream 0 the confidence
  (max probability) and stream 1 the normalised entropy, on the scales of ``segformer.scores``.

Every output has the input's frame rate; frame k has the timestamp of input frame k (k counts decoded frames, so a
live run's dropped frames leave gaps and the timing stays right). A file's outputs have its frame count.

**Temporal smoothing** (``smooth=α``, off by default because it changes the results): an exponential moving
average of the softmax probabilities, p_t = α·p_{t−1} + (1 − α)·softmax(logits_t), p_0 = softmax(logits_0); α is
the weight of the past (0: no smoothing, the same labels as without). Labels and confidence are then the argmax
and ``segformer.scores.confidence`` of p_t. Smoothing and ``scores_out`` need probabilities: frames are then run one
at a time through ``Segmenter.predict_logits`` (softmax of it is mmseg's averaged probability), in float64.

**Errors** (ValueError naming the file or source and what was expected): unknown output suffixes, a missing or
unreadable file or URL, a file without a video stream or without a decodable frame, frames changing size, and a
**truncated or corrupt file**: the frames before the damage are segmented, then the run stops with an error naming
the file and the first frame that could not be decoded (or the frame count the file declares), and **no output is
written**. A live stream that fails midway ends the run with a warning; what was segmented until then is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from segformer.data import default_palette
from segformer.fileio import atomic_write_all
from segformer.inference import Segmenter, label_dtype
from segformer.progress import progress_bar
from segformer.scores import confidence, probabilities
from segformer.video_source import LIVE_TIMEOUT, Frame, FrameQueue, VideoSource, read_ahead
from segformer.visualize import model_palette, overlay

OVERLAY_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
LOSSLESS_SUFFIX = ".mkv"  # label and confidence videos: FFV1 in Matroska
LEGEND_CLASSES = 12  # the overlay canvas fits the legend of this many classes
ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "veryfast"}}


@dataclasses.dataclass
class VideoStats:
    """What ``predict_video`` did: frames segmented and written, live frames dropped, and where the time went
    (decoding runs in its own thread, beside inference and encoding)."""

    source: str
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    infer_seconds: float = 0.0
    encode_seconds: float = 0.0  # overlay drawing and all encoding

    @property
    def fps(self) -> float:
        """Frames segmented per second of wall time."""
        return self.frames / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        dropped = f", {self.dropped} dropped" if self.dropped else ""
        return (
            f"{self.source}: {self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} frames/s{dropped}; "
            f"decode {self.decode_seconds:.1f} s, infer {self.infer_seconds:.1f} s, encode {self.encode_seconds:.1f} s)"
        )


def overlay_size(height: int, width: int, palette: np.ndarray, names: Sequence[str]) -> tuple[int, int]:
    """(height, width) of the overlay video's frames for ``height`` × ``width`` input: the larger of the overlays
    of a label map holding the ``LEGEND_CLASSES`` classes with the longest names in equal shares, and of the
    class with the longest name alone (its legend entry at 100%)."""
    photo = np.zeros((height, width, 3), np.uint8)
    longest = sorted(range(len(names)), key=lambda k: -len(names[k]))[:LEGEND_CLASSES]
    shown = np.array(longest, np.int32)[np.arange(height * width) % len(longest)].reshape(height, width)
    sizes = [overlay(photo, label, palette, names).size for label in (shown, np.full_like(shown, longest[0]))]
    return max(h for _, h in sizes), max(w for w, _ in sizes)


class Encoder:
    """One video stream of an output container, fed H×W(×3) arrays with their timestamps (in frames)."""

    def __init__(self, container: Any, codec: str, rate: Fraction, size: tuple[int, int], formats: tuple[str, str]):
        self.container, (self.pix_fmt, self.frame_format) = container, formats
        self.stream = container.add_stream(codec, rate=rate, options=ENCODER_OPTIONS.get(codec, {}))
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = self.pix_fmt
        self.time_base = Fraction(1) / rate
        if codec == "mpeg4":  # its default 200 kbit/s blurs; about 1 bit per pixel at 25 frames/s
            self.stream.bit_rate = int(size[0] * size[1] * rate)

    def encode(self, array: np.ndarray, index: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self.frame_format)
        frame.pts, frame.time_base = index, self.time_base
        self.container.mux(self.stream.encode(frame))

    def flush(self) -> None:
        self.container.mux(self.stream.encode(None))


@dataclasses.dataclass(frozen=True)
class OverlayStyle:
    """How the overlay video looks: class colours and names, colour weight, legend, codec (None: the default)."""

    palette: np.ndarray
    names: Sequence[str]
    alpha: float = 0.5
    legend: bool = True
    codec: str | None = None


class VideoOutputs:
    """The overlay, label and confidence videos of one run (temporary ``paths``, None where not asked, in the
    containers ``formats``), opened on the first frame, whose size they keep."""

    def __init__(self, paths: Sequence[str | None], formats: Sequence[str], style: OverlayStyle) -> None:
        self.paths, self.formats, self.style = paths, formats, style
        self.containers: list[Any] = []
        self.encoders: dict[str, list[Encoder]] = {}
        self.size: tuple[int, int] | None = None
        self.canvas = (0, 0)

    def _open(self, size: tuple[int, int], rate: Fraction) -> None:
        style, self.size = self.style, size
        codec = style.codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        self.canvas = overlay_size(*size, style.palette, style.names) if style.legend else size
        even = (self.canvas[0] + self.canvas[0] % 2, self.canvas[1] + self.canvas[1] % 2)
        gray = ("gray", "gray") if label_dtype(len(style.names)).itemsize == 1 else ("gray16le", "gray16le")
        layouts = {
            "overlay": [(codec, even, ("yuv420p", "rgb24"))],
            "labels": [("ffv1", size, gray)],
            "scores": [("ffv1", size, ("gray16le", "gray16le"))] * 2,
        }
        for (kind, layout), path, container_format in zip(layouts.items(), self.paths, self.formats, strict=True):
            if path is not None:
                container = av.open(path, mode="w", format=container_format)
                self.containers.append(container)
                self.encoders[kind] = [Encoder(container, c, rate, s, f) for c, s, f in layout]

    def write(self, frame: Frame, label: np.ndarray, scores: Sequence[np.ndarray] | None, source: VideoSource) -> None:
        """Append frame ``frame``'s overlay, labels and confidence maps (``scores``) to the outputs asked for."""
        index, image = frame
        if self.size is None:
            self._open(image.shape[:2], source.rate)
        elif image.shape[:2] != self.size:
            (h, w), (height, width) = self.size, image.shape[:2]
            raise ValueError(f"{source.name}: frame {index} is {width}×{height}, but the video began at {w}×{h}")
        if "overlay" in self.encoders:
            self.encoders["overlay"][0].encode(self._overlay(image, label), index)
        if "labels" in self.encoders:
            self.encoders["labels"][0].encode(label if label.dtype == np.uint8 else label.astype(np.uint16), index)
        for encoder, plane in zip(self.encoders.get("scores", []), scores or (), strict=False):
            encoder.encode(plane, index)

    def _overlay(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        """``visualize.overlay`` on the white canvas, cut to it, sides padded to even with a copy of the last."""
        style, (height, width) = self.style, self.canvas
        picture = np.asarray(overlay(image, label, style.palette, style.names, alpha=style.alpha))
        canvas = np.full((height, width, 3), 255, np.uint8)
        rows, cols = min(picture.shape[0], height), min(picture.shape[1], width)
        canvas[:rows, :cols] = picture[:rows, :cols]
        return np.pad(canvas, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")

    def close(self) -> None:
        """Flush the encoders and close the files."""
        for encoders in self.encoders.values():
            for encoder in encoders:
                encoder.flush()
        for container in self.containers:
            container.close()

    def abort(self) -> None:
        """Close the files of a failed run (their temporary files are removed by the caller)."""
        for container in self.containers:
            try:
                container.close()
            except av.FFmpegError:  # a half-written container may not take its trailer
                pass


class FramePredictor:
    """Labels (and confidence) of batches of frames, with the optional exponential moving average of the
    probabilities carried from frame to frame (module docstring)."""

    def __init__(self, segmenter: Segmenter, smooth: float | None, scores: bool) -> None:
        self.segmenter, self.smooth, self.scores = segmenter, smooth, scores
        self.previous = None

    def __call__(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, Any]]:
        if self.smooth is None and not self.scores:
            return [(label, None) for label in self.segmenter.predict_batch(list(images))]
        results = []
        for image in images:
            probs = probabilities(self.segmenter.predict_logits(image))
            if self.smooth is not None:
                if self.previous is not None:
                    probs = self.previous * self.smooth + probs * (1.0 - self.smooth)
                self.previous = probs
            label = probs.argmax(0).to(label_dtype(self.segmenter.num_classes)).cpu().numpy()
            results.append((label, confidence(probs) if self.scores else None))
        return results


def predict_video(
    segmenter: Segmenter,
    source: str | Path | int,
    out_path: str | Path | None,
    *,
    batch_size: int = 8,
    labels_out: str | Path | None = None,
    scores_out: str | Path | None = None,
    smooth: float | None = None,
    legend: bool = True,
    alpha: float = 0.5,
    codec: str | None = None,
    live: bool | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> VideoStats:
    """Segment every frame of ``source`` (a video file, a webcam index or a stream URL) and write the videos asked
    for: the overlay ``out_path``, the label video ``labels_out``, the confidence video ``scores_out`` (module
    docstring for their formats). ``smooth``: weight α of the past in the moving average of the probabilities
    (None: off). ``live``: drop frames rather than queue them (default: for webcams and URLs). ``max_frames``:
    stop after this many frames. ``codec``: the overlay's FFmpeg encoder (default libx264, else mpeg4).

    Returns:
        the frames written and dropped, and the seconds spent decoding, inferring and encoding.
    """
    paths, formats = output_files(source, out_path, labels_out, scores_out)
    if batch_size < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"batch_size and max_frames must be at least 1, got {batch_size} and {max_frames}")
    if smooth is not None and not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth is the weight of the past frames, in [0, 1); got {smooth}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    config = getattr(segmenter.model, "config", None)  # a SegFormer's recorded names and palette
    names = list(config.names) if config is not None else [f"class_{k}" for k in range(segmenter.num_classes)]
    palette = model_palette(config) if config is not None else default_palette(segmenter.num_classes)
    style = OverlayStyle(palette, names, alpha, legend, codec)
    predictor = FramePredictor(segmenter, smooth, scores_out is not None)
    video = VideoSource(source, live)

    def write(temporary: list[str]) -> VideoStats:
        given = iter(temporary)
        outputs = VideoOutputs([None if path is None else next(given) for path in paths], formats, style)
        try:
            return segment_frames(video, predictor, outputs, batch_size, max_frames, progress)
        except BaseException:
            outputs.abort()
            raise

    try:
        return atomic_write_all([path for path in paths if path is not None], write)
    finally:
        video.close()


def output_files(source: str | Path | int, *outputs: str | Path | None) -> tuple[list[Path | None], list[str]]:
    """The overlay, label and confidence paths (None: not asked) and their container formats, checked."""
    paths = [None if path is None else Path(path) for path in outputs]
    if all(path is None for path in paths):
        raise ValueError("predict_video needs an output: the overlay video, labels_out or scores_out")
    overlay_path, *lossless = paths
    if overlay_path is not None and overlay_path.suffix.lower() not in OVERLAY_FORMATS:
        raise ValueError(
            f"{overlay_path}: unknown overlay video type {overlay_path.suffix!r}; expected {', '.join(OVERLAY_FORMATS)}"
        )
    for path, kind in zip(lossless, ("label", "confidence"), strict=True):
        if path is not None and path.suffix.lower() != LOSSLESS_SUFFIX:
            raise ValueError(f"{path}: the {kind} video is lossless FFV1 in Matroska; name it {LOSSLESS_SUFFIX}")
    given = [path.resolve() for path in paths if path is not None]
    if len(set(given)) < len(given) or (not isinstance(source, int) and Path(source).resolve() in given):
        raise ValueError(f"the outputs {[str(p) for p in paths if p]} must differ from each other and the source")
    formats = [OVERLAY_FORMATS.get(overlay_path.suffix.lower(), "") if overlay_path else "", "matroska", "matroska"]
    return paths, formats


def segment_frames(
    video: VideoSource,
    predictor: FramePredictor,
    outputs: VideoOutputs,
    batch_size: int,
    max_frames: int | None,
    progress: bool,
) -> VideoStats:
    """Decode ``video`` ahead in a thread (``video.reader``), segment and write its frames; the stats."""
    stats, start = VideoStats(video.name), time.perf_counter()
    queue = FrameQueue(batch_size if video.live else 2 * batch_size, drop_oldest=video.live)
    video.reader = read_ahead(video.frames(), queue)
    total = video.expected if max_frames is None else min(video.expected or max_frames, max_frames)
    bar = progress_bar(total=total, desc=Path(video.name).name, unit="frame", disable=not progress)
    try:
        while max_frames is None or stats.frames < max_frames:
            wanted = batch_size if max_frames is None else min(batch_size, max_frames - stats.frames)
            batch = queue.take(wanted, wait_for_all=not video.live)
            if not batch:
                break
            began = time.perf_counter()
            results = predictor([image for _, image in batch])
            inferred = time.perf_counter()
            for frame, (label, scores) in zip(batch, results, strict=True):
                outputs.write(frame, label, scores, video)
            stats.infer_seconds += inferred - began
            stats.encode_seconds += time.perf_counter() - inferred
            stats.frames += len(batch)
            bar.update(len(batch))
            if video.live:
                bar.set_postfix(dropped=queue.dropped)
    except KeyboardInterrupt:  # a live run ends with Ctrl-C and keeps what it segmented; a file's run is lost
        if not video.live:
            raise
    finally:
        queue.cancel()
        video.reader.join(LIVE_TIMEOUT)
        bar.close()
    if stats.frames == 0:
        raise ValueError(f"{video.name}: no frame was segmented; nothing written")
    began = time.perf_counter()
    outputs.close()
    stats.encode_seconds += time.perf_counter() - began
    stats.dropped, stats.decode_seconds = queue.dropped, video.decode_seconds
    stats.seconds = time.perf_counter() - start
    return stats

"""Reading videos, webcams and streams through PyAV (FFmpeg's Python binding) for ``segformer.video``.

``VideoSource`` opens any container and codec FFmpeg reads (.mp4, .mkv, .mov, .avi, .webm …), a webcam (an int
``n``: ``/dev/video{n}`` through v4l2) or a stream URL (``rtsp://``, ``http://`` …), and decodes its frames to RGB
(``frame.to_ndarray(format="rgb24")``: FFmpeg's colour conversion). ``read_ahead`` decodes in a thread that runs
ahead of the network, into a ``FrameQueue``:

* for a **file** the decode thread waits while the queue is full: every frame is segmented;
* for a **live** source (webcam, URL) the queue never waits: it keeps the newest frames, drops the oldest and
  counts them, so the network always gets the latest frames when it is slower than the stream.

Errors are ValueErrors naming the source and what was expected: a missing or unreadable file or URL, a file
without a video stream, a file that decodes no frame, and a truncated or corrupt file (the frames before the
damage are decoded, then the error names the first frame that could not be decoded, or the count that the
container declares). A live stream that fails midway ends with a warning.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

try:
    import av
except ImportError:  # VIDEO_SUFFIXES, is_video_file and is_live_source need no PyAV; segformer.video does
    av = None

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv")
VIDEO_SUFFIXES += (".wmv", ".3gp", ".ogv")  # inputs taken as video by suffix
LIVE_TIMEOUT = 10.0  # seconds to open, and to wait for data from, a stream
FALLBACK_RATE = Fraction(30)  # frames per second of a source that states none (some webcams)
Frame = tuple[int, np.ndarray]  # (index of the decoded frame, H×W×3 uint8 RGB)


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` is taken as a video by its suffix (``VIDEO_SUFFIXES``)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_live_source(source: str | Path | int) -> bool:
    """A webcam index or a URL (``scheme://``): live sources drop frames rather than queue them."""
    return (isinstance(source, int) and not isinstance(source, bool)) or "://" in str(source)


class FrameQueue:
    """Frames handed from the decode thread to the network: the producer waits while ``capacity`` frames are
    queued, or (``drop_oldest``, live sources) drops the oldest queued frame and counts it in ``dropped``."""

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        self.capacity, self.drop_oldest, self.dropped = capacity, drop_oldest, 0
        self._items: collections.deque = collections.deque()
        self._condition = threading.Condition()
        self._finished = self._cancelled = False
        self._error: BaseException | None = None

    def put(self, item: Any) -> bool:
        """Queue ``item``; False once the consumer has cancelled (the producer should stop)."""
        with self._condition:
            while not self.drop_oldest and len(self._items) >= self.capacity and not self._cancelled:
                self._condition.wait()
            if self._cancelled:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._condition.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        """The producer's end; ``error`` is raised to the consumer once the frames before it are taken."""
        with self._condition:
            self._finished, self._error = True, error
            self._condition.notify_all()

    def cancel(self) -> None:
        """The consumer's end: a waiting or later ``put`` returns False."""
        with self._condition:
            self._cancelled = True
            self._items.clear()
            self._condition.notify_all()

    def take(self, size: int, wait_for_all: bool) -> list:
        """Up to ``size`` queued items, oldest first, after waiting for one (``wait_for_all``: for ``size``, at most
        the capacity, or the end); [] at the end. Raises the producer's error once the items before it are taken."""
        with self._condition:
            wanted = min(size, self.capacity) if wait_for_all else 1
            while len(self._items) < wanted and not self._finished:
                self._condition.wait()
            if not self._items:
                if self._error is not None:
                    raise self._error
                return []
            batch = [self._items.popleft() for _ in range(min(size, len(self._items)))]
            self._condition.notify_all()
            return batch


def read_ahead(frames: Iterator, queue: FrameQueue) -> threading.Thread:
    """Start a daemon thread that puts the items of ``frames`` into ``queue`` until they end or the queue is
    cancelled, then finishes the queue (with the exception ``frames`` raised, if any)."""

    def run() -> None:
        error = None
        try:
            for item in frames:
                if not queue.put(item):
                    break
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            error = e
        finally:
            getattr(frames, "close", lambda: None)()
            queue.finish(error)

    thread = threading.Thread(target=run, name="segformer-video-decode", daemon=True)
    thread.start()
    return thread


class VideoSource:
    """An opened video file, webcam or stream: its video stream, frame rate, the frame count it declares
    (None when unknown) and its decoded RGB frames (``frames``)."""

    def __init__(self, source: str | Path | int, live: bool | None = None) -> None:
        self.live = is_live_source(source) if live is None else live
        self.name = f"/dev/video{source}" if isinstance(source, int) and not isinstance(source, bool) else str(source)
        self.container = self._open(source)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.rate = Fraction(rate) if rate else FALLBACK_RATE
        self.expected = None if self.live else self._declared_frames()
        self.decode_seconds = 0.0
        self.reader: threading.Thread | None = None  # the thread decoding ``frames`` (``read_ahead``), if any

    def _open(self, source: str | Path | int) -> Any:
        options: dict[str, Any] = {}
        if self.name.startswith("/dev/video") and not isinstance(source, str | Path):
            options["format"] = "v4l2"
        elif "://" in self.name:
            options["timeout"] = LIVE_TIMEOUT
        elif not Path(source).is_file():
            raise ValueError(f"{source}: no such video file")
        try:
            container = av.open(self.name, mode="r", **options)
        except (av.FFmpegError, OSError) as e:
            raise ValueError(
                f"{self.name}: cannot open as a video ({e}); expected a video file, webcam or stream FFmpeg reads "
                "(.mp4, .mkv, .mov, .avi …; an .mp4/.mov cut short loses its index and cannot be opened)"
            ) from None
        if not container.streams.video:
            kinds = collections.Counter(stream.type for stream in container.streams)
            found = ", ".join(f"{n} {kind} stream{'s' * (n > 1)}" for kind, n in kinds.items()) or "no streams"
            container.close()
            raise ValueError(f"{self.name}: no video stream (it has {found}); expected a video")
        return container

    def _declared_frames(self) -> int | None:
        """The frame count the file declares, else its duration × frame rate (None if it states neither)."""
        if self.stream.frames:
            return self.stream.frames
        if self.stream.duration and self.stream.time_base:
            seconds = self.stream.duration * self.stream.time_base
        elif self.container.duration:
            seconds = Fraction(self.container.duration, av.time_base)
        else:
            return None
        return round(seconds * self.rate)

    def frames(self) -> Iterator[Frame]:
        """(index, H×W×3 uint8 RGB) of every frame in order. Raises ValueError for a file that ends before the
        frame count it declares (a frame short of its duration × rate is tolerated: durations are rounded) or
        cannot be decoded; a failing live stream ends with a warning."""
        index, start = 0, time.perf_counter()
        try:
            for frame in self.container.decode(self.stream):
                image = frame.to_ndarray(format="rgb24")
                self.decode_seconds += time.perf_counter() - start
                yield index, image
                index += 1
                start = time.perf_counter()
        except av.FFmpegError as e:
            if not self.live:
                raise ValueError(
                    f"{self.name}: cannot decode frame {index} ({e}); the file is corrupt or truncated "
                    f"({index} frames decoded before it)"
                ) from None
            warnings.warn(f"{self.name}: the stream stopped at frame {index} ({e})", stacklevel=2)
        self._check_complete(index)

    def _check_complete(self, decoded: int) -> None:
        if decoded == 0:
            raise ValueError(f"{self.name}: no frame could be decoded; expected a video with at least one frame")
        declared = bool(self.stream.frames)
        if self.expected is not None and decoded < self.expected - (not declared):
            what = "declares" if declared else "lasts for"
            raise ValueError(
                f"{self.name}: decoding stopped at frame {decoded} (frames 0 to {decoded - 1} were read), but the "
                f"file {what} {self.expected} frames: it is truncated or corrupt"
            )

    def close(self) -> None:
        """Close the file or stream; a stream whose reader is stuck in a read keeps it (the daemon thread ends
        with the process)."""
        if self.reader is None or not self.reader.is_alive():
            self.container.close()

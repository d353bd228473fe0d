"""Streamed prediction of rasters larger than memory (GeoTIFF, BigTIFF, anything GDAL reads) through rasterio.

``predict_raster`` reads a raster window by window, runs the official slide inference (mmseg ``slide_inference``,
as ``Segmenter`` in slide mode) at the raster's native resolution, and writes the label map as a tiled, deflate
compressed GeoTIFF with the source's CRS, transform and the ignore label 255 as nodata; optionally the confidence
(``scores``), the class regions as GeoJSON (``polygons``) and a downsampled overlay (``preview``).

**Exactness.** The windows are ``segformer.inference.sliding_windows`` of the WHOLE raster, each decoded alone
(``encode_decode``: logits resized to the window) and summed into an accumulator in the same order as
``Segmenter._slide``; a pixel's sum is divided by the number of windows covering it. Float additions in the same
order and IEEE division give the same float32 logits, so on a raster small enough to hold in memory the labels
equal ``Segmenter(model, TestProtocol(mode="slide", scale=None, crop=…, stride=…)).predict(image)`` bit for bit.

**Streaming.** Windows are taken a window row at a time (rows y1..y2 of the grid). The accumulator is a ring of
``crop_h`` raster rows × the raster width: once a window row is done, the rows above the next window row are
touched by no later window; they are averaged, written and their ring rows reused. Peak host memory in arrays
(bytes, ``memory_bound``) is independent of the raster's height H::

    W · [4·K·crop_h                                   accumulator ring (float32)
         + C·crop_h·(b + 5·[b > 1])                   one window row of input (b bytes a sample; non-uint8 stretched)
         + (4·K + C + 16 + s·(8·K + 70))·min(64, stride_h)  finished rows: average, labels, validity (s: scores)
         + 512·(1 + 6·s)]                             one row of 512×512 output tiles
    + crop_h·crop_w·(13·C + 8·K)                      one window's input and logits
    + P·(3·C·(b + 1) + 20)                            the preview of P ≤ 2048² pixels, from decimated reads
    + [b > 1]·Q·(C·(b + 1) + 2·b + 18)                the stretch's sample of Q ≤ 1024² pixels

plus the network's activations on one window (``Segmenter`` in slide mode needs the same) and GDAL's block cache,
capped at 16 MiB + W·[(crop_h + 2·tile_h)·C·b + 512·(1 + 5·s)] (tile_h: the source's block height) so that
GDAL does not fill 5% of RAM with decompressed tiles; K classes, C input bands, width W. The in-memory
``Segmenter`` holds about H·W·(8·K + 39) bytes (image, normalised input, accumulator, quotient, argmax).

**Input.** ``bands`` (1-based, as rasterio/GDAL; repeats allowed) picks as many bands as the model has input
channels (``config.in_channels``), by default the first ones. uint8 bands are used as they are; any other dtype
(uint16, int16, float …) is stretched per band to 0..255 between its 2nd and 98th percentiles, computed once from a
decimated read (≤ 1024 pixels a side, GDAL's overviews where the file has them) of the valid pixels. Normalisation
uses the protocol's mean and std, channel c taking those of RGB channel c mod 3 (as ``adapt_input_conv`` repeats
the RGB filters). A pixel that is nodata in any chosen band (nodata value, internal mask, alpha band) gets label 255.

**Resolution.** Remote-sensing models are tested at native resolution: the segmenter's protocol must not resize
(``scale`` and ``size_divisor`` None; ``native_protocol`` makes such a protocol), else ValueError. Multi-scale/flip
(``aug``) is refused too. Windows run one at a time (batch 1), as ``Segmenter`` runs them.

**Restarts.** Every output is written to a temporary file and renamed when the raster is done, the label map last;
a killed run leaves no partial output and ``skip_existing`` then skips the rasters whose label map exists. A raster
interrupted midway restarts from its first row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

try:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NodataShadowWarning, RasterioError
    from rasterio.windows import Window
except ImportError:  # an ImportError without a name: the CLI prints this hint as it is
    raise ImportError("reading rasters needs rasterio: pip install 'segformer[geo]'") from None

from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.inference import Segmenter, sliding_windows
from segformer.progress import progress_bar
from segformer.raster_output import BLOCK_SIZE, PREVIEW_SIDE, RasterOutputs, output_paths, write_atomically
from segformer.transforms import normalize_image
from segformer.visualize import model_palette

SAMPLE_SIDE = 1024  # long side of the decimated read that the percentile stretch is computed from
STRETCH_PERCENTILES = (2.0, 98.0)  # non-uint8 bands: these percentiles map to 0 and 255
MAX_CLASSES = IGNORE_INDEX  # labels are uint8 with 255 = nodata
FINISHED_ROWS = 64  # finished rows are averaged and handed on this many at a time
GDAL_CACHE_BASE = 16 << 20  # GDAL's block cache: this plus room for the source tiles one window row touches

WindowNetwork = Callable[[np.ndarray], np.ndarray]  # 1×C×h×w normalised float32 → K×h×w float32 logits


def native_protocol(protocol: TestProtocol | None = None, **changes) -> TestProtocol:
    """``protocol`` (default ``TestProtocol()``) in slide mode at native resolution: no ``scale``, no
    ``size_divisor``; ``changes`` (crop, stride …) applied too."""
    return dataclasses.replace(protocol or TestProtocol(), mode="slide", scale=None, size_divisor=None, **changes)


def memory_bound(
    width: int,
    num_classes: int,
    channels: int,
    crop: Sequence[int],
    stride: Sequence[int],
    *,
    sample_bytes: int = 1,
    scores: bool = False,
    preview_pixels: int = PREVIEW_SIDE**2,
) -> int:
    """Upper bound in bytes of the host memory ``predict_raster`` holds in arrays (the formula of the module
    docstring, without the network's activations and the polygons' geometries): independent of the raster's
    height. ``preview_pixels``: the preview's size (at most 2048², 0 without a preview)."""
    (crop_h, crop_w), stride_h = crop, stride[0]
    k, c, b = num_classes, channels, sample_bytes
    per_column = (
        4 * k * crop_h
        + c * crop_h * (b + 5 * (b > 1))
        + (4 * k + c + 16 + scores * (8 * k + 70)) * min(stride_h, FINISHED_ROWS)
        + BLOCK_SIZE * (1 + 6 * scores)
    )
    window = crop_h * crop_w * (13 * c + 8 * k)
    decimated = preview_pixels * (3 * c * (b + 1) + 20) + (b > 1) * SAMPLE_SIDE**2 * (c * (b + 1) + 2 * b + 18)
    return width * per_column + window + decimated


@dataclasses.dataclass
class RasterResult:
    """What ``predict_raster`` wrote: output paths (None where not asked for), the raster's size, the number of
    windows and the pixels of each class (by name); ``skipped`` when the label map existed already."""

    labels: Path
    scores: Path | None
    polygons: Path | None
    preview: Path | None
    height: int = 0
    width: int = 0
    windows: int = 0
    class_pixels: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: bool = False


class RasterSource:
    """An open raster's chosen bands, read by rows as C×h×W uint8 (stretched when not uint8), with its validity."""

    def __init__(self, path: str | Path, bands: Sequence[int] | None, channels: int) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such raster file")
        try:
            self.dataset = rasterio.open(self.path)
        except RasterioError as e:
            raise ValueError(f"{self.path}: not a readable raster ({e})") from None
        self.height, self.width = self.dataset.height, self.dataset.width
        try:
            self.bands = self._check_bands(bands, channels)
            self.stretch = None if self.dtype == np.uint8 else self._percentile_stretch()
        except BaseException:
            self.dataset.close()
            raise

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dataset.close()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dataset.dtypes[self.bands[0] - 1])

    def _check_bands(self, bands: Sequence[int] | None, channels: int) -> list[int]:
        count = self.dataset.count
        if bands is None:
            if count < channels:
                raise ValueError(
                    f"{self.path}: the model takes {channels} input channels but the raster has {count} band(s); "
                    f"choose {channels} bands, repeating one if need be (e.g. bands={(1,) * channels})"
                )
            bands = range(1, channels + 1)
        bands = [int(b) for b in bands]
        if len(bands) != channels:
            raise ValueError(f"{self.path}: bands {bands} give {len(bands)} channels but the model takes {channels}")
        for band in bands:
            if not 1 <= band <= count:
                raise ValueError(
                    f"{self.path}: band {band} does not exist: the raster has {count} band(s), numbered from 1"
                )
        if len({self.dataset.dtypes[b - 1] for b in bands}) > 1:
            raise ValueError(f"{self.path}: bands {bands} have different data types; choose bands of one type")
        return bands

    def _read(self, what: str, rows: tuple[int, int], read: Callable[[], np.ndarray]) -> np.ndarray:
        try:
            with warnings.catch_warnings():  # a nodata value and an alpha band: GDAL uses the nodata value
                warnings.simplefilter("ignore", NodataShadowWarning)
                return read()
        except RasterioError as e:
            detail = e.__cause__ or e  # rasterio's "Read failed. See previous exception" holds GDAL's message
            raise ValueError(
                f"{self.path}: cannot read {what} of window rows {rows[0]}..{rows[1]}, columns 0..{self.width} "
                f"({detail})"
            ) from None

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``top``..``bottom`` (exclusive) of the chosen bands: C×h×W uint8."""
        window = Window(0, top, self.width, bottom - top)
        data = self._read("bands", (top, bottom), lambda: self.dataset.read(self.bands, window=window))
        return data if self.stretch is None else self._stretched(data)

    def valid_rows(self, top: int, bottom: int) -> np.ndarray:
        """h×W bool: True where no chosen band is nodata (GDAL's mask of each band)."""
        window = Window(0, top, self.width, bottom - top)
        masks = self._read("masks", (top, bottom), lambda: self.dataset.read_masks(self.bands, window=window))
        return masks.min(axis=0) > 0

    def decimated(self, side: int, resampling: Resampling = Resampling.bilinear) -> np.ndarray:
        """The chosen bands read at most ``side`` pixels a side (aspect kept), as a masked C×h×w array."""
        shape = (len(self.bands), *decimated_shape(self.height, self.width, side))

        def read() -> np.ndarray:
            return self.dataset.read(self.bands, out_shape=shape, resampling=resampling, masked=True)

        return self._read("a decimated copy", (0, self.height), read)

    def preview_rgb(self, side: int) -> np.ndarray:
        """h×w×3 uint8 picture of the chosen bands (the first three, or the first as grey) from a decimated read."""
        data = self.decimated(side).filled(0)
        data = data if self.stretch is None else self._stretched(data)
        channels = [0, 1, 2] if len(data) >= 3 else [0, 0, 0]
        return np.ascontiguousarray(data[channels].transpose(1, 2, 0).astype(np.uint8))

    def _percentile_stretch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per band (low, scale): sample → (sample − low) · scale, low/high the stretch percentiles of the sample."""
        sample = self.decimated(SAMPLE_SIDE, Resampling.nearest)
        low, high = np.zeros(len(self.bands)), np.ones(len(self.bands))
        for c, band in enumerate(sample):
            values = band.compressed()
            values = values[np.isfinite(values)]
            if values.size:
                low[c], high[c] = np.percentile(values.astype(np.float64), STRETCH_PERCENTILES)
        scale = 255.0 / np.maximum(high - low, np.finfo(np.float32).eps)
        return low.astype(np.float32)[:, None, None], scale.astype(np.float32)[:, None, None]

    def _stretched(self, data: np.ndarray) -> np.ndarray:
        low, scale = self.stretch
        values = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        values -= low
        values *= scale
        return np.rint(np.clip(values, 0, 255, out=values), out=values).astype(np.uint8)


def decimated_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) of a ``height`` × ``width`` raster shrunk so that its long side is at most ``side``."""
    factor = min(1.0, side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def gdal_cache_bytes(source: RasterSource, crop_h: int, scores: bool) -> int:
    """GDAL's block cache for one raster: room for the source tiles a window row touches and one output tile row."""
    tile_h = source.dataset.block_shapes[0][0]
    sample = len(source.bands) * source.dtype.itemsize
    return GDAL_CACHE_BASE + source.width * ((crop_h + 2 * tile_h) * sample + BLOCK_SIZE * (1 + 5 * scores))


@contextlib.contextmanager
def window_network(segmenter: Segmenter) -> Iterator[WindowNetwork]:
    """The network of ``segmenter`` on one window, in eval mode: the ONLY use of Segmenter internals here
    (``_evaluating`` and ``_encode_decode``, mmseg ``encode_decode``: logits resized to the window)."""
    with segmenter._evaluating():

        def logits(x: np.ndarray) -> np.ndarray:
            return segmenter._encode_decode(torch.from_numpy(x).to(segmenter.device))[0].float().cpu().numpy()

        yield logits


def normalized_window(window: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """1×C×h×w float32 network input of a C×h×w uint8 window: channel c normalised with RGB channel c mod 3's
    mean and std (``normalize_image``, three channels at a time, so an RGB window is normalised as a photo)."""
    image = window.transpose(1, 2, 0)
    channels = len(window)
    means = [mean[c % 3] for c in range(channels)]
    stds = [std[c % 3] for c in range(channels)]
    groups = [
        normalize_image(np.ascontiguousarray(image[..., c : c + 3]), means[c : c + 3], stds[c : c + 3])
        for c in range(0, channels, 3)
    ]
    normalized = groups[0] if len(groups) == 1 else np.concatenate(groups, axis=2)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1)[None])


def _ring_spans(start: int, stop: int, size: int) -> Iterator[tuple[slice, slice]]:
    """(ring rows, offset rows) pieces of raster rows ``start``..``stop`` in a ring of ``size`` rows."""
    position = start
    while position < stop:
        ring = position % size
        count = min(stop - position, size - ring)
        yield slice(ring, ring + count), slice(position - start, position - start + count)
        position += count


def _coverage(length: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """float32 number of ``spans`` (a, b) covering each of ``length`` positions."""
    count = np.zeros(length, np.float32)
    for a, b in spans:
        count[a:b] += 1
    return count


def stream_logits(
    network: WindowNetwork,
    read_rows: Callable[[int, int], np.ndarray],
    size: tuple[int, int],
    num_classes: int,
    protocol: TestProtocol,
    on_window: Callable[[], None] = lambda: None,
) -> Iterator[tuple[int, np.ndarray]]:
    """mmseg ``slide_inference`` streamed: (first row, K×rows×W float32 averaged logits) of consecutive row bands.

    ``read_rows(top, bottom)`` gives C×h×W uint8 rows; the windows are ``sliding_windows`` of the whole ``size``,
    decoded one at a time in ``Segmenter._slide``'s order and summed into a ring of min(crop_h, H) rows.
    """
    height, width = size
    windows = sliding_windows(height, width, protocol.crop, protocol.stride)
    window_rows = [(rows, [w[2:] for w in group]) for rows, group in itertools.groupby(windows, key=lambda w: w[:2])]
    row_count = _coverage(height, [rows for rows, _ in window_rows])
    col_count = _coverage(width, window_rows[0][1])
    ring_size = min(protocol.crop[0], height)
    ring = np.zeros((num_classes, ring_size, width), np.float32)
    done = 0
    for index, ((top, bottom), columns) in enumerate(window_rows):
        strip = read_rows(top, bottom)
        for left, right in columns:
            logits = network(normalized_window(strip[:, :, left:right], protocol.mean, protocol.std))
            for ring_rows, rows in _ring_spans(top, bottom, ring_size):
                ring[:, ring_rows, left:right] += logits[:, rows]
            on_window()
        del strip
        end = window_rows[index + 1][0][0] if index + 1 < len(window_rows) else height
        for first in range(done, end, FINISHED_ROWS):  # finished rows, a few at a time
            last = min(first + FINISHED_ROWS, end)
            total = np.empty((num_classes, last - first, width), np.float32)
            for ring_rows, rows in _ring_spans(first, last, ring_size):
                total[:, rows] = ring[:, ring_rows]
                ring[:, ring_rows] = 0
            total /= row_count[first:last, None] * col_count[None, :]
            yield first, total
        done = max(done, end)


def _checked_protocol(segmenter: Segmenter, crop: Sequence[int] | None, stride: Sequence[int] | None) -> TestProtocol:
    given = {"crop": crop, "stride": stride}
    protocol = dataclasses.replace(segmenter.protocol, **{k: v for k, v in given.items() if v is not None})
    resizes = [f"scale={protocol.scale}"] * (protocol.scale is not None)
    resizes += [f"size_divisor={protocol.size_divisor}"] * (protocol.size_divisor is not None)
    if resizes:
        raise ValueError(
            f"rasters are segmented at native resolution, but the segmenter's protocol resizes ({', '.join(resizes)}); "
            "pass a Segmenter built with protocol=segformer.raster.native_protocol(...) (CLI: --scale none)"
        )
    if segmenter.aug:
        raise ValueError("rasters are segmented with one view: multi-scale/flip testing (aug) is not supported")
    if any(s > c for s, c in zip(protocol.stride, protocol.crop, strict=True)):
        raise ValueError(f"stride {protocol.stride} exceeds crop {protocol.crop}: windows would leave pixels out")
    if segmenter.num_classes > MAX_CLASSES:
        raise ValueError(f"raster label maps hold at most {MAX_CLASSES} classes; the model has {segmenter.num_classes}")
    return protocol


def model_channels(segmenter: Segmenter) -> int:
    """Input channels of the segmenter's model (``config.in_channels``; 3 for a model without a config)."""
    return getattr(getattr(segmenter.model, "config", None), "in_channels", 3)


def _bands_with_validity(
    network: WindowNetwork,
    source: RasterSource,
    num_classes: int,
    protocol: TestProtocol,
    on_window: Callable[[], None] = lambda: None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    size = (source.height, source.width)
    for top, logits in stream_logits(network, source.read_rows, size, num_classes, protocol, on_window):
        yield top, logits, source.valid_rows(top, top + logits.shape[1])


def raster_logits(
    segmenter: Segmenter,
    path: str | Path,
    *,
    bands: Sequence[int] | None = None,
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, K×rows×W float32 averaged logits, rows×W valid mask) of consecutive row bands of a raster:
    the stream ``predict_raster`` writes, for other uses of the scores."""
    protocol = _checked_protocol(segmenter, crop, stride)
    with RasterSource(path, bands, model_channels(segmenter)) as source, window_network(segmenter) as network:
        with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(source, protocol.crop[0], False)):
            yield from _bands_with_validity(network, source, segmenter.num_classes, protocol)


def predict_raster(
    segmenter: Segmenter,
    src_path: str | Path,
    out_path: str | Path,
    *,
    bands: Sequence[int] | None = None,
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scores: bool | str | Path = False,
    polygons: bool | str | Path = False,
    preview: bool | str | Path = True,
    alpha: float = 0.5,
    skip_existing: bool = False,
    progress: bool = True,
) -> RasterResult:
    """Segment the raster ``src_path`` into the label GeoTIFF ``out_path`` with bounded memory (module docstring).

    Args:
        segmenter: a Segmenter at native resolution (``native_protocol``); its crop and stride unless given.
        bands: 1-based band numbers, one per model input channel; default the first ones.
        scores: also write ``<stem>_scores.tif`` (or this path): two uint16 bands, the max softmax probability
            × 65535 and the entropy / ln K × 65535 (rounded), of the same averaged logits; nodata pixels 0 and
            masked (internal mask).
        polygons: also write ``<stem>_polygons.geojson`` (or this path): the class regions in the raster's CRS,
            with ``class_id`` and ``class_name``, traced per row of 512-row output tiles (``row_block``), so a
            region crossing a tile row boundary is split there.
        preview: also write ``<stem>_preview.png`` (or this path): the overlay with legend (``visualize.overlay``)
            at most 2048 pixels a side (plus the legend strip), from decimated reads of the raster and labels.
        alpha: the preview's colour weight.
        skip_existing: return at once when ``out_path`` exists.

    Raises:
        FileNotFoundError / ValueError: naming the file, for a missing or unreadable raster, a window that
            cannot be read, bands out of range or too few for the model, or a protocol that resizes.
    """
    paths = output_paths(Path(out_path), scores=scores, polygons=polygons, preview=preview)
    if skip_existing and paths.labels.exists():
        return RasterResult(*dataclasses.astuple(paths), skipped=True)
    protocol = _checked_protocol(segmenter, crop, stride)
    names = segmenter.model.class_names
    with RasterSource(src_path, bands, model_channels(segmenter)) as source:
        windows = len(sliding_windows(source.height, source.width, protocol.crop, protocol.stride))
        outputs = RasterOutputs(source, names, model_palette(segmenter.model.config), paths, alpha)
        bar = progress_bar(total=windows, desc=source.path.name, unit="window", disable=not progress)
        cache = rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(source, protocol.crop[0], paths.scores is not None))
        with bar, cache, window_network(segmenter) as network:
            bands_of_logits = _bands_with_validity(network, source, segmenter.num_classes, protocol, bar.update)
            counts = write_atomically(paths, lambda temporary: outputs.write(temporary, bands_of_logits))
        size = (source.height, source.width)
    class_pixels = {names[k]: int(counts[k]) for k in np.flatnonzero(counts[: len(names)])}
    return RasterResult(*dataclasses.astuple(paths), *size, windows, class_pixels)

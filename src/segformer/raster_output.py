"""The outputs of ``segformer.raster.predict_raster``, written as row bands arrive: the label GeoTIFF, the scores
GeoTIFF, the class polygons (GeoJSON) and the overlay preview (PNG).

GeoTIFFs are tiled in ``BLOCK_SIZE`` × ``BLOCK_SIZE`` tiles, deflate compressed, BigTIFF where they could exceed
4 GB, with the source's CRS and transform; rows are buffered until a whole row of tiles is complete, so every tile
is compressed once. The label map gets internal overviews (nearest neighbour, GDAL ``build_overviews``), which GIS
viewers and the preview read. Every file goes to a temporary file in its folder and is renamed when all are
complete, the label map last (``segformer.fileio.atomic_write_all``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
from rasterio.enums import Resampling
from rasterio.windows import Window

from segformer.constants import IGNORE_INDEX
from segformer.fileio import atomic_write_all
from segformer.visualize import overlay

BLOCK_SIZE = 512  # GeoTIFF tile side; rows are written a row of tiles at a time
PREVIEW_SIDE = 2048  # long side of the overlay preview
SCORE_SCALE = 65535  # uint16 scores: probability × SCORE_SCALE, entropy / ln K × SCORE_SCALE
LABEL_SUFFIXES = (".tif", ".tiff")

Bands = Iterable[tuple[int, np.ndarray, np.ndarray]]  # (first row, K×h×W averaged logits, h×W valid)


@dataclasses.dataclass
class OutputPaths:
    """The files of one raster: the label map, and the optional scores, polygons and preview (None: not asked)."""

    labels: Path
    scores: Path | None = None
    polygons: Path | None = None
    preview: Path | None = None


def output_paths(
    labels: Path, *, scores: bool | str | Path, polygons: bool | str | Path, preview: bool | str | Path
) -> OutputPaths:
    """The output files: each optional one False/None (none), True (``<stem>_<kind><suffix>`` beside the label
    map) or a path."""
    if labels.suffix.lower() not in LABEL_SUFFIXES:
        raise ValueError(f"{labels}: the raster label map is a GeoTIFF; name it with a .tif suffix")

    def path(choice: bool | str | Path | None, kind: str) -> Path | None:
        if choice is None or choice is False:
            return None
        return labels.with_name(f"{labels.stem}_{kind}") if choice is True else Path(choice)

    return OutputPaths(
        labels, path(scores, "scores.tif"), path(polygons, "polygons.geojson"), path(preview, "preview.png")
    )


def write_atomically(paths: OutputPaths, write: Callable[[OutputPaths], Any]) -> Any:
    """``write(temporary paths)``, then every temporary file renamed onto its path, the label map last."""
    fields = [f.name for f in dataclasses.fields(paths) if getattr(paths, f.name) is not None]
    targets = [getattr(paths, name) for name in fields]  # the label map first: atomic_write_all renames it last
    return atomic_write_all(targets, lambda tmps: write(OutputPaths(**dict(zip(fields, map(Path, tmps), strict=True)))))


def score_bands(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2×h×W uint16 of K×h×W logits: max softmax probability × 65535 and entropy / ln K × 65535, rounded;
    0 where not ``valid``. The max probability is 1 / Σ exp(l − max l); the entropy log S − Σ e·(l − max l) / S."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=0)
    exp *= shifted
    entropy = np.log(total) - exp.sum(axis=0) / total
    del shifted, exp
    norm = math.log(len(logits)) if len(logits) > 1 else 1.0
    scores = np.stack([1.0 / total, np.clip(entropy / norm, 0.0, 1.0)])
    scores = np.rint(scores * SCORE_SCALE).astype(np.uint16)
    scores[:, ~valid] = 0
    return scores


class RowBlocks:
    """Rows that arrive in order, handed to ``flush(first row, bands×rows×W)`` a row of tiles at a time."""

    def __init__(self, bands: int, width: int, dtype: type, flush: Callable[[int, np.ndarray], None]) -> None:
        self.buffer = np.empty((bands, BLOCK_SIZE, width), dtype)
        self.flush = flush
        self.top = self.filled = 0

    def add(self, rows: np.ndarray) -> None:
        offset = 0
        while offset < rows.shape[1]:
            take = min(rows.shape[1] - offset, BLOCK_SIZE - self.filled)
            self.buffer[:, self.filled : self.filled + take] = rows[:, offset : offset + take]
            self.filled += take
            offset += take
            if self.filled == BLOCK_SIZE:
                self.close()

    def close(self) -> None:
        """Hand on the rows still buffered."""
        if self.filled:
            self.flush(self.top, self.buffer[:, : self.filled])
            self.top += self.filled
            self.filled = 0


def create_geotiff(path: Path, like: rasterio.DatasetReader, count: int, dtype: str, nodata: float | None):
    """A tiled, deflate compressed GeoTIFF of ``like``'s size, CRS and transform, open for writing."""
    return rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=like.width,
        height=like.height,
        count=count,
        dtype=dtype,
        crs=like.crs,
        transform=like.transform,
        nodata=nodata,
        tiled=True,
        blockxsize=BLOCK_SIZE,
        blockysize=BLOCK_SIZE,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels 2, 4, 8 … down to a long side of about half a tile."""
    factors, factor = [], 2
    while max(height, width) / factor >= BLOCK_SIZE / 2:
        factors.append(factor)
        factor *= 2
    return factors


def _crs_member(crs: rasterio.crs.CRS | None) -> dict | None:
    """GeoJSON 2008 ``crs`` member (coordinates are in the raster's CRS, which RFC 7946 readers may not expect)."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def class_regions(labels: np.ndarray, top: int, transform, names: Sequence[str]) -> Iterator[tuple[dict, dict]]:
    """(geometry, properties) of each 4-connected class region of label rows starting at row ``top``
    (``rasterio.features.shapes``), in the raster's CRS; ignored pixels belong to no region."""
    window = Window(0, top, labels.shape[1], labels.shape[0])
    window_transform = rasterio.windows.transform(window, transform)
    regions = rasterio.features.shapes(labels, mask=labels != IGNORE_INDEX, connectivity=4, transform=window_transform)
    for geometry, value in regions:
        class_id = int(value)
        yield geometry, {"class_id": class_id, "class_name": names[class_id], "row_block": top // BLOCK_SIZE}


class PolygonWriter:
    """Class regions of label rows as GeoJSON features, streamed."""

    def __init__(self, file: TextIO, dataset: rasterio.DatasetReader, names: Sequence[str]) -> None:
        self.file, self.transform, self.names = file, dataset.transform, names
        header = {"type": "FeatureCollection", "name": Path(dataset.name).stem}
        crs = _crs_member(dataset.crs)
        if crs is not None:
            header["crs"] = crs
        self.file.write(json.dumps(header)[:-1] + ', "features": [')
        self.separator = "\n"

    def add(self, top: int, labels: np.ndarray) -> None:
        for geometry, properties in class_regions(labels, top, self.transform, self.names):
            feature = {"type": "Feature", "properties": properties, "geometry": geometry}
            self.file.write(self.separator + json.dumps(feature))
            self.separator = ",\n"

    def close(self) -> None:
        self.file.write("\n]}\n")


class GeoPackageWriter:
    """The same class regions as one GeoPackage layer, ``classes`` (through fiona, ``pip install fiona``).

    GDAL writes a GeoPackage only under a ``.gpkg`` name, so it is written beside ``path`` and moved onto it."""

    def __init__(self, path: Path, dataset: rasterio.DatasetReader, names: Sequence[str]) -> None:
        try:
            import fiona
        except ImportError:
            hint = "GeoPackage polygons need fiona: pip install 'segformer[gpkg]' (or write GeoJSON)"
            raise ImportError(hint) from None
        self.fiona, self.path, self.transform, self.names = fiona, path, dataset.transform, names
        self.scratch = path.with_name(path.name + ".gpkg")
        schema = {"geometry": "Polygon", "properties": {"class_id": "int", "class_name": "str", "row_block": "int"}}
        crs = dataset.crs.to_wkt() if dataset.crs else None
        self.layer = fiona.open(self.scratch, "w", driver="GPKG", schema=schema, crs_wkt=crs, layer="classes")

    def add(self, top: int, labels: np.ndarray) -> None:
        features = [
            self.fiona.Feature.from_dict({"type": "Feature", "geometry": geometry, "properties": properties})
            for geometry, properties in class_regions(labels, top, self.transform, self.names)
        ]
        self.layer.writerecords(features)

    def close(self) -> None:
        self.layer.close()
        os.replace(self.scratch, self.path)


def polygon_writer(
    final: Path, temporary: Path, dataset, names: Sequence[str], stack: contextlib.ExitStack
) -> PolygonWriter | GeoPackageWriter:
    """A GeoPackage writer when the polygons' file is named ``.gpkg``, else a GeoJSON one; closed by ``stack``."""
    if final.suffix.lower() != ".gpkg":
        return PolygonWriter(stack.enter_context(open(temporary, "w")), dataset, names)
    writer = GeoPackageWriter(temporary, dataset, names)
    stack.callback(writer.layer.close)  # on an error; close() closes it first otherwise
    return writer


class RasterOutputs:
    """Writes the outputs of one raster from its stream of averaged-logit bands; returns class pixel counts."""

    def __init__(
        self, source: Any, names: Sequence[str], palette: np.ndarray, paths: OutputPaths, alpha: float
    ) -> None:
        # source: a segformer.raster.RasterSource (not imported: segformer.raster imports this module)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        self.source, self.names, self.palette, self.paths, self.alpha = source, names, palette, paths, alpha
        self.counts = np.zeros(IGNORE_INDEX + 1, np.int64)

    def write(self, temporary: OutputPaths, bands: Bands) -> np.ndarray:
        dataset = self.source.dataset
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True))
            labels = stack.enter_context(create_geotiff(temporary.labels, dataset, 1, "uint8", IGNORE_INDEX))
            polygons = None
            if temporary.polygons is not None:
                polygons = polygon_writer(self.paths.polygons, temporary.polygons, dataset, self.names, stack)
            label_rows = RowBlocks(1, dataset.width, np.uint8, functools.partial(self._labels, labels, polygons))
            score_rows = None
            if temporary.scores is not None:
                scores = stack.enter_context(create_geotiff(temporary.scores, dataset, 2, "uint16", None))
                score_rows = RowBlocks(2, dataset.width, np.uint16, functools.partial(_write_scores, scores))
            for _, logits, valid in bands:
                label = logits.argmax(axis=0).astype(np.uint8)
                label[~valid] = IGNORE_INDEX
                label_rows.add(label[None])
                if score_rows is not None:
                    score_rows.add(score_bands(logits, valid))
            label_rows.close()
            if score_rows is not None:
                score_rows.close()
            if polygons is not None:
                polygons.close()
            factors = overview_factors(dataset.height, dataset.width)
            if factors:
                labels.build_overviews(factors, Resampling.nearest)
        if temporary.preview is not None:
            self._preview(temporary.labels, temporary.preview)
        return self.counts

    def _labels(self, labels: Any, polygons: PolygonWriter | None, top: int, block: np.ndarray) -> None:
        labels.write(block, window=Window(0, top, block.shape[2], block.shape[1]))
        self.counts += np.bincount(block.ravel(), minlength=len(self.counts))
        if polygons is not None:
            polygons.add(top, block[0])

    def _preview(self, labels_path: Path, preview_path: Path) -> None:
        """The overlay with legend, from decimated reads of the raster and of the finished label map."""
        image = self.source.preview_rgb(PREVIEW_SIDE)
        with rasterio.open(labels_path) as labels:
            label = labels.read(1, out_shape=image.shape[:2], resampling=Resampling.nearest)
        picture = overlay(image, label, self.palette, self.names, alpha=self.alpha)
        picture.save(preview_path, format="PNG")


def _write_scores(dataset: Any, top: int, block: np.ndarray) -> None:
    window = Window(0, top, block.shape[2], block.shape[1])
    dataset.write(block, window=window)
    dataset.write_mask(np.where(block[0] > 0, np.uint8(255), np.uint8(0)), window=window)

"""What the server runs: images decoded from memory within limits, and batches of segmentations.

``model_metadata`` and ``make_segmenter`` are the only places that read the model's description and
build a ``Segmenter``.
"""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from segformer.cli.predict import model_palette
from segformer.engines import Engine
from segformer.inference import Segmenter

MODES = ("whole", "slide")
# 16-bit grayscale modes, scaled to 8 bits (as segformer.data.read_image does).
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Largest upload in bytes and largest image in pixels (width × height) the server accepts."""

    max_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096


def model_metadata(model: nn.Module) -> dict:
    """Variant, classes, palette and test protocol of ``model``, as JSON-ready values."""
    return {
        "variant": model.config["variant"],
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "palette": model_palette(model.class_names).tolist(),
        "protocol": model.config.get("protocol"),
    }


def make_segmenter(model: nn.Module, mode: str | None, engine: Engine | None, **overrides) -> Segmenter:
    """A Segmenter of ``model`` testing in ``mode`` (None: the weights' own), running ``engine`` when given.

    ``overrides`` replace other test settings (``scale``, ``crop``, ``stride``).
    """
    segmenter = Segmenter(model, **({"mode": mode} if mode else {}), **overrides)
    if engine is not None:  # the Segmenter calls self.model(x) on the normalised batch
        segmenter.model = engine
    return segmenter


def image_array(image: Image.Image) -> np.ndarray:
    """H×W×3 uint8 RGB of a decoded image: EXIF orientation applied, 16-bit gray scaled, others converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Decode an uploaded image in memory; ``RequestError`` naming the problem when it is refused."""
    if not data:
        raise RequestError(400, "no image: send the image as the form field 'image' or as the request body")
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"upload of {len(data)} bytes is over the limit of {limits.max_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError(415, "not an image: the data is in no image format Pillow reads") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large: {e}") from None
    pixels = image.width * image.height
    if pixels > limits.max_pixels:
        raise RequestError(
            413,
            f"image of {image.width}×{image.height} = {pixels} pixels is over the limit of {limits.max_pixels} pixels",
        )
    try:
        image.load()
        return image_array(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(400, f"truncated or corrupt {image.format} image: {e}") from None


@dataclass
class Job:
    """One image to segment, in ``mode`` (None: the default), with per-class confidences if ``scores``."""

    image: np.ndarray
    mode: str | None = None
    scores: bool = False


@dataclass
class Outcome:
    """Label map, per-class mean confidence (when asked for) and the batch's size and time."""

    label: np.ndarray
    scores: dict[int, float] | None
    batch_size: int
    inference_ms: float


class Predictor:
    """Runs batches of ``Job``: images of one mode share ``predict_batch`` calls (equal sizes share passes).

    Args:
        model: the SegFormer.
        engine: an engine from ``segformer.engines.build_engine``, or None for the PyTorch model.
        overrides: test settings replacing the weights' own (``scale``, ``crop``, ``stride``).
    """

    def __init__(self, model: nn.Module, engine: Engine | None = None, **overrides) -> None:
        self.metadata = model_metadata(model)
        self.engine = engine
        self.segmenters = {mode: make_segmenter(model, mode, engine, **overrides) for mode in (None, *MODES)}

    def __call__(self, jobs: list[Job]) -> list[Outcome]:
        start = time.perf_counter()
        outcomes: dict[int, tuple[np.ndarray, dict | None]] = {}
        order = sorted(range(len(jobs)), key=lambda i: (str(jobs[i].mode), jobs[i].scores, jobs[i].image.shape))
        for (mode, scores), group in itertools.groupby(order, key=lambda i: (jobs[i].mode, jobs[i].scores)):
            indices = list(group)
            segmenter = self.segmenters[mode]
            if scores:
                for i in indices:
                    outcomes[i] = self._with_scores(segmenter, jobs[i].image)
            else:
                labels = segmenter.predict_batch([jobs[i].image for i in indices])
                outcomes.update({i: (label, None) for i, label in zip(indices, labels, strict=True)})
        elapsed = 1000 * (time.perf_counter() - start)
        return [Outcome(*outcomes[i], batch_size=len(jobs), inference_ms=elapsed) for i in range(len(jobs))]

    @staticmethod
    def _with_scores(segmenter: Segmenter, image: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
        """Labels and each present class's mean top probability over its pixels."""
        confidence, label = segmenter.predict_logits(image).softmax(0).max(0)
        confidence, label = confidence.float().cpu(), label.cpu()
        dtype = torch.uint8 if segmenter.num_classes <= 256 else torch.int32
        ids, inverse = label.flatten().unique(return_inverse=True)
        sums = torch.zeros(len(ids)).index_add_(0, inverse, confidence.flatten())
        counts = torch.bincount(inverse, minlength=len(ids))
        scores = {int(k): float(s / c) for k, s, c in zip(ids, sums, counts, strict=True)}
        return label.to(dtype).numpy(), scores

"""What the server runs: images decoded from memory within limits, and batches of segmentations.

``model_metadata`` and ``make_segmenter`` are the only places that read the model's description and
build a ``Segmenter``. The Segmenters of the three modes share one ``NetworkRunner``: one set of CUDA graphs, run
on the runner's own thread whichever thread the batcher calls from. Jobs asking for per-class scores or the
per-pixel confidence map run ``Segmenter.predict_logits`` one image at a time; the others share ``predict_batch``.
"""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from segformer.data import read_image
from segformer.engines import Engine
from segformer.inference import Segmenter, label_dtype
from segformer.runner import NetworkRunner
from segformer.scores import logit_confidence
from segformer.serve.limits import Limits
from segformer.visualize import model_palette

MODES = ("whole", "slide")


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def model_metadata(model: nn.Module) -> dict:
    """Variant, classes, palette and test protocol of ``model``, as JSON-ready values."""
    return {
        "variant": model.config.variant,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "palette": model_palette(model.config).tolist(),
        "protocol": model.config.protocol.to_dict() if model.config.protocol else None,
    }


def make_segmenter(model: nn.Module, mode: str | None, runner: NetworkRunner, **overrides) -> Segmenter:
    """A Segmenter of ``model`` testing in ``mode`` (None: the weights' own), its network run by ``runner``.

    ``overrides`` replace other test settings (``scale``, ``crop``, ``stride``).
    """
    return Segmenter(model, runner=runner, mode=mode, **overrides)


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
        return read_image(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(400, f"truncated or corrupt {image.format} image: {e}") from None


@dataclass
class Job:
    """One image to segment, in ``mode`` (None: the default), with per-class confidences if ``scores`` and the
    per-pixel confidence map if ``confidence``."""

    image: np.ndarray
    mode: str | None = None
    scores: bool = False
    confidence: bool = False

    @property
    def needs_logits(self) -> bool:
        return self.scores or self.confidence


@dataclass
class Outcome:
    """Label map, per-class mean confidence and the H×W uint16 confidence map (each when asked for: else None;
    the map is ``segformer.scores``' max softmax probability × 65535), and the batch's size and time."""

    label: np.ndarray
    scores: dict[int, float] | None
    confidence: np.ndarray | None
    batch_size: int
    inference_ms: float


class Predictor:
    """Runs batches of ``Job``: images of one mode share ``predict_batch`` calls (equal sizes share passes).

    Args:
        model: the SegFormer.
        engine: an engine from ``segformer.engines.build_engine``, or None for the PyTorch model.
        runner: how the network runs (``NetworkRunner`` keyword arguments: ``dtype``, ``compile``, ``graphs``).
        overrides: test settings replacing the weights' own (``scale``, ``crop``, ``stride``).
    """

    def __init__(self, model: nn.Module, engine: Engine | None = None, runner: dict | None = None, **overrides) -> None:
        self.metadata = model_metadata(model)
        self.engine = engine
        self.runner = NetworkRunner(model, engine=engine, **(runner or {}))
        self.segmenters = {mode: make_segmenter(model, mode, self.runner, **overrides) for mode in (None, *MODES)}

    def __call__(self, jobs: list[Job]) -> list[Outcome]:
        start = time.perf_counter()
        outcomes: dict[int, tuple[np.ndarray, dict | None, np.ndarray | None]] = {}
        order = sorted(range(len(jobs)), key=lambda i: (str(jobs[i].mode), jobs[i].needs_logits, jobs[i].image.shape))
        for (mode, needs_logits), group in itertools.groupby(order, key=lambda i: (jobs[i].mode, jobs[i].needs_logits)):
            indices = list(group)
            segmenter = self.segmenters[mode]
            if needs_logits:
                for i in indices:
                    outcomes[i] = self._from_logits(segmenter, jobs[i])
            else:
                labels = segmenter.predict_batch([jobs[i].image for i in indices])
                outcomes.update({i: (label, None, None) for i, label in zip(indices, labels, strict=True)})
        elapsed = 1000 * (time.perf_counter() - start)
        return [Outcome(*outcomes[i], batch_size=len(jobs), inference_ms=elapsed) for i in range(len(jobs))]

    @staticmethod
    def _from_logits(segmenter: Segmenter, job: Job) -> tuple[np.ndarray, dict[int, float] | None, np.ndarray | None]:
        """Labels, each present class's mean top probability over its pixels (if ``job.scores``) and the
        confidence map (if ``job.confidence``), from one ``predict_logits``."""
        logits = segmenter.predict_logits(job.image)
        confidence_map = logit_confidence(logits)[0] if job.confidence else None
        confidence, label = logits.softmax(0).max(0)
        label = label.cpu()
        scores = None
        if job.scores:
            ids, inverse = label.flatten().unique(return_inverse=True)
            sums = torch.zeros(len(ids)).index_add_(0, inverse, confidence.float().cpu().flatten())
            counts = torch.bincount(inverse, minlength=len(ids))
            scores = {int(k): float(s / c) for k, s, c in zip(ids, sums, counts, strict=True)}
        return label.to(label_dtype(segmenter.num_classes)).numpy(), scores, confidence_map

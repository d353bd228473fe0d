"""Per-pixel confidence of a prediction: the largest softmax probability and the entropy, as 16-bit maps.

The probabilities are the softmax of ``Segmenter.predict_logits``, which is mmseg's averaged probability in every
test mode (one view: the softmax of the logits; multi-scale/flip: the mean of the views' softmax,
``mmseg/models/segmentors/encoder_decoder.py`` ``aug_test``). From probabilities p (K classes) per pixel:

* **confidence** = max_k p_k, stored as round(max p × 65535): 65535 is certain, 65535 / K the least confident.
* **entropy** = −Σ_k p_k ln p_k (natural log, 0·ln 0 = 0), normalised by its largest value ln K and stored as
  round(entropy / ln K × 65535): 0 is certain, 65535 a uniform distribution (one class: always 0).

Both are computed in float64 and rounded half to even (``torch.round``, as NumPy's ``rint``), so they can be
recomputed exactly from the logits. ``save_confidence_maps`` writes them as two 16-bit grayscale PNGs; read them
back with ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` (uint16) and divide by 65535.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from segformer.fileio import atomic_write
from segformer.score_resize import row_tiles

if TYPE_CHECKING:
    from segformer.inference import ImageInput, Segmenter

SCORE_SCALE = 65535  # uint16 maps: probability × SCORE_SCALE, entropy / ln K × SCORE_SCALE, rounded
MAX_ELEMENTS = 1 << 24  # float64 values of a K×rows×W tile built at once


def probabilities(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float64 softmax over the classes (dim 0) of K×H×W logits, on the logits' device (CPU for MPS, which has
    no float64)."""
    logits = torch.as_tensor(logits)
    if logits.device.type == "mps":
        logits = logits.cpu()
    return torch.softmax(logits.double(), dim=0)


def confidence(probs: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, entropy) H×W uint16 maps of K×H×W probabilities (module docstring for the scales).

    Computed in float64 row tiles of at most ``MAX_ELEMENTS`` values, so an image adds little memory to its
    probabilities.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 3:
        raise ValueError(f"confidence needs K×H×W probabilities, got shape {tuple(probs.shape)}")
    classes, height, width = probs.shape
    norm = math.log(classes) if classes > 1 else 1.0
    top = np.empty((height, width), np.uint16)
    entropy = np.empty((height, width), np.uint16)
    for rows in row_tiles(classes, height, width, MAX_ELEMENTS):
        tile = probs[:, rows].double()
        top[rows] = _scaled(tile.amax(0))
        entropy[rows] = _scaled((-torch.special.xlogy(tile, tile).sum(0) / norm).clamp_(0.0, 1.0))
    return top, entropy


def _scaled(values: torch.Tensor) -> np.ndarray:
    """Values in [0, 1] as uint16 × ``SCORE_SCALE``, rounded half to even."""
    return torch.round(values * SCORE_SCALE).to(torch.int32).cpu().numpy().astype(np.uint16)


def logit_confidence(logits: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, entropy) uint16 maps of K×H×W logits: ``confidence(probabilities(logits))``."""
    return confidence(probabilities(logits))


def confidence_maps(segmenter: Segmenter, image: ImageInput) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, entropy) uint16 maps of ``image`` under ``segmenter`` (a ``segformer.inference.Segmenter``),
    from ``segmenter.predict_logits``: the same test protocol, views and averaging as ``predict``."""
    return logit_confidence(segmenter.predict_logits(image))


def save_confidence_maps(
    confidence_map: np.ndarray, entropy_map: np.ndarray, folder: str | Path, stem: str
) -> tuple[Path, Path]:
    """Write ``<stem>_confidence.png`` and ``<stem>_entropy.png`` (16-bit grayscale) in ``folder``, atomically;
    return their paths."""
    paths = (Path(folder) / f"{stem}_confidence.png", Path(folder) / f"{stem}_entropy.png")
    for array, path in zip((confidence_map, entropy_map), paths, strict=True):
        array = np.asarray(array)
        if array.dtype != np.uint16 or array.ndim != 2:
            raise ValueError(f"{path}: expected an H×W uint16 map, got {array.dtype} of shape {array.shape}")
        ok, encoded = cv2.imencode(".png", array)
        if not ok:
            raise ValueError(f"{path}: OpenCV could not encode the {array.shape} map as PNG")
        atomic_write(path, lambda tmp, data=encoded: Path(tmp).write_bytes(data.tobytes()))
    return paths
